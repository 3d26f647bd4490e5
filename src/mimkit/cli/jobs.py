"""The configured jobs' commands, made from the job registry: the shared flags, each job's
own flags (``Recipe.flags``) and what it prints after the run (``Recipe.report``)."""

from __future__ import annotations

import argparse

from ..engine.logging import setup_console
from ..recipes.registry import Recipe
from ..recipes.run import execute
from .common import add_trust_flag, resolve_config


def add_job_parser(sub, recipe: Recipe, name: str) -> argparse.ArgumentParser:
    """``mimkit <name>`` for a registered job: the shared flags, its own, its overrides."""
    p = sub.add_parser(name, help=recipe.help, description=recipe.description or recipe.help)
    add_training_flags(p, recipe)
    p.set_defaults(func=_job_command(recipe))
    return p


def _job_command(recipe: Recipe):
    def cmd(args) -> int:
        setup_console()
        resolved = resolve_config(args, recipe.name)
        if resolved is not None:
            result = execute(recipe, *resolved)
            if recipe.report is not None:
                print(recipe.report(result))
        return 0

    return cmd


def add_training_flags(p: argparse.ArgumentParser, r: Recipe) -> None:
    """Flags every configured command shares (a job's own flag of the same name replaces
    one); training jobs add --epochs, --resume and --slurm, jobs reading an encoder
    --checkpoint, --model and --pool."""
    own = {f.name for f in r.flags}
    default = f"default: {r.preset}; " if r.preset else ""
    p.add_argument(
        "--config",
        "-c",
        default=None,
        help=f"preset name or YAML path ({default}see `mimkit configs`)",
    )
    shared = [
        ("--data", "image folder, or ROOT with train/ and val/ class folders", {}),
        ("--out", "run folder (default: runs/<name>)", {}),
        ("--name", "run name (default: the preset name)", {}),
        ("--batch-size", "data.batch_size, per process", {"type": int}),
        ("--device", "auto | cpu | cuda | cuda:N (train.device)", {}),
    ]
    if r.trains:
        shared.append(("--epochs", "train.epochs", {"type": int}))
        budget = "train.time_budget: 15m, 2h, 90s or seconds; every schedule ends at it"
        shared.append(("--time-budget", budget, {}))
    for flag, help, kw in shared:
        if flag not in own:
            p.add_argument(flag, help=help, **kw)
    if r.trains:
        p.add_argument(
            "--resume",
            metavar="PATH",
            help="continue exactly from a checkpoint file or a run folder",
        )
        p.add_argument(
            "--slurm",
            metavar="SPEC",
            help="submit to Slurm through submitit instead of running here, e.g. "
            "nodes=2,gpus_per_node=8,partition=X,time=72:00:00 (requeued and resumed on "
            "preemption)",
        )
    if r.backbone:
        p.add_argument(
            "--checkpoint",
            help="backbone (model.checkpoint): mimkit, official MAE/iBOT/SimMIM, timm or "
            "Hugging Face weights; 'none' = random init of model.name",
        )
        p.add_argument(
            "--model",
            help="model.name: with --checkpoint none a random-init backbone; timm:NAME (e.g. "
            "timm:resnet50) any timm model, its weights from --checkpoint FILE",
        )
        p.add_argument("--pool", choices=("cls", "avg"), help="features from cls token or average")
    for f in r.flags:
        kw = {k: v for k, v in (("type", f.type), ("choices", f.choices)) if v is not None}
        if f.action:
            kw = {"action": f.action, "default": None}
        p.add_argument(f.name, dest=_dest(f.name), help=f"{f.help} ({f.key})", **kw)
    add_trust_flag(p)
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. optim.blr=1e-3 eval.pool=avg",
    )
    p.set_defaults(_flag_keys={_dest(f.name): f.key for f in r.flags})


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")
