"""The job registry: one entry per job (pretrain, knn, linprobe, ...), everything the CLI,
the Python API and the config need to know about it.

A job is one recipe module that calls ``register(Recipe(...))``: its run function, its
config section (a dataclass: ``section=('detect', DetectConfig)``), its defaults, its
default preset, its command (``('detect', 'train')`` for ``mimkit detect train`` and
``mimkit.detect.train``), its own flags, and what it prints. ``mimkit <command>`` and
``mimkit.<job>`` are made from these entries (``cli.jobs``, ``api``), and the config
schema is the base ``Config`` plus every registered section.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import config as config_lib
from ..errors import UserError

_RECIPES: dict[str, Recipe] = {}


@dataclass(frozen=True)
class Flag:
    """A command-line flag of one job that sets a config key (``--steps`` -> bench.steps).
    A flag with the name of a shared one (``--data``) replaces it for that job."""

    name: str
    key: str
    help: str = ""
    type: Callable | None = None
    action: str | None = None
    choices: tuple | None = None
    default: object = None


@dataclass(frozen=True)
class Recipe:
    name: str
    run: Callable  # (cfg: Config, resume: Path | None = None) -> Result
    help: str = ""
    defaults: dict = field(default_factory=dict)
    preset: str | None = None  # default preset when none is given
    trains: bool = True  # has epochs, checkpoints and --resume
    section: tuple[str, type] | None = None  # (config key, dataclass) of its own settings
    command: tuple[str, ...] = ()  # default: (name,); ('detect', 'train') for a group
    description: str = ""  # the command's longer help (default: help)
    backbone: bool = False  # reads an encoder: --checkpoint, --model, --pool
    flags: tuple[Flag, ...] = ()
    api_args: tuple[str, ...] = ()  # positional arguments of the Python function
    api_keys: dict = field(default_factory=dict)  # keyword -> config key (benchmark's data)
    report: Callable | None = None  # (result) -> text the CLI prints after the run
    tools: dict = field(default_factory=dict)  # other functions of its group (detect.predict)
    order: int = 50  # place in `mimkit --help` (lower first)

    @property
    def words(self) -> tuple[str, ...]:
        return self.command or (self.name,)


def register(recipe: Recipe) -> Recipe:
    if recipe.name in _RECIPES:
        raise RuntimeError(f"recipe {recipe.name} registered twice")
    _RECIPES[recipe.name] = recipe
    config_lib.register_job(recipe.name, recipe.section, recipe.defaults)
    return recipe


def get_recipe(name: str) -> Recipe:
    if name not in _RECIPES:
        close = difflib.get_close_matches(name, _RECIPES, n=1)
        hint = f": did you mean {close[0]}?" if close else ""
        raise UserError(f"unknown job '{name}' (one of {', '.join(recipe_names())}){hint}")
    return _RECIPES[name]


def recipe_names() -> list[str]:
    return sorted(_RECIPES)


def recipes() -> list[Recipe]:
    """Every registered job, by ``order`` then name."""
    return sorted(_RECIPES.values(), key=lambda r: (r.order, r.name))


def schema() -> type:
    """The config schema: ``Config`` plus each registered job's section."""
    return config_lib.schema()


def load_config(preset=None, overrides=(), base=None, task: str = "pretrain", values=None):
    """``config.load_config`` for a job (its section and defaults are registered there)."""
    get_recipe(task)
    return config_lib.load_config(preset, overrides, base, task=task, values=values)
