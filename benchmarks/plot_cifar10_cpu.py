"""Accuracy and loss curves of the CIFAR-10 CPU recipe, MAE-initialised vs random init,
from the logs kept in benchmarks/results/cifar10_cpu/ -> docs/images/cifar10_cpu_curves.png.

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
OUT = HERE.parent / "docs" / "images" / "cifar10_cpu_curves.png"


def records(run: str, kind: str) -> list[dict]:
    lines = (LOGS / run / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == kind]


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


if __name__ == "__main__":
    main()
