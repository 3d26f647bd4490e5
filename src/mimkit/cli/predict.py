"""``mimkit predict``: classes and probabilities for image files or folders."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import torch

from ..data import FolderSource, eval_transform
from ..data.datasets import load_rgb
from ..data.sources import IMAGE_EXTENSIONS
from ..engine import distributed as dist
from ..engine import precision as P
from ..engine.logging import setup_console
from ..errors import UserError
from ..interop.checkpoint import model_from_checkpoint, read_checkpoint
from ..models import input_size
from .common import add_trust_flag

log = logging.getLogger("mimkit")


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
    p.set_defaults(func=cmd_predict)


class _Files(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], transform):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return self.transform(load_rgb(self.paths[i])), i
        except Exception:  # reported and skipped by the caller
            return None, i


def _collate(items):
    good = [(x, i) for x, i in items if x is not None]
    bad = [i for x, i in items if x is None]
    images = torch.stack([x for x, _ in good]) if good else None
    return images, [i for _, i in good], bad


def collect(paths: list[str]) -> list[str]:
    out = []
    for item in paths:
        p = Path(item)
        if p.is_dir():
            out += FolderSource(p).paths
        elif p.is_file() and p.name.lower().endswith(IMAGE_EXTENSIONS):
            out.append(str(p))
        elif p.is_file():
            raise UserError(f"{p} is not an image ({', '.join(IMAGE_EXTENSIONS)})")
        else:
            raise UserError(f"image or folder not found: {p}")
    return out


def cmd_predict(args) -> int:
    setup_console()
    device = dist.resolve_device(args.device)
    ckpt = read_checkpoint(args.checkpoint, trust=args.trust_checkpoint)
    model, _ = model_from_checkpoint(ckpt, kind="encoder")
    if not getattr(model, "num_classes", 0):
        raise UserError(
            f"{args.checkpoint} has no classifier head: fine-tune it first (mimkit finetune)"
        )
    classes = _classes(args.classes, ckpt.meta.get("classes"), model.num_classes)
    model.to(device).eval()
    if not args.paths and not args.images:
        raise UserError("no images given: mimkit predict --checkpoint CKPT --images a.jpg dir/")
    files = collect([*args.paths, *args.images])
    loader = torch.utils.data.DataLoader(
        _Files(files, eval_transform(input_size(model))),
        batch_size=args.batch_size,
        num_workers=min(args.num_workers, len(files)),
        collate_fn=_collate,
    )
    precision = P.resolve("auto", device)
    rows, bad = [], []
    k = min(args.topk, len(classes))
    with torch.no_grad():
        for images, idx, failed in loader:
            bad += [files[i] for i in failed]
            if images is None:
                continue
            with P.autocast(precision, device):
                probs = model(images.to(device)).float().softmax(-1).cpu()
            top = probs.topk(k, dim=1)
            for row, i in enumerate(idx):
                rows.append(
                    {
                        "path": files[i],
                        "top": [
                            {"class": classes[c], "prob": round(float(p), 6)}
                            for p, c in zip(top.values[row].tolist(), top.indices[row].tolist())
                        ],
                    }
                )
    for path in bad:
        log.warning("skipped unreadable image %s", path)
    _report(rows, args, k)
    return 0 if rows else 2


def _classes(path: str | None, saved: list | None, n: int) -> list[str]:
    if path:
        names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
        if len(names) != n:
            raise UserError(f"{path} names {len(names)} classes but the model has {n}")
        return names
    return list(saved) if saved and len(saved) == n else [str(i) for i in range(n)]


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
