"""What the commands share: the trust flag, and turning flags into a resolved config."""

from __future__ import annotations

import argparse

from .. import config as config_lib
from ..recipes.run import planned_run_dir, resolve

# shared flag -> config key
SHARED_KEYS = {
    "data": "data.path",
    "out": "out",
    "name": "name",
    "epochs": "train.epochs",
    "time_budget": "train.time_budget",
    "batch_size": "data.batch_size",
    "device": "train.device",
    "checkpoint": "model.checkpoint",
    "model": "model.name",
    "pool": "eval.pool",
}


def add_trust_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="load checkpoints holding arbitrary Python objects (this can run code from the "
        "file: only for files you made or trust)",
    )


def flag_overrides(args: argparse.Namespace) -> list[str]:
    keys = {**SHARED_KEYS, **getattr(args, "_flag_keys", {})}
    pairs = {key: getattr(args, dest, None) for dest, key in keys.items()}
    return [f"{k}={_quote(v)}" for k, v in pairs.items() if v is not None]


def _quote(v) -> str:
    # OmegaConf parses values as YAML; quote strings so paths like "1e3" or "null" stay strings.
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    return str(v)


def resolve_config(args, task: str):
    """(config, resume path) from preset + flags + overrides (a resumed run's saved config
    is the base). None when nothing is to run here: --dry-run prints the config, --slurm
    submits the same command to Slurm."""
    cfg, resume = resolve(
        task,
        args.config,
        [*flag_overrides(args), *args.overrides],
        resume=getattr(args, "resume", None),
        trust=args.trust_checkpoint,
    )
    if args.dry_run:
        print(config_lib.to_yaml(cfg), end="")
        return None
    if getattr(args, "slurm", None):
        from ..launch.slurm import maybe_submit

        maybe_submit(args.argv, args.slurm, planned_run_dir(cfg))
        return None
    return cfg, resume
