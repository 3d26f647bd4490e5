"""The recipe registry: one entry per job (pretrain, knn, linprobe, ...).

A recipe is a plain object: a name, its defaults (layered between the config schema and
the preset), its default preset, and ``run(cfg, resume=None) -> Result``. The CLI, the
Python API and the config's ``task`` choices all read this registry, so a new job is one
recipe module and a short CLI wrapper.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import UserError

_RECIPES: dict[str, Recipe] = {}


@dataclass(frozen=True)
class Recipe:
    name: str
    run: Callable  # (cfg: Config, resume: Path | None = None) -> Result
    help: str = ""
    defaults: dict = field(default_factory=dict)
    preset: str | None = None  # default preset when none is given
    trains: bool = True  # has epochs, checkpoints and --resume


def register(recipe: Recipe) -> Recipe:
    if recipe.name in _RECIPES:
        raise RuntimeError(f"recipe {recipe.name} registered twice")
    _RECIPES[recipe.name] = recipe
    return recipe


def _load_all() -> None:
    from .. import recipes  # noqa: F401  (importing the package registers every recipe)


def get_recipe(name: str) -> Recipe:
    _load_all()
    if name not in _RECIPES:
        close = difflib.get_close_matches(name, _RECIPES, n=1)
        hint = f": did you mean {close[0]}?" if close else ""
        raise UserError(f"unknown job '{name}' (one of {', '.join(recipe_names())}){hint}")
    return _RECIPES[name]


def recipe_names() -> list[str]:
    _load_all()
    return sorted(_RECIPES)
