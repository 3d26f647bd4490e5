"""Augmentation on the device, a whole batch at a time: random resized crop + flip.

Crop parameters follow torchvision's ``RandomResizedCrop.get_params`` (10 tries of
area ~ U(scale) and log-aspect ~ U(log ratio), integer boxes, centre-crop fallback),
drawn for every image at once; the crops are resampled with one ``grid_sample`` call.
Written here because torchvision's v2 transforms draw one set of parameters per call,
so a batch would share one crop.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .transforms import IMAGENET_MEAN, IMAGENET_STD


def sample_crops(
    n: int,
    height: int,
    width: int,
    scale=(0.2, 1.0),
    ratio=(3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    attempts: int = 10,
) -> torch.Tensor:
    """Boxes (n, 4) as (top, left, h, w), integer-valued floats, like torchvision's."""
    dev = generator.device if generator is not None else torch.device("cpu")
    area = height * width
    target = area * torch.empty(n, attempts, device=dev).uniform_(*scale, generator=generator)
    log_r = torch.empty(n, attempts, device=dev).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator
    )
    aspect = log_r.exp()
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.float().argmax(dim=1, keepdim=True)  # first valid try (0 if none)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    fallback = ~ok.any(dim=1)
    if fallback.any():
        fw, fh = _centre_fallback(height, width, ratio)
        w[fallback], h[fallback] = float(fw), float(fh)
    u = torch.rand(n, 2, device=dev, generator=generator)
    top = torch.floor(u[:, 0] * (height - h + 1))
    left = torch.floor(u[:, 1] * (width - w + 1))
    top[fallback] = torch.div(height - h[fallback], 2, rounding_mode="floor")
    left[fallback] = torch.div(width - w[fallback], 2, rounding_mode="floor")
    return torch.stack([top, left, h, w], dim=1)


def _centre_fallback(height: int, width: int, ratio) -> tuple[int, int]:
    in_ratio = width / height
    if in_ratio < min(ratio):
        return width, int(round(width / min(ratio)))
    if in_ratio > max(ratio):
        return int(round(height * max(ratio))), height
    return width, height


def resized_crops(
    images: torch.Tensor,
    boxes: torch.Tensor,
    size: int,
    flip: torch.Tensor | None = None,
    mode: str = "bicubic",
) -> torch.Tensor:
    """images (N, C, H, W) uint8 or float, boxes (N, 4) -> (N, C, size, size) float in the
    input's value range; ``flip`` (N,) bool mirrors horizontally.

    Bilinear equals ``F.interpolate(crop, size, align_corners=False)``; bicubic equals it
    away from the crop's 2-pixel border (there the cubic taps are clamped differently).
    No antialias: downscaling by more than ~2x differs from torchvision's antialiased resize.
    """
    n, _, H, W = images.shape
    top, left, h, w = boxes.to(images.device, torch.float32).unbind(1)
    theta = torch.zeros(n, 2, 3, device=images.device)
    sx = w / W
    if flip is not None:
        sx = torch.where(flip.to(images.device), -sx, sx)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = (2 * left + w) / W - 1
    theta[:, 1, 1] = h / H
    theta[:, 1, 2] = (2 * top + h) / H - 1
    grid = F.affine_grid(theta, (n, images.shape[1], size, size), align_corners=False)
    # keep samples inside the crop (edge pixel centres), as resizing the cropped image does
    lo_x, hi_x = (2 * left + 1) / W - 1, (2 * (left + w) - 1) / W - 1
    lo_y, hi_y = (2 * top + 1) / H - 1, (2 * (top + h) - 1) / H - 1
    grid[..., 0] = torch.maximum(
        torch.minimum(grid[..., 0], hi_x.view(n, 1, 1)), lo_x.view(n, 1, 1)
    )
    grid[..., 1] = torch.maximum(
        torch.minimum(grid[..., 1], hi_y.view(n, 1, 1)), lo_y.view(n, 1, 1)
    )
    x = images.float()
    out = F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)
    return out.clamp_(0, 255) if images.dtype == torch.uint8 else out


def normalize(x: torch.Tensor, max_value: float = 255.0) -> torch.Tensor:
    """(N, 3, H, W) in [0, max_value] -> ImageNet mean/std normalised."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1) * max_value
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1) * max_value
    return (x - mean) / std


def augment_batch(
    images: torch.Tensor,
    size: int,
    scale=(0.2, 1.0),
    hflip: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """uint8 (N, 3, H, W) on any device -> normalised float (N, 3, size, size):
    per-image random resized crop (bicubic) and horizontal flip."""
    n, _, h, w = images.shape
    boxes = sample_crops(n, h, w, scale, generator=generator)
    dev = generator.device if generator is not None else torch.device("cpu")
    flip = torch.rand(n, device=dev, generator=generator) < 0.5 if hflip else None
    return normalize(resized_crops(images, boxes, size, flip))
