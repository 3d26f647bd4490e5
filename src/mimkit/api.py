"""The jobs as Python functions: the same recipes, configs, run folders and errors as the
CLI (``mimkit pretrain ...`` and ``mimkit.pretrain(...)`` give the same run).

    run = mimkit.pretrain("mae_vit_tiny_cifar", data="images/", epochs=10, out="runs/a",
                          **{"optim.blr": 1e-3})
    run.checkpoint, run.metrics, run.history
    run.reconstructions(images=["a.jpg"])          # a PIL image
    m = mimkit.knn(run.checkpoint, data="cifar/")   # m['top1'], m['per_k']

Every registered job is a function here, made from its registry entry: ``mimkit.<job>``
or, for a job of a group, ``mimkit.<group>.<action>`` beside the group's tools
(``mimkit.detect.train/evaluate/predict``). Keyword arguments map to config keys:
``data``, ``epochs``, ``out``, ``batch_size``, ``device``, ``name``, ``checkpoint``,
``model``, ``pool``, plus any dotted key as a ``**{...}`` entry (or a nested dict:
``optim={'blr': 1e-3}``). Bad input raises ``mimkit.UserError`` with one line; nothing
calls ``sys.exit``. Under ``torchrun`` each process calls the function and they train
together, as the CLI does.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace

from .errors import UserError
from .recipes import get_recipe, recipes
from .recipes.run import execute, resolve

# keyword -> config key (the CLI flags' names)
SHORT_KEYS = {
    "data": "data.path",
    "epochs": "train.epochs",
    "time_budget": "train.time_budget",
    "batch_size": "data.batch_size",
    "device": "train.device",
    "checkpoint": "model.checkpoint",
    "model": "model.name",
    "pool": "eval.pool",
    "out": "out",
    "name": "name",
}


def _values(kwargs: dict, renames: dict | None = None) -> dict:
    keys = {**SHORT_KEYS, **(renames or {})}
    out = {}
    for key, value in kwargs.items():
        if value is None:
            continue
        if isinstance(value, Path):
            value = str(value)
        if key == "model" and isinstance(value, dict):  # the section, e.g. {'args': {...}}
            out[key] = value
            continue
        out[keys.get(key, key)] = value
    return out


def run_job(
    task: str,
    config: str | None = None,
    resume: str | Path | None = None,
    trust: bool = False,
    **kwargs,
):
    """Resolve the config for ``task`` and run its recipe (the CLI does the same).
    ``trust=True`` (the CLI's ``--trust-checkpoint``) loads checkpoints holding pickled
    objects beyond plain types: only for files you trust."""
    recipe = get_recipe(task)
    trust = trust or bool(kwargs.pop("trust_checkpoint", False))
    _check_keywords(recipe.name, kwargs)
    values = _values(kwargs, recipe.api_keys)
    cfg, resume_path = resolve(task, config, values=values, resume=resume, trust=trust)
    return execute(recipe, cfg, resume_path)


def _check_keywords(job: str, kwargs: dict) -> None:
    """A keyword that is neither a short name nor a dotted or section key: one line, with
    a suggestion only when one is close (``epoch`` -> ``epochs``)."""
    from .recipes.registry import schema

    fields = dataclasses.fields(schema())
    sections = {f.name for f in fields}
    groups = {f.name for f in fields if f.default_factory is not dataclasses.MISSING}
    known = set(SHORT_KEYS) | set(get_recipe(job).api_keys) | sections | {"trust_checkpoint"}
    for key, value in kwargs.items():
        nested = value is None or isinstance(value, Mapping) or dataclasses.is_dataclass(value)
        if key in groups - set(SHORT_KEYS) and not nested:
            raise UserError(
                f"mimkit.{job}() got {key}={value!r}, but '{key}' is a config section: give "
                f"a dict ({key}={{'name': value}}) or dotted keys (**{{'{key}.name': value}})"
            )
        if "." in key or key in known:
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
        hint = f": did you mean '{close[0]}'?" if close else ""
        raise UserError(f"mimkit.{job}() got an unknown keyword '{key}'{hint}")


def _job_function(recipe):
    """``mimkit.<job>(*api_args, config=None, resume=None, **kwargs)`` for a recipe."""

    def job(*args, config: str | None = None, resume=None, **kwargs):
        if len(args) > len(recipe.api_args) + 1:
            raise TypeError(
                f"mimkit.{recipe.name}() takes at most {len(recipe.api_args) + 1} "
                "positional arguments"
            )
        named = dict(zip(recipe.api_args, args))
        if len(args) > len(recipe.api_args):  # the preset, positionally: pretrain('mae_...')
            config = args[-1]
        return run_job(recipe.name, config, resume=resume, **named, **kwargs)

    params = [
        inspect.Parameter(a, inspect.Parameter.POSITIONAL_OR_KEYWORD) for a in recipe.api_args
    ]
    params += [
        inspect.Parameter("config", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
        inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, default=None),
        inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD),
    ]
    job.__signature__ = inspect.Signature(params)
    job.__name__ = job.__qualname__ = recipe.words[-1]
    job.__doc__ = (recipe.description or recipe.help) + (
        f" Preset default: {recipe.preset}." if recipe.preset else ""
    )
    return job


def jobs() -> dict[str, object]:
    """``{name: function}`` for every top-level job and ``{group: namespace}`` for a
    group's jobs and tools (``detect.train``, ``detect.evaluate``, ``detect.predict``)."""
    out: dict[str, object] = {}
    for recipe in recipes():
        fn = _job_function(recipe)
        if len(recipe.words) == 1:
            out[recipe.name] = fn
            continue
        group = out.setdefault(recipe.words[0], SimpleNamespace())
        setattr(group, recipe.words[1], fn)
        for name, tool in recipe.tools.items():
            setattr(group, name, tool)
    return out


_JOBS = jobs()
globals().update(_JOBS)
