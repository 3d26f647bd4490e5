"""CIFAR-10 end to end: MAE pretraining, then kNN, linear probe and fine-tuning, each
against the same protocol on a random-init encoder / from scratch.

    python benchmarks/cifar10_recipe.py --recipe cpu --data ../shared/data/cifar10.tar.gz
    python benchmarks/cifar10_recipe.py --recipe gpu --data /data/cifar10
    python benchmarks/cifar10_recipe.py --recipe cpu --data examples/cifar10-mini --smoke

--data is ROOT with train/<class>/ and test/<class>/ JPEGs, or the .tar.gz holding them
(extracted once into --work). Every step is a `mimkit` command run as a subprocess; the
numbers, wall-clock per step and the commands are appended as one JSON line to
benchmarks/results/cifar10_<recipe>.jsonl and the run folders stay under --work.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import random
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"

# Each recipe: pretraining overrides, then the evaluation budgets. Both arms of every
# comparison (MAE-initialised vs random init / from scratch) use the same settings.
RECIPES = {
    # ~45 minutes on 2 CPU cores: a 6-block ViT-Tiny encoder for 3 epochs on all 50k
    # images; fine-tuning on a 10k subset for 2 epochs with light augmentation.
    "cpu": {
        "pretrain": [
            "--config",
            "mae_vit_tiny_cifar",
            "--epochs",
            "3",
            "--batch-size",
            "128",
            "model.args.depth=6",
            "model.args.decoder_embed_dim=128",
            "model.args.decoder_depth=2",
            "model.args.decoder_num_heads=4",
            "optim.blr=1e-3",
            "optim.warmup_epochs=0.5",
            "train.save_every=1",
            "data.num_workers=2",
            "train.log_every=50",
        ],
        "encoder": ["model.name=mae_vit_tiny_cifar", "model.args.depth=6"],
        "linprobe": [
            "--epochs",
            "30",
            "--batch-size",
            "256",
            "linprobe.optimizer=sgd",
            "optim.blr=0.1",
            "optim.warmup_epochs=3",
        ],
        "finetune": [
            "--epochs",
            "2",
            "--batch-size",
            "128",
            "optim.warmup_epochs=0.2",
            "finetune.mixup=0",
            "finetune.cutmix=0",
            "finetune.auto_augment=null",
            "finetune.reprob=0",
            "train.eval_every=2",
            "data.num_workers=2",
        ],
        "finetune_subset": 10_000,
    },
    # One H100 (not yet run): the full ViT-Tiny preset, 400 epochs, then 100 fine-tune epochs.
    "gpu": {
        "pretrain": [
            "--config",
            "mae_vit_tiny_cifar",
            "--epochs",
            "400",
            "--batch-size",
            "512",
            "data.num_workers=16",
            "train.save_every=50",
        ],
        "encoder": ["model.name=mae_vit_tiny_cifar"],
        "linprobe": ["--epochs", "90", "--batch-size", "1024"],
        "finetune": [
            "--epochs",
            "100",
            "--batch-size",
            "256",
            "optim.blr=1e-3",
            "data.num_workers=16",
            "train.eval_every=10",
        ],
        "finetune_subset": None,
    },
}
SMOKE = {  # a few steps of everything, for the test suite
    "pretrain": [
        "--epochs",
        "1",
        "train.max_steps=2",
        "--batch-size",
        "16",
        "data.num_workers=0",
        "model.args.depth=1",
        "model.args.decoder_depth=1",
        "train.tensorboard=false",
    ],
    "encoder": ["model.args.depth=1"],
    "eval": [
        "--batch-size",
        "16",
        "--epochs",
        "1",
        "train.max_steps=2",
        "data.num_workers=0",
        "train.tensorboard=false",
        "eval.batch_size=64",
    ],
}


def prepare_data(data: str, work: Path) -> Path:
    path = Path(data)
    if path.is_dir():
        return path
    out = work / "cifar10"
    if not (out / "train").is_dir():
        print(f"extracting {path} -> {out}", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path) as tar:
            tar.extractall(out, filter="data")
    return out


def write_lists(root: Path, work: Path, subset: int | None, seed: int = 0) -> tuple[Path, Path]:
    """train.txt (optionally a class-balanced random subset) and test.txt, 'path label' lines."""
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    lists = []
    for split, n in (("train", subset), ("test", None)):
        rows = []
        for label, cls in enumerate(classes):
            files = sorted((root / split / cls).glob("*.jpg"))
            if n is not None:
                files = random.Random(seed + label).sample(
                    files, min(n // len(classes), len(files))
                )
            rows += [f"{split}/{cls}/{f.name} {label}" for f in files]
        path = work / f"{split}{'-' + str(n) if n else ''}.txt"
        path.write_text("\n".join(rows) + "\n")
        lists.append(path)
    return lists[0], lists[1]


def mimkit(step: str, args: list, log: dict) -> float:
    cmd = [sys.executable, "-m", "mimkit", *map(str, args)]
    print(f"\n== {step}: {' '.join(cmd[2:])}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - t0
    log["steps"][step] = {
        "seconds": round(seconds, 1),
        "command": "mimkit " + " ".join(map(str, args)),
    }
    return seconds


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--recipe", choices=list(RECIPES), default="cpu")
    p.add_argument("--data", required=True)
    p.add_argument("--work", default="runs/cifar10-recipe")
    p.add_argument("--smoke", action="store_true", help="a few steps of each command (tests)")
    p.add_argument("--results", default=None, help="JSONL to append to")
    args = p.parse_args()
    recipe = RECIPES[args.recipe]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    root = prepare_data(args.data, work)
    subset = None if args.smoke else recipe["finetune_subset"]
    ft_train, test = write_lists(root, work, subset)
    all_train, _ = write_lists(root, work, None)
    log = {
        "date": datetime.date.today().isoformat(),
        "recipe": args.recipe,
        "smoke": args.smoke,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "host": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "steps": {},
        "results": {},
    }
    t_start = time.perf_counter()

    pre = work / "pretrain"
    pre_args = recipe["pretrain"] + (SMOKE["pretrain"] if args.smoke else [])
    mimkit("pretrain", ["pretrain", "--data", root / "train", "--out", pre, *pre_args], log)
    ckpt = pre / "checkpoint-last.pth"

    labeled = ["--data", root, f"data.file_list={all_train}", f"data.val_list={test}"]
    smoke_eval = SMOKE["eval"] if args.smoke else []
    encoder = recipe["encoder"] + (SMOKE["encoder"] if args.smoke else [])
    for arm, backbone in (("mae", [ckpt]), ("random", ["none", *encoder])):
        knn_out, lp_out = work / f"knn-{arm}", work / f"linprobe-{arm}"
        mimkit(
            f"knn-{arm}",
            [
                "knn",
                "--checkpoint",
                *backbone[:1],
                *labeled,
                "--out",
                knn_out,
                *backbone[1:],
                *[a for a in smoke_eval if a.startswith("eval.")],
            ],
            log,
        )
        mimkit(
            f"linprobe-{arm}",
            [
                "linprobe",
                "--checkpoint",
                *backbone[:1],
                *labeled,
                "--out",
                lp_out,
                *backbone[1:],
                *recipe["linprobe"],
                *smoke_eval,
            ],
            log,
        )
        m = metrics(knn_out)
        log["results"][f"knn_{arm}"] = {k: v["top1"] for k, v in m["k"].items()}
        log["results"][f"linprobe_{arm}"] = metrics(lp_out)["top1"]

    ft_data = ["--data", root, f"data.file_list={ft_train}", f"data.val_list={test}"]
    for arm, backbone in (("mae", [ckpt]), ("scratch", ["none", *encoder])):
        out = work / f"finetune-{arm}"
        mimkit(
            f"finetune-{arm}",
            [
                "finetune",
                "--checkpoint",
                *backbone[:1],
                *ft_data,
                "--out",
                out,
                *backbone[1:],
                *recipe["finetune"],
                *smoke_eval,
            ],
            log,
        )
        log["results"][f"finetune_{arm}"] = metrics(out)["top1"]

    log["total_minutes"] = round((time.perf_counter() - t_start) / 60, 2)
    results = Path(args.results) if args.results else RESULTS / f"cifar10_{args.recipe}.jsonl"
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a") as f:
        f.write(json.dumps(log) + "\n")
    print("\n" + json.dumps(log["results"], indent=2))
    print(f"total {log['total_minutes']} min -> {results}")


if __name__ == "__main__":
    main()
