"""Grids of image columns (the official MAE demo's layout) and id colourings: the drawing
pieces every method's picture uses (``methods/*``: what goes in the columns)."""

from __future__ import annotations

from pathlib import Path

import torch

DEMO_COLUMNS = (
    ("original", "original"),
    ("masked", "masked"),
    ("recon", "reconstruction"),
    ("pasted", "reconstruction + visible"),
)


def save_grid(
    images: dict[str, torch.Tensor], path: str | Path, title: str = "", columns=DEMO_COLUMNS
) -> Path:
    """One row per image, one column per (key, label) of ``columns``, as a PNG.
    ``images[key]``: (N, 3, H, W) in [0, 1]; ``images['boxes']`` (N, M, 3) optional
    squares (top, left, side) drawn on every column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = list(columns)
    n = images["original"].shape[0]
    fig, axes = plt.subplots(n, len(cols), figsize=(len(cols) * 2.2, n * 2.2), squeeze=False)
    for r in range(n):
        for c, (key, label) in enumerate(cols):
            ax = axes[r][c]
            ax.imshow(
                images[key][r].clamp(0, 1).permute(1, 2, 0).cpu().numpy(), interpolation="nearest"
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(label, fontsize=10)
            for top, left, side in images["boxes"][r].tolist() if "boxes" in images else []:
                ax.add_patch(
                    plt.Rectangle((left - 0.5, top - 0.5), side, side, fill=False, ec="yellow")
                )
    lines = title.count("\n") + 1 if title else 0
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 * lines / n) if title else None)
    if title:
        fig.suptitle(title, fontsize=11 if lines == 1 else 8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def colour_ids(ids: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, h, w) integer ids (prototypes, clusters) -> (N, 3, H, W) colours, one fixed
    colour per id, each cell ``patch`` pixels wide."""
    import colorsys

    hue = (ids.float() * 0.618033988749895) % 1.0  # golden-ratio hues: neighbours differ
    flat = [colorsys.hsv_to_rgb(h, 0.65, 0.95) for h in hue.flatten().tolist()]
    rgb = torch.tensor(flat).reshape(*ids.shape, 3).permute(0, 3, 1, 2)
    return rgb.repeat_interleave(patch, 2).repeat_interleave(patch, 3).to(ids.device)
