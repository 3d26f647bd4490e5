"""Features worth having at a small budget: each method pretrains for the same wall-clock
(``train.time_budget``) on the same class-folder dataset, without labels, then its frozen
encoder is scored by kNN (k=20 weighted cosine, T=0.07), the linear probe and the
attentive probe, beside the raw-pixel floor and the random-init encoder under the same
protocols. One table; every row is appended to benchmarks/results/small_budget.jsonl.

    python benchmarks/small_budget.py --data /tmp/cifar10 --budget 15m --methods mae,ibot
    python benchmarks/small_budget.py --data DIR --budget 5m --methods mae \\
        --preset mae=mae_vit_tiny_cpu --set mae:model.mask_ratio=0.6 --probes knn

``--data`` is ROOT with train/ and test/ (or val/) class folders: pretraining reads
ROOT/train only. Block and pooling choices are never made on the test split here: pass
them (``--set mae:eval.block=6``) after choosing them with ``mimkit blocks`` (which picks
on a split of the training images). Evaluation time is not part of the budget.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

import torch

import mimkit

RESULTS = Path(__file__).parent / "results" / "small_budget.jsonl"
PRESETS = {m: f"{m}_vit_tiny_cpu" for m in ("mae", "lomar", "ibot", "simmim")}


def parse_sets(items: list[str]) -> dict[str, dict]:
    """['mae:model.mask_ratio=0.6', ...] -> {'mae': {'model.mask_ratio': 0.6}}."""
    import yaml

    out: dict[str, dict] = {}
    for item in items:
        method, _, kv = item.partition(":")
        key, _, value = kv.partition("=")
        out.setdefault(method, {})[key] = yaml.safe_load(value)
    return out


def run_method(method: str, preset: str, args, sets: dict, out: Path) -> dict:
    root = Path(args.data)
    run_dir = out / method
    t0 = time.time()
    pre = sets.get(method, {})
    train_keys = {k: v for k, v in pre.items() if not k.startswith("eval.")}
    run = mimkit.pretrain(preset, data=str(root / "train"), out=str(run_dir),
                          time_budget=args.budget, **train_keys)  # fmt: skip
    wall = time.time() - t0
    cfg = run.config.train
    row = {
        "method": method,
        "preset": preset,
        "overrides": pre,
        "budget": args.budget,
        "planned_steps": cfg.planned_steps,
        "step_time": cfg.step_time,
        "pretrain_wall_s": round(wall, 1),
        "final_loss": run.metrics.get("loss"),
    }
    monitor = [r for r in run.history if r.get("kind") == "monitor"]
    if monitor:
        row["monitor_knn"] = [round(r["knn_top1"], 2) for r in monitor]
    eval_keys = {k: v for k, v in pre.items() if k.startswith("eval.")}
    eval_keys |= {"data.num_workers": args.workers}
    ckpt = str(run.checkpoint)
    for probe in args.probes:
        t0 = time.time()
        fn = getattr(mimkit, probe)
        extra = {"epochs": args.probe_epochs} if probe != "knn" else {}
        r = fn(ckpt, data=str(root), out=str(run_dir / probe), **extra, **eval_keys)
        top1 = r["per_k"]["20"]["top1"] if probe == "knn" else r["top1"]
        row[probe] = top1
        for floor, m in (r.get("baselines") or {}).items():
            row[f"{probe}_{floor}"] = m["per_k"]["20"]["top1"] if probe == "knn" else m["top1"]
        row[f"{probe}_s"] = round(time.time() - t0, 1)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="ROOT with train/ and test/ class folders")
    p.add_argument("--budget", default="15m", help="pretraining wall-clock per method")
    p.add_argument("--methods", default="mae,ibot", help="comma-separated")
    p.add_argument("--preset", action="append", default=[], help="METHOD=PRESET")
    p.add_argument("--set", action="append", default=[], help="METHOD:key=value")
    p.add_argument("--probes", default="knn,linprobe,attnprobe", help="comma-separated")
    p.add_argument("--probe-epochs", type=int, default=None, help="probes' epochs")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="runs/small_budget")
    p.add_argument("--tag", default="", help="a label for the results file")
    args = p.parse_args()
    args.probes = [x for x in args.probes.split(",") if x]
    presets = dict(PRESETS) | dict(item.split("=", 1) for item in args.preset)
    sets = parse_sets(args.set)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) / stamp
    rows = []
    for method in args.methods.split(","):
        row = run_method(method, presets[method], args, sets, out)
        row |= {
            "date": datetime.date.today().isoformat(),
            "machine": f"{platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} threads",
            "torch": torch.__version__,
            "data": str(args.data),
            "tag": args.tag,
        }
        rows.append(row)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row))
    cols = ["method", "planned_steps", *args.probes]
    floors = [f"{pr}_{f}" for pr in args.probes for f in ("raw_pixels", "random_init")]
    print("\n" + " | ".join(cols + floors))
    for r in rows:
        print(" | ".join(str(r.get(c, "-")) for c in cols + floors))


if __name__ == "__main__":
    main()
