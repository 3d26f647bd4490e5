"""``mimkit visualize``: reconstruction grids from a pretrained MAE."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..data import FolderSource, eval_transform
from ..data.datasets import load_rgb
from ..data.sources import IMAGE_EXTENSIONS
from ..engine import distributed as dist
from ..engine.logging import setup_console
from ..errors import UserError
from ..interop.checkpoint import model_from_checkpoint
from ..viz.recon import reconstruct, reconstruct_windows, save_grid
from .common import add_trust_flag

log = logging.getLogger("mimkit")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "visualize",
        help="draw original | masked | reconstruction | reconstruction + visible",
        description="Reconstruction grid from an MAE checkpoint (mimkit or official *visualize* "
        "file), one row per image, as the official MAE demo. For a LoMaR checkpoint the "
        "sampled windows are outlined, with their masks and predictions.",
    )
    p.add_argument(
        "--checkpoint", required=True, help="MAE checkpoint with its decoder, or a LoMaR checkpoint"
    )
    p.add_argument("--images", nargs="+", required=True, help="image files and/or folders")
    add_trust_flag(p)
    p.add_argument("--out", default="reconstructions.png", help="PNG to write")
    p.add_argument("--mask-ratio", type=float, default=None, help="default: the model's (0.75)")
    p.add_argument("--seed", type=int, default=0, help="seed of the masking noise")
    p.add_argument("--num-images", type=int, default=8, help="at most this many rows")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_visualize)


def cmd_visualize(args) -> int:
    setup_console()
    device = dist.resolve_device(args.device)
    model, _ = model_from_checkpoint(args.checkpoint, kind="mae", trust=args.trust_checkpoint)
    model.to(device)
    paths = collect_images(args.images, args.num_images)
    loss = reconstruction_grid(model, paths, args.out, args.mask_ratio, args.seed, device)
    print(f"wrote {args.out} ({len(paths)} images, masked-patch loss {loss:.4f})")
    return 0


def collect_images(items: list[str], limit: int) -> list[str]:
    """Files as given; folders contribute images spread evenly over their sorted contents."""
    paths: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = FolderSource(p).paths
            step = max(1, len(found) // limit)
            paths += found[::step][:limit]
        elif p.is_file():
            if not p.name.lower().endswith(IMAGE_EXTENSIONS):
                raise UserError(f"{p} is not an image ({', '.join(IMAGE_EXTENSIONS)})")
            paths.append(str(p))
        else:
            raise UserError(f"image or folder not found: {p}")
    return paths[:limit]


def reconstruction_grid(
    model, paths: list[str], out, mask_ratio: float | None, seed: int, device
) -> float:
    """Write the grid for ``paths``; unreadable files are skipped and named. Returns the loss."""
    transform = eval_transform(model.patch_embed.img_size[0])
    images = []
    for p in paths:
        try:
            images.append(transform(load_rgb(p)))
        except Exception as e:
            log.warning("skipped unreadable image %s (%s)", p, type(e).__name__)
    if not images:
        raise UserError("none of the given images could be read")
    imgs = torch.stack(images).to(device)
    g = torch.Generator().manual_seed(seed)
    if hasattr(model, "window_size"):  # LoMaR: windows, their masks and predictions
        result = reconstruct_windows(model, imgs, g)
        loss = float(result["loss"])
        title = f"{model.num_window} windows of {model.window_size}x{model.window_size}, "
        save_grid(result, out, title=title + f"masked-patch loss {loss:.4f}")
        return loss
    noise = torch.rand(len(images), model.patch_embed.num_patches, generator=g).to(device)
    ratio = model.mask_ratio if mask_ratio is None else mask_ratio
    result = reconstruct(model, imgs, ratio, noise)
    loss = float(result["loss"])
    save_grid(result, out, title=f"mask ratio {ratio:.2f}, masked-patch loss {loss:.4f}")
    return loss
