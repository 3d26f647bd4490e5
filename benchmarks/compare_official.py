"""Pretraining step throughput: mimkit vs the official facebookresearch/mae model, same
model, batch, optimizer (AdamW, wd 0.05 groups) and precision, on this machine.

    git clone https://github.com/facebookresearch/mae /tmp/mae   # not part of mimkit
    python benchmarks/compare_official.py --official /tmp/mae --case base --batch 8

The official code targets timm 0.3.2: its ``Block(..., qk_scale=None)`` argument is
dropped by a shim, and timm's fused attention is switched off for it
(TIMM_FUSED_ATTN=0) so it runs the manual softmax attention it had. ``--official-fused``
also times it with the fused attention of the installed timm. Each implementation runs
in its own process, alternating, ``--repeats`` times; the median is reported and a JSON
line appended to benchmarks/results/compare_official.jsonl.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = {"base": ("mae_vit_base_patch16", 224), "cifar": ("mae_vit_tiny_cifar", 32)}
# The official file registers base/large/huge; the CIFAR-size model is built by arguments.
OFFICIAL_ARGS = {
    "base": dict(
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        decoder_embed_dim=512,
        decoder_depth=8,
        decoder_num_heads=16,
    ),
    "cifar": dict(
        img_size=32,
        patch_size=4,
        embed_dim=192,
        depth=12,
        num_heads=3,
        decoder_embed_dim=192,
        decoder_depth=4,
        decoder_num_heads=3,
    ),
}


def measure(impl: str, case: str, batch: int, steps: int, warmup: int, official: str | None):

    import torch

    torch.manual_seed(0)
    name, size = CASES[case]
    if impl == "mimkit":
        import mimkit
        from mimkit.recipes.benchmark import measure_step
        from mimkit.recipes.pretrain import PretrainTask

        model = mimkit.create_model(name)
        make = lambda: {"image": torch.randn(batch, 3, size, size)}
        cpu = torch.device("cpu")
        return measure_step(PretrainTask(), model, make, cpu, "fp32", steps, warmup)["img_s"]
    model = _official_model(official, case)
    from timm.optim import param_groups_weight_decay

    opt = torch.optim.AdamW(param_groups_weight_decay(model, 0.05), lr=1e-4, betas=(0.9, 0.95))
    x = torch.randn(batch, 3, size, size)
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        loss = model(x, mask_ratio=0.75)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps * batch / (time.perf_counter() - t0)


def _official_model(path: str, case: str):
    from functools import partial

    import numpy as np
    import timm.models.vision_transformer as tv
    import torch.nn as nn

    if not hasattr(np, "float"):  # util/pos_embed.py uses np.float, gone since numpy 1.24
        np.float = float

    class Block(tv.Block):  # timm 0.3.2 signature: qk_scale was removed later
        def __init__(self, *args, qk_scale=None, **kwargs):
            super().__init__(*args, **kwargs)

    tv.Block = Block
    sys.path.insert(0, path)
    import models_mae

    return models_mae.MaskedAutoencoderViT(
        norm_layer=partial(nn.LayerNorm, eps=1e-6), **OFFICIAL_ARGS[case]
    )


def _child(args) -> float:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        args.impl_child,
        "--case",
        args.case,
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
    ]
    if args.official:
        cmd += ["--official", args.official]
    env = dict(os.environ)
    if args.impl_child == "official":
        env["TIMM_FUSED_ATTN"] = "0"
    if args.impl_child == "official-fused":
        cmd[3] = "official"
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--official", help="folder of a facebookresearch/mae checkout")
    p.add_argument("--case", choices=list(CASES), default="base")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--official-fused", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(measure(args.child, args.case, args.batch, args.steps, args.warmup, args.official))
        return
    if not args.official or not (Path(args.official) / "models_mae.py").is_file():
        p.error("--official must name a facebookresearch/mae checkout (with models_mae.py)")
    impls = ["mimkit", "official"] + (["official-fused"] if args.official_fused else [])
    runs = {i: [] for i in impls}
    for r in range(args.repeats):
        for impl in impls if r % 2 == 0 else impls[::-1]:  # ABBA: drift hits both alike
            args.impl_child = impl
            runs[impl].append(_child(args))
    import torch

    row = {
        "date": datetime.date.today().isoformat(),
        "case": args.case,
        "model": CASES[args.case][0],
        "batch": args.batch,
        "steps": args.steps,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "img_s": {k: round(statistics.median(v), 2) for k, v in runs.items()},
        "runs": runs,
    }
    row["ratio_mimkit_over_official"] = round(row["img_s"]["mimkit"] / row["img_s"]["official"], 3)
    out = Path(__file__).parent / "results" / "compare_official.jsonl"
    with out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps({k: row[k] for k in ("case", "batch", "img_s", "ratio_mimkit_over_official")}))


if __name__ == "__main__":
    main()
