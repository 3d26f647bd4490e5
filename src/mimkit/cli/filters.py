"""``mimkit visualize-filters``: a ConvMixer's patch-embedding filters and depthwise kernels."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..engine.logging import setup_console
from ..errors import UserError
from ..interop.checkpoint import model_from_checkpoint
from .common import add_trust_flag


def add_parser(sub) -> None:
    p = sub.add_parser(
        "visualize-filters",
        help="draw a ConvMixer's patch-embedding filters and depthwise kernels",
        description="Image grids of the patch-embedding filters (RGB) and of the depthwise "
        "kernels of one layer (grey), as the ConvMixer paper shows them.",
    )
    p.add_argument("--checkpoint", required=True, help="ConvMixer checkpoint (mimkit)")
    p.add_argument("--out", default="filters.png", help="PNG to write")
    add_trust_flag(p)
    p.add_argument("--layer", type=int, default=0, help="block whose depthwise kernels to draw")
    p.add_argument("--max-filters", type=int, default=256, help="at most this many per grid")
    p.set_defaults(func=cmd_filters)


def cmd_filters(args) -> int:
    setup_console()
    model, _ = model_from_checkpoint(args.checkpoint, kind="encoder", trust=args.trust_checkpoint)
    if not hasattr(model, "depthwise_kernels"):
        raise UserError(
            f"{args.checkpoint} is not a ConvMixer: visualize-filters draws convolution filters"
        )
    patch = model.patch_filters()[: args.max_filters]
    depthwise = model.depthwise_kernels(args.layer)[: args.max_filters]
    save_filter_grids(patch, depthwise, args.layer, args.out)
    print(f"wrote {args.out} ({len(patch)} patch filters, {len(depthwise)} depthwise kernels)")
    return 0


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
