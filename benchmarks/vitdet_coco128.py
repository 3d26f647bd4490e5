"""ViTDet on COCO128 (CPU-sized): MAE-initialised vs random-initialised backbone, same schedule.

    python benchmarks/vitdet_coco128.py --data ../shared/data/coco128.tar.gz

1. MAE pretraining of a 6-block ViT-Tiny/16 at 224 px on the 100 training images only
   (no labels), ``--pretrain-epochs`` epochs;
2. ``mimkit detect train --config vitdet_tiny_coco128`` (256 px, window 4, global blocks
   2 and 5, Mask R-CNN, last 28 images held out) from that checkpoint and from random
   init, ``--epochs`` epochs each;
3. box and mask AP of both on the 28 held-out images, wall-clock of each step, appended as
   one JSON line to benchmarks/results/vitdet_coco128.jsonl (metrics copied alongside).
With 100 images and minutes of CPU the APs are tiny; the comparison is the point.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def extract(data: str, work: Path) -> tuple[Path, Path]:
    path = Path(data)
    root = path if path.is_dir() else work / "coco128"
    if not path.is_dir() and not root.is_dir():
        root.mkdir(parents=True)
        with tarfile.open(path) as tar:
            tar.extractall(root, filter="data")
    ann = next(root.rglob("instances_train2017.json"))
    images = next(p for p in root.rglob("train2017") if p.is_dir())
    return images, ann


def run(cmd: list[str]) -> float:
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "mimkit", *map(str, cmd)], check=True)
    return round(time.time() - t0, 1)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", required=True)
    p.add_argument("--work", default="runs/vitdet-coco128")
    p.add_argument("--pretrain-epochs", type=int, default=40)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--img-size", type=int, default=256, help="detection input size")
    p.add_argument("--window", type=int, default=4, help="window attention size (tokens)")
    p.add_argument("--reuse-pretrain", action="store_true", help="keep an existing pretrain run")
    args = p.parse_args()
    work = Path(args.work)
    images, ann = extract(args.data, work)
    ids = sorted(json.loads(ann.read_text())["images"], key=lambda im: im["id"])
    train_list = work / "pretrain_files.txt"
    train_list.write_text("\n".join(im["file_name"] for im in ids[:-28]) + "\n")
    reuse = args.reuse_pretrain and (work / "pretrain" / "checkpoint-last.pth").is_file()
    for d in ("det-mae", "det-random") if reuse else ("pretrain", "det-mae", "det-random"):
        shutil.rmtree(work / d, ignore_errors=True)
    steps, cmds = {}, {}
    cmds["pretrain"] = [
        "pretrain",
        "--config",
        "mae_vit_base_patch16",
        "--data",
        images,
        f"data.file_list={train_list}",
        "--out",
        work / "pretrain",
        "--epochs",
        args.pretrain_epochs,
        "--batch-size",
        20,
        "model.name=mae_vit_tiny_patch16",
        "model.args.depth=6",
        "model.args.decoder_embed_dim=128",
        "model.args.decoder_depth=2",
        "model.args.decoder_num_heads=4",
        "data.img_size=224",
        "optim.blr=1.5e-3",
        "optim.warmup_epochs=4",
        "data.num_workers=2",
        "train.log_every=5",
        "train.tensorboard=false",
        "train.save_every=1000",
    ]
    det = [
        "detect",
        "train",
        "--config",
        "vitdet_tiny_coco128",
        "--data",
        images,
        f"detect.train_ann={ann}",
        "--epochs",
        args.epochs,
        "train.tensorboard=false",
        "model.args.depth=6",
        f"data.img_size={args.img_size}",
        f"detect.window_size={args.window}",
    ]
    cmds["det-mae"] = [
        *det,
        "--checkpoint",
        work / "pretrain" / "checkpoint-last.pth",
        "--out",
        work / "det-mae",
    ]
    cmds["det-random"] = [*det, "--checkpoint", "none", "--out", work / "det-random"]
    for name, cmd in cmds.items():
        if name == "pretrain" and reuse:
            steps[name] = {
                "seconds": None,
                "command": "mimkit " + " ".join(map(str, cmd)),
                "note": "reused from an earlier run of this script",
            }
            continue
        steps[name] = {"seconds": run(cmd), "command": "mimkit " + " ".join(map(str, cmd))}
    metrics = {
        k: json.loads((work / k / "metrics.json").read_text()) for k in ("det-mae", "det-random")
    }
    row = {
        "date": datetime.date.today().isoformat(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "host": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "steps": steps,
        "results": {
            k: {m: v[m] for m in ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50")}
            for k, v in metrics.items()
        },
    }
    print(json.dumps(row))
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "vitdet_coco128.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    keep = RESULTS / "vitdet_coco128"
    for k in ("pretrain", "det-mae", "det-random"):
        (keep / k).mkdir(parents=True, exist_ok=True)
        for name in ("log.jsonl", "metrics.json", "config.yaml"):
            if (work / k / name).exists():
                shutil.copy(work / k / name, keep / k / name)


if __name__ == "__main__":
    main()
