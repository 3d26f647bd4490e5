"""``mimkit configs`` and ``mimkit models``."""

from __future__ import annotations

from .. import config
from ..models import list_models


def add_parser(sub) -> None:
    p = sub.add_parser(
        "configs", help="list packaged presets", description="List packaged presets."
    )
    p.set_defaults(func=cmd_configs)
    p = sub.add_parser(
        "models",
        help="list registered models",
        description="List registered model names (optionally matching a pattern).",
    )
    p.add_argument("pattern", nargs="?", default="*", help="shell pattern, e.g. 'mae_*'")
    p.set_defaults(func=cmd_models)


def cmd_configs(args) -> int:
    for name in config.list_presets():
        first = (config.preset_dir() / f"{name}.yaml").read_text().splitlines()[0]
        desc = first.lstrip("# ").strip() if first.startswith("#") else ""
        print(f"{name:32s} {desc}")
    return 0


def cmd_models(args) -> int:
    print("\n".join(list_models(args.pattern)))
    return 0
