"""Image transforms (torchvision transforms v2)."""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _to_normalized_tensor() -> list:
    return [
        T.PILToTensor(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]


def pretrain_transform(img_size: int, min_scale: float = 0.2, hflip: bool = True) -> T.Compose:
    """MAE pretraining: RandomResizedCrop(scale min-1, bicubic) + flip + ImageNet mean/std."""
    ops = [
        T.RandomResizedCrop(
            img_size, scale=(min_scale, 1.0), interpolation=InterpolationMode.BICUBIC
        )
    ]
    if hflip:
        ops.append(T.RandomHorizontalFlip())
    return T.Compose(ops + _to_normalized_tensor())


def eval_transform(img_size: int, crop_pct: float = 224 / 256) -> T.Compose:
    """Resize the short side to img_size / crop_pct (bicubic), centre crop (MAE evaluation).

    For tiny images (img_size < 64, e.g. CIFAR) no crop: resize straight to img_size.
    """
    if img_size < 64:
        ops = [T.Resize((img_size, img_size), interpolation=InterpolationMode.BICUBIC)]
    else:
        resize = int(round(img_size / crop_pct))
        ops = [T.Resize(resize, interpolation=InterpolationMode.BICUBIC), T.CenterCrop(img_size)]
    return T.Compose(ops + _to_normalized_tensor())


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) normalised -> [0, 1]"""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x * std + mean).clamp(0, 1)
