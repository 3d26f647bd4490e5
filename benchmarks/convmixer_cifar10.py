"""ConvMixer-256/8 supervised on CIFAR-10 with the reference recipe (locuslab/convmixer-cifar10).

    python benchmarks/convmixer_cifar10.py --data ../shared/data/cifar10.tar.gz   # 25 epochs
    python benchmarks/convmixer_cifar10.py --data ../shared/data/cifar10.tar.gz --epochs 1
    python benchmarks/convmixer_cifar10.py --data examples/cifar10-mini --smoke    # tests

Runs ``mimkit train --config convmixer_256_8_cifar`` (AdamW, one-cycle lr 0.05, wd 0.005,
batch 512, RandAugment n2 m12, whole-image crops, flip) on all 50k train images, evaluates
on the 10k test images, and appends top-1, img/s and wall-clock as one JSON line to
benchmarks/results/convmixer_cifar10.jsonl (the run folder's log is copied next to it).
With fewer epochs the one-cycle schedule is compressed to them.
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


def dataset_root(data: str, work: Path) -> Path:
    """ROOT with train/ and test/ class folders; a .tar.gz is extracted once into ``work``."""
    path = Path(data)
    if path.is_dir():
        return path
    root = work / "cifar10"
    if not (root / "train").is_dir():
        work.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path) as tar:
            tar.extractall(work, filter="data")
        found = next(p.parent for p in work.rglob("train") if (p.parent / "test").is_dir())
        if found != root:
            found.rename(root)
    return root


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", required=True)
    p.add_argument("--work", default="runs/convmixer-cifar10")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--smoke", action="store_true", help="a few steps (tests)")
    p.add_argument("--results", default=None, help="JSONL to append to")
    args = p.parse_args()
    work = Path(args.work)
    root = dataset_root(args.data, work)
    out = work / "train"
    cmd = [
        sys.executable,
        "-m",
        "mimkit",
        "train",
        "--config",
        "convmixer_256_8_cifar",
        "--data",
        str(root),
        "--out",
        str(out),
        "--epochs",
        str(args.epochs),
        "train.tensorboard=false",
        "data.num_workers=2",
    ]
    if args.smoke:
        cmd += ["--batch-size", "32", "train.max_steps=2", "data.num_workers=0"]
    if out.exists():
        shutil.rmtree(out)
    t0 = time.time()
    subprocess.run(cmd, check=True)
    seconds = time.time() - t0
    metrics = json.loads((out / "metrics.json").read_text())
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    img_s = [r["img_s"] for r in log if r.get("kind") == "train" and "img_s" in r]
    row = {
        "date": datetime.date.today().isoformat(),
        "smoke": args.smoke,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "host": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "epochs": args.epochs,
        "command": " ".join(cmd[2:]),
        "top1": metrics["top1"],
        "top5": metrics["top5"],
        "num_test_images": metrics["num_images"],
        "train_img_s_median": sorted(img_s)[len(img_s) // 2] if img_s else None,
        "wall_clock_s": round(seconds, 1),
    }
    print(json.dumps(row))
    results = Path(args.results) if args.results else RESULTS / "convmixer_cifar10.jsonl"
    if not args.smoke or args.results:
        results.parent.mkdir(parents=True, exist_ok=True)
        with open(results, "a") as f:
            f.write(json.dumps(row) + "\n")
        if not args.smoke:
            logs = RESULTS / "convmixer_cifar10"
            logs.mkdir(parents=True, exist_ok=True)
            for name in ("log.jsonl", "metrics.json", "curves.png", "confusion.png", "config.yaml"):
                if (out / name).exists():
                    shutil.copy(out / name, logs / name)


if __name__ == "__main__":
    main()
