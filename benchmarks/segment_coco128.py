"""Semantic segmentation on COCO128 (CPU-sized): UperNet from an MAE checkpoint vs random
init at the same budget, and the frozen linear probe for MAE, iBOT, random init and raw
pixels (the floor any representation must beat).

    python benchmarks/segment_coco128.py --data ../shared/data/coco128.tar.gz

1. MAE and iBOT pretraining of the 6-block ViT-Tiny/4 of benchmarks/cifar10_recipe.py on
   the CIFAR-10 sample of the repo (examples/cifar10-mini/train, 2,000 images, 32 px),
   ``--mae-epochs`` / ``--ibot-epochs`` epochs (or ``--mae CKPT`` / ``--ibot CKPT``);
2. ``mimkit segment train`` on COCO128 drawn as semantic masks (80 categories +
   background; the last 28 images held out) at ``--img-size`` crops (test images resized
   to that short side, sliding windows of the crop): UperNet (``upernet_vit_tiny_coco128``)
   from MAE and from random init, ``--epochs`` each; the linear probe
   (``linear_seg_vit_tiny_coco128``) on MAE, iBOT, random-init tokens and raw 4x4 pixel
   patches, ``--probe-epochs`` each;
3. val mIoU / mAcc / aAcc, wall-clock and CPU seconds of each step, appended as one JSON
   line to benchmarks/results/segment_coco128.jsonl (run files copied alongside).
Every step is a call of mimkit's Python API (the same recipes as the CLI).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from vitdet_coco128 import extract  # noqa: E402  (COCO128 from its tarball or folder)

import mimkit  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CIFAR_MINI = Path(__file__).resolve().parents[1] / "examples" / "cifar10-mini" / "train"
ENCODER = {"model.args.depth": 6}  # the 6-block ViT-Tiny/4 (192 wide) of cifar10_recipe.py
PRETRAIN = {
    "mae": dict(
        config="mae_vit_tiny_cifar",
        batch_size=128,
        **ENCODER,
        **{
            "model.args.decoder_embed_dim": 128,
            "model.args.decoder_depth": 2,
            "model.args.decoder_num_heads": 4,
            "optim.blr": 1e-3,
            "optim.warmup_epochs": 2,
        },
    ),
    # cifar10_recipe.py's CPU iBOT: a head sized for the budget, 4 local crops
    "ibot": dict(
        config="ibot_vit_tiny_cifar",
        batch_size=128,
        **ENCODER,
        **{
            "model.args.out_dim": 1024,
            "model.args.head_hidden_dim": 512,
            "model.args.head_bottleneck_dim": 128,
            "model.args.local_crops_number": 4,
            "model.args.warmup_teacher_temp_epochs": 0,
            "model.args.teacher_temp": 0.04,
            "model.args.teacher_patch_temp": 0.04,
            "model.args.momentum_teacher": 0.99,
            "optim.blr": 1e-3,
            "optim.warmup_epochs": 1,
        },
    ),
}
COMMON = {"data.num_workers": 2, "train.tensorboard": False, "train.save_every": 1000}


def timed(steps: dict, name: str, fn, **kwargs):
    wall, cpu = time.time(), time.process_time()
    result = fn(**kwargs)
    steps[name] = {
        "seconds": round(time.time() - wall, 1),
        "cpu_seconds": round(time.process_time() - cpu, 1),  # this process, all threads
        "settings": {k: str(v) for k, v in kwargs.items()},
    }
    return result


def segment_runs(args, images: Path, ann: Path, checkpoints: dict) -> dict:
    size = args.img_size
    data = {
        "data": images,
        "segment.train_ann": str(ann),
        "segment.val_split": 28,
        "data.img_size": size,
        "segment.scale": [4 * size, size],
        "segment.warmup_iters": 20,
        "train.eval_every": 5,
        "device": "cpu",
        **COMMON,
    }
    upernet = dict(config="upernet_vit_tiny_coco128", epochs=args.epochs, **data)
    upernet.update({"segment.channels": 32, "segment.aux_channels": 32, "optim.lr": args.lr})
    probe = dict(config="linear_seg_vit_tiny_coco128", epochs=args.probe_epochs, **data)
    probe.update({"optim.lr": args.probe_lr})
    random = {"checkpoint": "none", "model": "vit_tiny_cifar", **ENCODER}
    return {
        "upernet-mae": dict(upernet, checkpoint=checkpoints["mae"]),
        "upernet-random": dict(upernet, **random),
        "linear-mae": dict(probe, checkpoint=checkpoints["mae"]),
        "linear-ibot": dict(probe, checkpoint=checkpoints["ibot"]),
        "linear-random": dict(probe, **random),
        "linear-pixels": dict(probe, **{"segment.pixels": True, "segment.pixel_patch": 4}),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", required=True, help="coco128.tar.gz or its extracted folder")
    p.add_argument("--work", default="runs/segment-coco128")
    p.add_argument("--mae", default=None, help="an MAE checkpoint instead of pretraining one")
    p.add_argument("--ibot", default=None, help="an iBOT checkpoint instead of pretraining one")
    p.add_argument("--mae-epochs", type=int, default=20)
    p.add_argument("--ibot-epochs", type=int, default=3)
    p.add_argument("--img-size", type=int, default=32, help="crop side and test short side")
    p.add_argument("--epochs", type=int, default=20, help="UperNet epochs (12 steps each)")
    p.add_argument("--lr", type=float, default=5e-4, help="UperNet lr")
    p.add_argument("--probe-epochs", type=int, default=20)
    p.add_argument("--probe-lr", type=float, default=1e-3)
    p.add_argument("--only", nargs="+", default=None, help="run only these segment runs")
    args = p.parse_args()
    work = Path(args.work)
    images, ann = extract(args.data, work)
    steps, checkpoints = {}, {"mae": args.mae, "ibot": args.ibot}
    for method, given in checkpoints.items():
        if given is None:
            out = work / f"pretrain-{method}"
            shutil.rmtree(out, ignore_errors=True)
            epochs = args.mae_epochs if method == "mae" else args.ibot_epochs
            settings = dict(PRETRAIN[method], **COMMON, data=CIFAR_MINI, out=out, epochs=epochs)
            timed(steps, f"pretrain-{method}", mimkit.pretrain, **settings)
            checkpoints[method] = str(out / "checkpoint-last.pth")
    results = {}
    for name, settings in segment_runs(args, images, ann, checkpoints).items():
        if args.only and name not in args.only:
            continue
        out = work / name
        shutil.rmtree(out, ignore_errors=True)
        r = timed(steps, name, mimkit.segment.train, out=out, **settings)
        results[name] = {k: r[k] for k in ("mIoU", "mAcc", "aAcc", "best_mIoU")}
    row = {
        "date": datetime.date.today().isoformat(),
        "device": "cpu",
        "host": f"{platform.machine()}, {torch.get_num_threads()} threads (shared)",
        "torch": torch.__version__,
        "checkpoints": checkpoints,
        "steps": steps,
        "results": results,
    }
    print(json.dumps(row))
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "segment_coco128.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    keep = RESULTS / "segment_coco128"
    for name in [*results, "pretrain-mae", "pretrain-ibot"]:
        for f in ("log.jsonl", "metrics.json", "config.yaml", "class_iou.png"):
            if (work / name / f).exists():
                (keep / name).mkdir(parents=True, exist_ok=True)
                shutil.copy(work / name / f, keep / name / f)


if __name__ == "__main__":
    main()
