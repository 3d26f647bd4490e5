"""Quality guard for bf16 autocast on CPU: the CIFAR preset (mae_vit_tiny_cifar) pretrained
for 300 steps in fp32 and in bf16 from the same seed (same initial weights, data order
and masks), then kNN of both encoders on examples/cifar10-mini.

    python benchmarks/bf16_quality.py                      # batch 64, 300 steps, ~20 min
    python benchmarks/bf16_quality.py --steps 30           # a quick look
    python benchmarks/bf16_quality.py --blr 1.5e-3         # 10x the lr: the model moves more

Passes when the bf16 run's final loss (mean of the last 60 steps' logged windows) is within
2% of fp32's and its kNN top-1 within 1 point. kNN is measured with each run's own
extraction precision (the end-to-end change train.precision=auto makes) and crosswise.
Appends a JSON line to benchmarks/results/bf16_quality.jsonl.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import tempfile
from pathlib import Path

import torch

import mimkit
from mimkit.engine import precision as P

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "cifar10-mini"


def pretrain(out: Path, precision: str, args) -> dict:
    run = mimkit.pretrain(
        "mae_vit_tiny_cifar",
        data=str(DATA / "train"),
        out=str(out),
        batch_size=args.batch,
        epochs=math.ceil(args.steps / (2000 // args.batch)),
        **{
            "train.precision": precision,
            "train.max_steps": args.steps,
            "train.seed": args.seed,
            "train.log_every": 10,
            "train.tensorboard": False,
            "optim.warmup_epochs": 2,
            "data.pipeline": "tensor_cache",
            "data.num_workers": 2,
            **({"optim.blr": args.blr} if args.blr else {}),
        },
    )
    rows = [r for r in run.history if r["kind"] == "train"]
    last = [r["loss"] for r in rows if r["step"] > args.steps - 60]
    return {
        "checkpoint": str(run.checkpoint),
        "precision_resolved": run.config.train.precision_resolved,
        "final_loss": sum(last) / len(last),
        "curve": [(r["step"], round(r["loss"], 5)) for r in rows],
    }


def knn_top1(checkpoint: str, precision: str, out: Path) -> float:
    m = mimkit.knn(
        checkpoint,
        data=str(DATA),
        out=str(out),
        **{"train.precision": precision, "eval.cache_dir": "none", "data.num_workers": 2},
    )
    return m.metrics["top1"]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--blr", type=float, help="optim.blr (default: the preset's 1.5e-4)")
    p.add_argument("--out", default=None, help="run folders (default: a temp folder)")
    args = p.parse_args()
    base = Path(args.out or tempfile.mkdtemp(prefix="bf16-quality-"))
    runs = {prec: pretrain(base / prec, prec, args) for prec in ("fp32", "bf16")}
    knn = {
        f"{enc} encoder, {ext} features": knn_top1(
            runs[enc]["checkpoint"], ext, base / f"knn-{enc}-{ext}"
        )
        for enc in ("fp32", "bf16")
        for ext in ("fp32", "bf16")
    }
    f32, b16 = runs["fp32"]["final_loss"], runs["bf16"]["final_loss"]
    loss_gap = (b16 - f32) / f32
    knn_gap = knn["bf16 encoder, bf16 features"] - knn["fp32 encoder, fp32 features"]
    auto = P.resolve_with_reason("auto", torch.device("cpu"))
    row = {
        "date": datetime.date.today().isoformat(),
        "model": "mae_vit_tiny_cifar",
        "data": "examples/cifar10-mini (2000 train, 500 test)",
        "steps": args.steps,
        "batch": args.batch,
        "seed": args.seed,
        "blr": args.blr or 1.5e-4,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "auto_on_this_cpu": f"{auto.precision} ({auto.reason})",
        "final_loss": {"fp32": round(f32, 5), "bf16": round(b16, 5)},
        "loss_rel_diff": round(loss_gap, 4),
        "knn_top1": knn,
        "knn_diff_points": round(knn_gap, 2),
        "passes": abs(loss_gap) <= 0.02 and abs(knn_gap) <= 1.0,
        "curves": {k: v["curve"] for k, v in runs.items()},
    }
    out = Path(__file__).parent / "results" / "bf16_quality.jsonl"
    with out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    show = {k: v for k, v in row.items() if k != "curves"}
    print(json.dumps(show, indent=2))


if __name__ == "__main__":
    main()
