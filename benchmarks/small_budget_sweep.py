"""The sweep behind the small-budget presets (``*_vit_tiny_cpu``): each variant pretrains
for the same short wall-clock on a TRAINING split and is scored by kNN (k=20, weighted
cosine, T=0.07; [CLS] and mean-patch pooling) on a validation split drawn from the
training images, never on the test split. Rows go to
benchmarks/results/small_budget_sweep.jsonl; docs/BENCHMARKS.md says what moved the
number and what did not.

    # ROOT/train and ROOT/val: CIFAR-10's train split cut 45k / 5k (10% of each class at
    # random, seeded, as symlinks), then the sweep on it
    python benchmarks/small_budget_sweep.py --make-split /tmp/cifar10/train \\
        --data /tmp/cifar10_sweep
    python benchmarks/small_budget_sweep.py --data /tmp/cifar10_sweep --budget 4m \\
        --only mae_base,mae_small_dec
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import mimkit

RESULTS = Path(__file__).parent / "results" / "small_budget_sweep.jsonl"
DEC_SMALL = {"model.args.decoder_embed_dim": 128, "model.args.decoder_depth": 2,
             "model.args.decoder_num_heads": 4}  # fmt: skip
MAE, IBOT_CPU = "mae_vit_tiny_cifar", "ibot_vit_tiny_cpu"  # iBOT: its CPU head and crops
# name -> (preset, overrides): one knob at a time from a short-schedule base
VARIANTS = {
    # MAE: model size (steps per budget), decoder, mask ratio, lr, target
    "mae_base": (MAE, {"optim.warmup_epochs": 0.5}),
    "mae_small_dec": (MAE, {"optim.warmup_epochs": 0.5, **DEC_SMALL}),
    "mae_d6_small_dec": (MAE, {"optim.warmup_epochs": 0.5, "model.args.depth": 6, **DEC_SMALL}),
    "mae_d6_lr5e-4": (
        MAE,
        {"optim.warmup_epochs": 0.5, "model.args.depth": 6, "optim.blr": 5e-4, **DEC_SMALL},
    ),  # fmt: skip
    "mae_d6_lr1.5e-3": (
        MAE,
        {"optim.warmup_epochs": 0.5, "model.args.depth": 6, "optim.blr": 1.5e-3, **DEC_SMALL},
    ),  # fmt: skip
    "mae_d6_mask0.5": (
        MAE,
        {"optim.warmup_epochs": 0.5, "model.args.depth": 6, "model.mask_ratio": 0.5, **DEC_SMALL},
    ),  # fmt: skip
    "mae_d6_mask0.9": (
        MAE,
        {"optim.warmup_epochs": 0.5, "model.args.depth": 6, "model.mask_ratio": 0.9, **DEC_SMALL},
    ),  # fmt: skip
    "mae_d6_rawpix": (
        MAE,
        {
            "optim.warmup_epochs": 0.5,
            "model.args.depth": 6,
            "model.norm_pix_loss": False,
            **DEC_SMALL,
        },
    ),  # fmt: skip
    # iBOT: a CPU-sized head and crops (depth 6 as MAE), then teacher momentum / crops
    # (an iBOT step is ~3.5 s at batch 256 on 2 cores: these need a budget of 10m or more)
    "ibot_d6_small": (IBOT_CPU, {}),
    "ibot_d6_small_m0.95": (IBOT_CPU, {"model.args.momentum_teacher": 0.95}),
    "ibot_d6_small_nolocal": (IBOT_CPU, {"model.args.local_crops_number": 0}),
    # SimMIM, LoMaR: the MAE findings (depth 6, short warm-up) on their own presets
    "simmim_d6": (
        "simmim_vit_tiny_cifar",
        {"optim.warmup_epochs": 0.5, "model.args.depth": 6, "model.args.drop_path_rate": 0.0},
    ),
    "lomar_d6": ("lomar_vit_tiny_cifar", {"optim.warmup_epochs": 0.5, "model.args.depth": 6}),
    "mae_d6_bs128": (
        MAE,
        {"optim.warmup_epochs": 0.5, "model.args.depth": 6, "data.batch_size": 128, **DEC_SMALL},
    ),  # fmt: skip
}


def knn(ckpt: str, root: str, out: Path, pool: str) -> float:
    r = mimkit.knn(ckpt, data=root, out=str(out), pool=pool,
                   **{"eval.baselines": False, "data.num_workers": 2})  # fmt: skip
    return r["per_k"]["20"]["top1"]


def run(name: str, preset: str, overrides: dict, args, out: Path) -> dict:
    root = Path(args.data)
    keys = {"eval.monitor": False, "data.num_workers": 2, **overrides}
    t0 = time.time()
    r = mimkit.pretrain(preset, data=str(root / "train"), out=str(out / name),
                        time_budget=args.budget, **keys)  # fmt: skip
    row = {
        "variant": name,
        "preset": preset,
        "overrides": overrides,
        "budget": args.budget,
        "planned_steps": r.config.train.planned_steps,
        "step_time": r.config.train.step_time,
        "batch": r.config.data.batch_size,
        "loss": r.metrics.get("loss"),
        "wall_s": round(time.time() - t0, 1),
    }
    for pool in ("cls", "avg"):
        row[f"knn_{pool}"] = knn(str(r.checkpoint), str(root), out / name / f"knn_{pool}", pool)
    return row


def floors(args, out: Path) -> dict:
    """Raw pixels and a random-init ViT-T (the base variant's encoder) on the same split."""
    r = mimkit.knn("none", data=args.data, out=str(out / "floors"), model="vit_tiny_cifar",
                   **{"data.num_workers": 2})  # fmt: skip
    return {"variant": "floors", "raw_pixels": r["baselines"]["raw_pixels"]["per_k"]["20"]["top1"],
            "random_init": r["per_k"]["20"]["top1"]}  # fmt: skip


def make_split(source: Path, root: Path, share: float = 0.1, seed: int = 0) -> None:
    """ROOT/train and ROOT/val as symlinks to SOURCE's class folders: ``share`` of each
    class's images (a seeded draw) in val, the rest in train."""
    import random

    rng = random.Random(seed)
    for cls in sorted(d for d in source.iterdir() if d.is_dir()):
        files = sorted(f for f in cls.iterdir() if f.is_file())
        held = set(rng.sample(range(len(files)), round(share * len(files))))
        for i, f in enumerate(files):
            dst = root / ("val" if i in held else "train") / cls.name / f.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():
                dst.symlink_to(f.resolve())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="ROOT with train/ and val/ (from train)")
    p.add_argument("--budget", default="4m")
    p.add_argument("--only", default="", help="comma-separated variant names")
    p.add_argument("--floors", action="store_true", help="also the two floors")
    p.add_argument("--out", default="runs/small_budget_sweep")
    p.add_argument("--make-split", metavar="SOURCE", help="cut SOURCE's class folders into "
                   "--data/train and --data/val (10%% of each class), then stop")  # fmt: skip
    args = p.parse_args()
    if args.make_split:
        make_split(Path(args.make_split), Path(args.data))
        return
    names = [n for n in args.only.split(",") if n] or list(VARIANTS)
    out = Path(args.out) / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    stamp = {"date": datetime.date.today().isoformat(), "data": args.data}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)

    def record(row: dict) -> None:  # after each variant: a crash later loses nothing
        with RESULTS.open("a") as f:
            f.write(json.dumps({**row, **stamp}) + "\n")
        print(json.dumps(row), flush=True)

    if args.floors:
        record(floors(args, out))
    for name in names:
        preset, overrides = VARIANTS[name]
        record(run(name, preset, overrides, args, out))


if __name__ == "__main__":
    main()
