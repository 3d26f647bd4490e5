"""``mimkit knn | linprobe | finetune | qscore | train``: what a backbone learned, and
classifiers on it. Each reads a backbone through the shared contract (mimkit, official
MAE/iBOT, timm or Hugging Face weights, or ``--checkpoint none`` for random init) and
writes a run folder with the resolved config, log.jsonl, metrics.json and pictures."""

from __future__ import annotations

from ..recipes.registry import get_recipe
from .common import add_training_flags, resolve_config

COMMANDS = ("knn", "linprobe", "finetune", "qscore", "train")
DATA = (
    ". Data: ROOT with train/<class>/ and val/<class>/ (or test/), or file lists "
    "(data.file_list, data.val_list) of 'path label' lines."
)


def add_parser(sub) -> None:
    for name in COMMANDS:
        recipe = get_recipe(name)
        p = sub.add_parser(name, help=recipe.help, description=recipe.help + DATA)
        add_training_flags(p, name, checkpoint=True)
        p.set_defaults(func=_command(name))


def _command(name: str):
    def cmd(args) -> int:
        resolved = resolve_config(args, name)
        if resolved is not None:
            get_recipe(name).run(*resolved)
        return 0

    return cmd
