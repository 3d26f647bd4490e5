"""The two kernel choices behind mimkit's CPU speed, timed side by side in one process.

    python benchmarks/cpu_kernels.py   # appends to benchmarks/results/cpu_kernels.jsonl
    python benchmarks/cpu_kernels.py --rounds 3 --json /tmp/k.jsonl

1. AdamW update of the ViT-B/16 MAE parameters (111M, weight decay on >= 2-D tensors):
   ``fused=True`` (what ``engine.optim.adamw`` picks on torch >= 2.4) against the for-loop
   and ``foreach`` implementations.
2. Attention forward + backward under CPU bf16 autocast at MAE's shapes: the explicit
   ``softmax(q k^T * scale) v`` (what ``layers.attention`` picks there) against PyTorch's
   SDPA; and in fp32, where mimkit keeps SDPA.

Timing: rounds alternate the order of the candidates (ABBA), so drift on a shared machine
hits all alike; the minimum over rounds is reported, with the median. Ratios, not absolute
times, are what carries over to another CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from compare_peers import machine, time_rounds  # same folder: the ABBA timer and record

import mimkit
from mimkit.engine.optim import weight_decay_groups
from mimkit.layers.attention import attention

RESULTS = Path(__file__).parent / "results" / "cpu_kernels.jsonl"
# (name, (batch, heads, tokens, head dim)): the ViT-B/16 encoder at 75% masking (49 + cls)
# and the CIFAR preset's decoder (64 patches + cls), as the step runs them.
ATTENTION_SHAPES = [("vit_b16_encoder", (8, 12, 50, 64)), ("cifar_decoder", (128, 3, 65, 64))]


class _Call:
    """A function as ``time_rounds``' runner (``step(precision)``; the precision is fixed
    inside each candidate here)."""

    def __init__(self, fn):
        self.fn = fn

    def step(self, _precision) -> None:
        self.fn()


def _interleaved(candidates: dict, rounds: int, steps: int) -> dict:
    """compare_peers' ABBA rounds (1 warm-up step each) over the candidates."""
    runners = {name: _Call(fn) for name, fn in candidates.items()}
    times = time_rounds(runners, [(n, "") for n in candidates], rounds, steps, warmup=1)
    return {
        name: {"s_min": min(t), "s_median": statistics.median(t), "rounds_s": t}
        for (name, _), t in times.items()
    }


def adamw_candidates() -> dict:
    model = mimkit.create_model("mae_vit_base_patch16")
    groups = weight_decay_groups(model, 0.05)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    out = {}
    for name, kw in {
        "fused": {"fused": True},
        "foreach": {"foreach": True},
        "for-loop": {"foreach": False},
    }.items():
        # copies: the optimizer writes its defaults (fused, foreach) into each group dict
        opt = torch.optim.AdamW([dict(g) for g in groups], lr=1.5e-4, betas=(0.9, 0.95), **kw)
        assert all(g.get("fused") == kw.get("fused") for g in opt.param_groups)
        out[name] = opt.step
    return out


def attention_candidates(shape, dtype: str) -> dict:
    b, h, n, d = shape
    q, k, v = (torch.randn(b, h, n, d, requires_grad=True) for _ in range(3))
    scale = d**-0.5
    bf16 = dtype == "bf16"

    def run(explicit: bool):
        def step():
            ctx = torch.autocast("cpu", torch.bfloat16) if bf16 else contextlib.nullcontext()
            with ctx:
                # autocast casts q, k, v as a linear layer's bf16 output would be
                qq, kk, vv = (t.to(torch.bfloat16) if bf16 else t for t in (q, k, v))
                if explicit:
                    out = attention(qq, kk, vv, scale, fused=False)
                else:
                    out = F.scaled_dot_product_attention(qq, kk, vv, scale=scale)
            out.float().sum().backward()

        return step

    return {"explicit": run(True), "sdpa": run(False)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", type=Path, default=RESULTS, help="append the result here")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    result = {
        "date": date.today().isoformat(),
        "machine": machine(),
        "rounds": args.rounds,
        "adamw_vit_b16_mae": _interleaved(adamw_candidates(), args.rounds, 2),
        "attention": {},
    }
    for name, shape in ATTENTION_SHAPES:
        for dtype in ("bf16", "fp32"):
            key = f"{name} {list(shape)} {dtype}"
            result["attention"][key] = _interleaved(
                attention_candidates(shape, dtype), args.rounds, 5
            )
    print(f"AdamW step, ViT-B/16 MAE parameters ({args.rounds} rounds, min / median s):")
    for n, t in result["adamw_vit_b16_mae"].items():
        print(f"  {n:9s} {t['s_min']:.3f} / {t['s_median']:.3f}")
    print("attention forward + backward (min / median ms):")
    for key, res in result["attention"].items():
        e, s = res["explicit"], res["sdpa"]
        print(
            f"  {key:36s} explicit {1e3 * e['s_min']:7.1f} / {1e3 * e['s_median']:7.1f}"
            f"   sdpa {1e3 * s['s_min']:7.1f} / {1e3 * s['s_median']:7.1f}"
            f"   sdpa/explicit {s['s_min'] / e['s_min']:.2f}x"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    with args.json.open("a") as f:
        f.write(json.dumps(result) + "\n")
    print(f"appended to {args.json}")


if __name__ == "__main__":
    main()
