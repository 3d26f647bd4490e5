"""``mimkit segment evaluate | predict``: the tools beside ``segment train`` (a registered job)."""

from __future__ import annotations

import json

from ..engine.logging import setup_console
from ..recipes import segment as recipe
from ..utils import distributed
from .common import add_trust_flag


def add_actions(actions) -> None:
    """``segment evaluate`` (alias ``eval``) and ``segment predict`` beside ``segment train``."""
    e = actions.add_parser(
        "evaluate", aliases=["eval"], help="mIoU / mAcc / aAcc of a segmentation checkpoint"
    )
    e.add_argument("--checkpoint", required=True, help="a `mimkit segment train` checkpoint")
    e.add_argument(
        "--data",
        required=True,
        help="ADE20K folder (ADEChallengeData2016), or the images of --masks / --ann",
    )
    e.add_argument("--masks", default=None, help="mask folder for the images of --data")
    e.add_argument("--classes", default=None, help="class list (default: the checkpoint's)")
    e.add_argument("--ann", default=None, help="COCO instances json for the images of --data")
    e.add_argument("--split", default="validation", help="ADE20K split (default validation)")
    e.add_argument("--out", default="runs/segment-eval", help="folder for metrics.json")
    e.add_argument(
        "--ratios", type=float, nargs="+", default=None, help="test scales, e.g. 0.5 1.0 1.5"
    )
    e.add_argument("--flip", action="store_true", default=None, help="also the mirrored image")
    e.add_argument("--max-images", type=int, default=None, help="evaluate the first N images")
    e.add_argument("--device", default="auto")
    add_trust_flag(e)
    e.set_defaults(func=cmd_evaluate)
    r = actions.add_parser("predict", help="segment images: class-id PNG masks and overlays")
    r.add_argument("--checkpoint", required=True, help="a `mimkit segment train` checkpoint")
    r.add_argument("--images", nargs="+", required=True, help="image files or folders")
    r.add_argument("--out", default="segmentations", help="folder for the masks")
    r.add_argument("--no-overlays", action="store_true", help="masks only")
    r.add_argument("--device", default="auto")
    add_trust_flag(r)
    r.set_defaults(func=cmd_predict)


def cmd_evaluate(args) -> int:
    setup_console()
    result = recipe.evaluate(
        args.checkpoint,
        args.data,
        masks=args.masks,
        classes=args.classes,
        ann=args.ann,
        split=args.split,
        out=args.out,
        ratios=args.ratios,
        flip=args.flip,
        max_images=args.max_images,
        device=args.device,
        trust=args.trust_checkpoint,
    )
    if distributed.is_main():
        keys = ("mIoU", "mAcc", "aAcc", "images")
        print(json.dumps({k: result.metrics[k] for k in keys} | {"out": str(result.out)}))
    return 0


def cmd_predict(args) -> int:
    setup_console()
    rows = recipe.predict(
        args.checkpoint,
        args.images,
        args.out,
        overlays=not args.no_overlays,
        device=args.device,
        trust=args.trust_checkpoint,
    )
    for row in rows:
        print(f"{row['mask']}: {', '.join(row['classes']) or 'no class'}")
    return 0
