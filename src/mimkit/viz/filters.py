"""ConvMixer's learned filters as pictures: the patch-embedding filters (RGB) and the
depthwise kernels of one layer (grey), each filter scaled to [0, 1] on its own."""

from __future__ import annotations

import math
from pathlib import Path

import torch


def filter_grid(w: torch.Tensor, pad: int = 1) -> torch.Tensor:
    """w: (n, c, k, k) with c in {1, 3} -> one (H, W, c) image, each filter scaled to [0, 1]."""
    n, c, k, _ = w.shape
    lo = w.flatten(1).amin(1).view(n, 1, 1, 1)
    hi = w.flatten(1).amax(1).view(n, 1, 1, 1)
    w = (w - lo) / (hi - lo).clamp(min=1e-12)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = torch.ones(c, rows * (k + pad) + pad, cols * (k + pad) + pad)
    for i in range(n):
        r, col = divmod(i, cols)
        y, x = pad + r * (k + pad), pad + col * (k + pad)
        grid[:, y : y + k, x : x + k] = w[i]
    return grid.permute(1, 2, 0)


def save_filter_grids(patch: torch.Tensor, depthwise: torch.Tensor, layer: int, out) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 6))
    rgb = patch.shape[1] == 3
    axes[0].imshow(filter_grid(patch.float().cpu()).numpy(), interpolation="nearest")
    axes[0].set_title(f"patch embedding: {len(patch)} filters {tuple(patch.shape[1:])}")
    axes[1].imshow(
        filter_grid(depthwise.float().cpu())[..., 0].numpy(), cmap="gray", interpolation="nearest"
    )
    axes[1].set_title(
        f"layer {layer} depthwise: {len(depthwise)} kernels {tuple(depthwise.shape[2:])}"
    )
    if not rgb:
        axes[0].images[0].set_cmap("gray")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
