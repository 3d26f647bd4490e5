"""Classification metrics, confusion matrices and ROC AUC."""

from __future__ import annotations

from pathlib import Path

import torch


def classification_metrics(scores: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> dict:
    """scores: (N, C) logits or votes, targets: (N,) -> top-1/top-5 (%), per-class accuracy,
    number of images and the confusion matrix (rows = true class)."""
    n, c = scores.shape
    top = scores.topk(min(5, c), dim=1).indices
    correct = top.eq(targets.view(-1, 1))
    pred = top[:, 0]
    cm = torch.zeros(c, c, dtype=torch.long)
    cm.index_put_((targets, pred), torch.ones_like(targets), accumulate=True)
    per_class = {}
    for i, name in enumerate(classes):
        total = int(cm[i].sum())
        per_class[name] = round(100.0 * int(cm[i, i]) / total, 3) if total else None
    return {
        "top1": round(100.0 * correct[:, 0].double().mean().item(), 4) if n else 0.0,
        "top5": round(100.0 * correct.any(1).double().mean().item(), 4) if n else 0.0,
        "per_class": per_class,
        "num_images": n,
        "confusion": cm.tolist(),
    }


def roc_auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties half
    (Mann-Whitney U); NaN when one class is empty."""
    pos, neg = scores[positive.bool()], scores[~positive.bool()]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    ranks = _average_ranks(torch.cat([pos, neg]).double())
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks with ties given their average rank."""
    order = x.argsort()
    sorted_x = x[order]
    ranks = torch.empty_like(x)
    i, n = 0, len(x)
    while i < n:
        j = i
        while j + 1 < n and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def plot_confusion(
    cm: list[list[int]], classes: list[str], path: str | Path, title: str = ""
) -> Path:
    """Row-normalised confusion matrix as a PNG (counts written in cells for <= 20 classes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = torch.tensor(cm, dtype=torch.float64)
    norm = m / m.sum(1, keepdim=True).clamp(min=1)
    c = len(classes)
    size = max(4.0, min(0.45 * c + 2, 20))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    if c <= 50:
        ax.set_xticks(range(c), classes, rotation=90, fontsize=8)
        ax.set_yticks(range(c), classes, fontsize=8)
    if c <= 20:
        for i in range(c):
            for j in range(c):
                color = "white" if norm[i, j] > 0.5 else "black"
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
