"""``mimkit detect eval | predict``: the tools beside ``detect train`` (a registered job)."""

from __future__ import annotations

import json

from ..engine.logging import setup_console
from ..recipes import detect as recipe
from .common import add_trust_flag


def add_actions(actions) -> None:
    """``detect eval`` and ``detect predict`` beside the registered ``detect train``."""
    e = actions.add_parser("eval", help="COCO bbox/segm AP of a detector checkpoint")
    e.add_argument("--checkpoint", required=True, help="a `mimkit detect train` checkpoint")
    e.add_argument("--images", required=True, help="image folder")
    e.add_argument("--ann", required=True, help="COCO instances_*.json")
    e.add_argument("--out", default="runs/detect-eval", help="folder for metrics.json")
    e.add_argument("--max-images", type=int, default=None, help="evaluate the first N images")
    e.add_argument("--device", default="auto")
    add_trust_flag(e)
    e.set_defaults(func=cmd_eval)
    r = actions.add_parser("predict", help="draw boxes, masks and labels on images (PNG)")
    r.add_argument("--checkpoint", required=True, help="a `mimkit detect train` checkpoint")
    r.add_argument("--images", nargs="+", required=True, help="image files or folders")
    r.add_argument("--out", default="detections", help="folder for the PNGs")
    r.add_argument(
        "--score-threshold",
        type=float,
        default=None,
        help="draw detections above this score (default: the run's detect.score_threshold)",
    )
    r.add_argument("--device", default="auto")
    add_trust_flag(r)
    r.set_defaults(func=cmd_predict)


def cmd_eval(args) -> int:
    setup_console()
    result = recipe.evaluate(
        args.checkpoint,
        args.images,
        args.ann,
        args.out,
        args.max_images,
        args.device,
        args.trust_checkpoint,
    )
    print(json.dumps(result.metrics))
    return 0


def cmd_predict(args) -> int:
    setup_console()
    rows = recipe.predict(
        args.checkpoint,
        args.images,
        args.out,
        args.score_threshold,
        args.device,
        args.trust_checkpoint,
    )
    for row in rows:
        print(f"{row['png']}: {row['detections']} detections >= {row['threshold']}")
    return 0
