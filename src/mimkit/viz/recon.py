"""Reconstruction grids as in the official MAE demo:
original | masked | reconstruction | reconstruction with the visible patches pasted back."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import masking as M
from ..data.transforms import denormalize


@torch.no_grad()
def reconstruct(
    model, imgs: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """imgs: (N, 3, H, W) normalised -> dict of (N, 3, H, W) images in [0, 1]:
    original, masked, recon, pasted; plus the loss and mask (N, L).

    With ``norm_pix_loss`` the prediction is in per-patch normalised space: it is mapped
    back with the target patches' own mean and variance (as the official demo).
    """
    model.eval()
    out = model(imgs, mask_ratio=mask_ratio, noise=noise)
    p = model.patch_size
    pred = out.pred.float()
    if model.norm_pix_loss:
        target = M.patchify(imgs, p)
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        pred = pred * (var + 1e-6) ** 0.5 + mean
    grid = model.grid_size
    recon = M.unpatchify(pred, p, grid)
    pixel_mask = M.unpatchify(out.mask.unsqueeze(-1).expand(-1, -1, p * p * 3).float(), p, grid)
    masked = imgs * (1 - pixel_mask)
    pasted = imgs * (1 - pixel_mask) + recon * pixel_mask
    return {
        "original": denormalize(imgs),
        "masked": denormalize(masked) * (1 - pixel_mask) + 0.5 * pixel_mask,  # grey holes
        "recon": denormalize(recon),
        "pasted": denormalize(pasted),
        "loss": out.loss,
        "mask": out.mask,
    }


def save_grid(images: dict[str, torch.Tensor], path: str | Path, title: str = "") -> Path:
    """One row per image, the four columns of the official demo, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [
        ("original", "original"),
        ("masked", "masked"),
        ("recon", "reconstruction"),
        ("pasted", "reconstruction + visible"),
    ]
    n = images["original"].shape[0]
    fig, axes = plt.subplots(n, 4, figsize=(4 * 2.2, n * 2.2), squeeze=False)
    for r in range(n):
        for c, (key, label) in enumerate(cols):
            ax = axes[r][c]
            ax.imshow(images[key][r].permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(label, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / n) if title else None)
    if title:
        fig.suptitle(title, fontsize=11)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
