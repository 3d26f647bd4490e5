"""``mimkit pretrain``: masked image modeling from a folder of images to a checkpoint."""

from __future__ import annotations

from ..recipes import pretrain as recipe
from .common import add_training_flags, resolve_config


def add_parser(sub) -> None:
    p = sub.add_parser(
        "pretrain",
        help=recipe.RECIPE.help,
        description="Pretrain with masked image modeling (MAE, LoMaR) or iBOT on a folder of "
        "images. Writes the resolved config, log.jsonl, checkpoints, loss.png and "
        "reconstructions.png to the run folder. Multi-GPU / multi-node: torchrun "
        "--nproc_per_node=N -m mimkit pretrain ...",
    )
    add_training_flags(p, "pretrain")
    p.set_defaults(func=cmd_pretrain)


def cmd_pretrain(args) -> int:
    resolved = resolve_config(args, "pretrain")
    if resolved is not None:
        recipe.run(*resolved)
    return 0
