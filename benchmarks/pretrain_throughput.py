"""Pretraining throughput (images/s) of MAE on the current device, synthetic data.

    python benchmarks/pretrain_throughput.py          # ViT-B/16 @224 and the CIFAR preset
    python benchmarks/pretrain_throughput.py --device cuda --steps 50

Times the Trainer's own training step (forward, loss, backward, AdamW) after warm-up;
appends a JSON line per model to benchmarks/results/pretrain_throughput.jsonl.
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

CASES = {  # name: (model, img_size, default batch on CPU, on GPU)
    "mae_vit_base_patch16": ("mae_vit_base_patch16", 224, 8, 256),
    "mae_vit_tiny_cifar": ("mae_vit_tiny_cifar", 32, 256, 4096),
}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="auto")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "pretrain_throughput.jsonl")
    )
    args = p.parse_args()
    device = torch.device(args.device)
    for case in args.cases:
        name, size, cpu_batch, gpu_batch = CASES[case]
        batch = args.batch or (gpu_batch if device.type == "cuda" else cpu_batch)
        torch.manual_seed(0)
        model = mimkit.create_model(name).to(device)
        make = lambda b=batch, s=size: {"image": torch.randn(b, 3, s, s, device=device)}
        r = measure_step(
            PretrainTask(), model, make, device, args.precision, args.steps, args.warmup
        )
        row = {
            "date": datetime.date.today().isoformat(),
            "model": name,
            "img_size": size,
            "batch": batch,
            "device": device_name(device),
            "torch": torch.__version__,
            **r,
        }
        print(
            f"{name:24s} {size:4d}px batch {batch:5d} {r['precision']:5s} "
            f"{r['img_s']:10.1f} img/s  {r['step_ms']:9.1f} ms/step  ({row['device']})"
        )
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
