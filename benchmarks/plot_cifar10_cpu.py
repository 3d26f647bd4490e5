"""Curves of the CIFAR-10 CPU recipe from the logs kept in benchmarks/results/:

- cifar10_cpu/ (MAE vs random init, 2026-11-23) -> docs/images/cifar10_cpu_curves.png
- cifar10_cpu_ibot/ (MAE vs iBOT at the same wall-clock budget, random init and raw
  pixels as floors) -> docs/images/cifar10_cpu_ibot_curves.png

    python benchmarks/plot_cifar10_cpu.py
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
LOGS = HERE / "results" / "cifar10_cpu"
IBOT_LOGS = HERE / "results" / "cifar10_cpu_ibot"
IMAGES = HERE.parent / "docs" / "images"
OUT = IMAGES / "cifar10_cpu_curves.png"
ARMS = {"mae": "MAE", "ibot": "iBOT", "random": "random init", "pixels": "raw pixels"}


def records(run: str, kind: str, logs: Path = LOGS) -> list[dict]:
    lines = (logs / run / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == kind]


def ibot_figure() -> Path:
    """Pretraining loss over wall-clock minutes (MAE and iBOT, each on its own axis: the
    losses are different quantities) and linear-probe test accuracy per epoch, 4 arms."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (run, name) in zip(axes[:2], (("pretrain", "MAE"), ("pretrain-ibot", "iBOT"))):
        rows = records(run, "train", IBOT_LOGS)
        t0 = rows[0]["time"]  # minutes since the first logged step
        ax.plot([(r["time"] - t0) / 60 for r in rows], [r["loss"] for r in rows], label="total")
        if name == "iBOT" and "cls_loss" in rows[0]:
            for key in ("cls_loss", "patch_loss"):
                minutes = [(r["time"] - t0) / 60 for r in rows]
                ax.plot(minutes, [r[key] for r in rows], "--", label=key)
            ax.legend()
        ax.set(xlabel="minutes", ylabel="train loss", title=f"{name} pretraining loss")
    for arm, name in ARMS.items():
        if not (IBOT_LOGS / f"linprobe-{arm}" / "log.jsonl").is_file():
            continue
        ep = records(f"linprobe-{arm}", "epoch", IBOT_LOGS)
        axes[2].plot([r["epoch"] for r in ep], [r["val/acc1"] for r in ep], label=name)
    axes[2].set(xlabel="epoch", ylabel="test top-1 (%)", title="linear probe (50k / 10k)")
    axes[2].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = IMAGES / "cifar10_cpu_ibot_curves.png"
    fig.savefig(out, dpi=100)
    return out


def main() -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arm, style in (("mae", "-"), ("random", "--")):
        ep = records(f"linprobe-{arm}", "epoch")
        axes[0].plot(
            [r["epoch"] for r in ep],
            [r["val/acc1"] for r in ep],
            style,
            label=f"linear probe, {'MAE' if arm == 'mae' else 'random init'}",
        )
    axes[0].set(xlabel="epoch", ylabel="test top-1 (%)", title="linear probe (50k train, 10k test)")
    for arm, label in (("mae", "MAE-initialised"), ("scratch", "from scratch")):
        tr = records(f"finetune-{arm}", "train")
        axes[1].plot([r["step"] for r in tr], [r["loss"] for r in tr], label=label)
    axes[1].set(xlabel="optimizer step", ylabel="train loss", title="fine-tune (10k subset, 2 ep)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(OUT, dpi=100)
    print(OUT)
    if IBOT_LOGS.is_dir():
        print(ibot_figure())


if __name__ == "__main__":
    main()
