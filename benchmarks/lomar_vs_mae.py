"""Pretraining throughput of LoMaR vs MAE, ViT-B/16, same batch and device, one run.

    python benchmarks/lomar_vs_mae.py                       # 224, 384, 448 on this device
    python benchmarks/lomar_vs_mae.py --sizes 448 --batch 64 --device cuda

Both models use the Trainer's real step (forward, loss, backward, AdamW) on synthetic
images, alternating MAE and LoMaR at each size. LoMaR runs 4 windows of 7x7 patches
(80% masked) whatever the image size; MAE encodes 25% of all patches and decodes all of
them, so its cost grows with the image area. The paper reports LoMaR 3.1x faster at 448.
Appends one JSON line per size to benchmarks/results/lomar_vs_mae.jsonl.
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import torch

import mimkit
from mimkit.engine.timing import device_name
from mimkit.recipes.benchmark import measure_step
from mimkit.recipes.pretrain import PretrainTask

MODELS = {"mae": "mae_vit_base_patch16", "lomar": "lomar_vit_base_patch16"}


def measure(kind: str, size: int, args, device) -> dict:
    torch.manual_seed(0)
    model = mimkit.create_model(MODELS[kind], img_size=size).to(device)
    make = lambda: {"image": torch.randn(args.batch, 3, size, size, device=device)}
    return measure_step(
        PretrainTask(), model, make, device, args.precision, args.steps, args.warmup
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", nargs="+", type=int, default=[224, 384, 448])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="auto")
    p.add_argument("--batch", type=int, default=None, help="default: 4 on CPU, 128 on GPU")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "lomar_vs_mae.jsonl"))
    args = p.parse_args()
    device = torch.device(args.device)
    args.batch = args.batch or (128 if device.type == "cuda" else 4)
    for size in args.sizes:
        r = {kind: measure(kind, size, args, device) for kind in ("mae", "lomar")}
        row = {
            "date": datetime.date.today().isoformat(),
            "img_size": size,
            "batch": args.batch,
            "steps": args.steps,
            "device": device_name(device),
            "torch": torch.__version__,
            "precision": r["mae"]["precision"],
            "img_s": {k: round(v["img_s"], 2) for k, v in r.items()},
            "peak_mem_gb": {k: v["peak_mem_gb"] for k, v in r.items()},
            "speedup_lomar_over_mae": round(r["lomar"]["img_s"] / r["mae"]["img_s"], 2),
        }
        print(json.dumps(row))
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
