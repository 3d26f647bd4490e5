"""Training curves from a run's log.jsonl."""

from __future__ import annotations

from pathlib import Path

from ..engine.logging import read_log


def plot_curves(
    log_path: str | Path, out_png: str | Path, keys: tuple[str, ...] = ("loss",)
) -> Path | None:
    """Loss (and lr) against optimizer step; per-epoch metrics in a second panel if any."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    train = [r for r in records if r.get("kind") == "train"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    if not train and not epochs:
        return None
    metric_keys = sorted({k for r in epochs for k in r if k.startswith(("val/", "acc"))})
    fig, axes = plt.subplots(
        1, 2 if metric_keys else 1, figsize=(11 if metric_keys else 6, 4), squeeze=False
    )
    ax = axes[0][0]
    series = train or epochs
    for key in keys:
        pts = [(r["step"], r[key]) for r in series if isinstance(r.get(key), (int, float))]
        if pts:
            ax.plot(*zip(*pts), label=key)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    lr = [(r["step"], r["lr"]) for r in series if "lr" in r]
    if lr:
        ax2 = ax.twinx()
        ax2.plot(*zip(*lr), color="tab:orange", alpha=0.5, label="lr")
        ax2.set_ylabel("learning rate", color="tab:orange")
    ax.legend(loc="upper right")
    if metric_keys:
        axm = axes[0][1]
        for key in metric_keys:
            pts = [(r["epoch"], r[key]) for r in epochs if isinstance(r.get(key), (int, float))]
            if pts:
                axm.plot(*zip(*pts), marker="o", label=key)
        axm.set_xlabel("epoch")
        axm.grid(alpha=0.3)
        axm.legend()
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def plot_monitor(log_path: str | Path, out_png: str | Path) -> Path | None:
    """The online kNN against optimizer step, its floors (raw pixels, random init) as
    dashed lines; None when the run has no 'monitor' records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_log(log_path) if r.get("kind") == "monitor" and "knn_top1" in r]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["step"] for r in rows], [r["knn_top1"] for r in rows], marker="o", label="kNN")
    floors = {"knn_top1_raw_pixels": "raw pixels", "knn_top1_random_init": "random init"}
    for (key, label), color in zip(floors.items(), ("tab:gray", "tab:red")):
        if key in rows[-1]:
            ax.axhline(rows[-1][key], ls="--", color=color, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("kNN top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def plot_blocks(rows: list[dict], out_png: str | Path) -> Path:
    """kNN and linear top-1 against block, one line per feature kind (cls, avg, cat)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, protocol in zip(axes, ("knn", "linear")):
        for kind in ("cls", "avg", "cat"):
            pts = [(r["block"] + 1, r[protocol]) for r in rows if r["kind"] == kind]
            ax.plot(*zip(*pts), marker="o", label=kind)
        ax.set_title(protocol)
        ax.set_xlabel("block")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 (%) on the held-out training images")
    axes[0].legend()
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def plot_qscore(q, correct, path: Path) -> Path:
    """Histogram of Q-scores; split by kNN correctness when known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if correct is None:
        ax.hist(q.numpy(), bins=50, color="tab:blue")
    else:
        ax.hist(q[correct].numpy(), bins=50, alpha=0.6, label="kNN correct", density=True)
        ax.hist(q[~correct].numpy(), bins=50, alpha=0.6, label="kNN wrong", density=True)
        ax.legend()
    ax.set_xlabel("Q-score")
    ax.set_ylabel("density" if correct is not None else "images")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
