"""``mimkit predict``: classes and probabilities for image files or folders."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ..data.sources import collect_images
from ..engine.logging import setup_console
from ..errors import UserError
from ..eval.predict import class_names, predict_files
from ..interop.checkpoint import model_from_checkpoint, read_checkpoint
from ..models import create_model
from ..utils import distributed as dist
from .common import add_trust_flag


def add_parser(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="classify images with a fine-tuned checkpoint",
        description="Top-k classes and probabilities for image files or folders "
        "(searched recursively), from a mimkit finetune checkpoint or an "
        "official fine-tuned MAE file.",
    )
    p.add_argument("paths", nargs="*", help="image files and/or folders")
    p.add_argument("--images", nargs="+", default=[], help="image files and/or folders (same)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--model", help="timm:NAME: a timm classifier, its weights from --checkpoint")
    add_trust_flag(p)
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument(
        "--classes",
        help="text file with one class name per line (else from the checkpoint, or class indices)",
    )
    p.add_argument("--csv", help="write the predictions as CSV")
    p.add_argument("--json", help="write the predictions as JSON")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="auto: bf16 on CUDA and on CPUs with AMX/AVX512-BF16, else fp32",
    )
    p.set_defaults(func=cmd_predict)


def cmd_predict(args) -> int:
    setup_console()
    if not args.paths and not args.images:
        raise UserError("no images given: mimkit predict --checkpoint CKPT --images a.jpg dir/")
    files = collect_images([*args.paths, *args.images])
    device = dist.resolve_device(args.device)
    if args.model:  # a timm model from its own weights file (timm's layout)
        model, saved = create_model(args.model, checkpoint=args.checkpoint), None
    else:
        ckpt = read_checkpoint(args.checkpoint, trust=args.trust_checkpoint)
        model, _ = model_from_checkpoint(ckpt, kind="encoder")
        saved = ckpt.meta.get("classes")
    if not getattr(model, "num_classes", 0):
        raise UserError(
            f"{args.checkpoint} has no classifier head: fine-tune it first (mimkit finetune)"
        )
    classes = class_names(args.classes, saved, model.num_classes)
    rows = predict_files(
        model,
        files,
        classes,
        device,
        args.topk,
        args.batch_size,
        args.num_workers,
        precision=args.precision,
        checkpoint=args.checkpoint,
    )
    _report(rows, args, min(args.topk, len(classes)))
    return 0 if rows else 2


def _report(rows: list[dict], args, k: int) -> None:
    width = max([len(r["path"]) for r in rows] + [4])
    for r in rows:
        best = r["top"][0]
        others = ", ".join(f"{t['class']} {t['prob']:.3f}" for t in r["top"][1:])
        print(f"{r['path']:<{width}}  {best['class']:>12s} {best['prob']:.3f}   {others}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path"] + [f"{c}{j}" for j in range(1, k + 1) for c in ("class", "prob")])
            for r in rows:
                w.writerow([r["path"]] + [v for t in r["top"] for v in (t["class"], t["prob"])])
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
