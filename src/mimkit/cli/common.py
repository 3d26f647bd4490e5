"""Flags shared by the configured commands, and turning them into a resolved config."""

from __future__ import annotations

import argparse

from .. import config as config_lib
from ..recipes.registry import get_recipe
from ..recipes.run import planned_run_dir, resolve


def add_training_flags(p: argparse.ArgumentParser, recipe: str, checkpoint: bool = False) -> None:
    """Flags every configured command shares; training recipes add --epochs and --resume,
    evaluation ones --checkpoint (the backbone) and --pool."""
    r = get_recipe(recipe)
    default = f"default: {r.preset}; " if r.preset else ""
    p.add_argument(
        "--config",
        "-c",
        default=None,
        help=f"preset name or YAML path ({default}see `mimkit configs`)",
    )
    p.add_argument("--data", help="image folder, or ROOT with train/ and val/ class folders")
    p.add_argument("--out", help="run folder (default: runs/<name>)")
    p.add_argument("--name", help="run name (default: the preset name)")
    p.add_argument("--batch-size", type=int, help="data.batch_size, per process")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (train.device)")
    if r.trains:
        p.add_argument("--epochs", type=int, help="train.epochs")
        p.add_argument(
            "--resume",
            metavar="PATH",
            help="continue exactly from a checkpoint file or a run folder",
        )
    if r.trains:
        p.add_argument(
            "--slurm",
            metavar="SPEC",
            help="submit to Slurm through submitit instead of running here, e.g. "
            "nodes=2,gpus_per_node=8,partition=X,time=72:00:00 (requeued and resumed on "
            "preemption)",
        )
    if checkpoint:
        p.add_argument(
            "--checkpoint",
            help="backbone (model.checkpoint): mimkit, official MAE/iBOT, timm or Hugging Face "
            "weights; 'none' = random init of model.name",
        )
        p.add_argument(
            "--model",
            help="model.name: with --checkpoint none a random-init backbone; timm:NAME (e.g. "
            "timm:resnet50) any timm model, its weights from --checkpoint FILE",
        )
        p.add_argument("--pool", choices=("cls", "avg"), help="features from cls token or average")
    add_trust_flag(p)
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. optim.blr=1e-3 eval.pool=avg",
    )


def add_trust_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="load checkpoints holding arbitrary Python objects (this can run code from the "
        "file: only for files you made or trust)",
    )


def flag_overrides(args: argparse.Namespace) -> list[str]:
    pairs = {
        "data.path": args.data,
        "out": args.out,
        "name": args.name,
        "train.epochs": getattr(args, "epochs", None),
        "data.batch_size": args.batch_size,
        "train.device": args.device,
        "model.checkpoint": getattr(args, "checkpoint", None),
        "model.name": getattr(args, "model", None),
        "eval.pool": getattr(args, "pool", None),
    }
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
