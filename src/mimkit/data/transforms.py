"""Image transforms (torchvision transforms v2)."""

from __future__ import annotations

import torch
from timm.data.transforms import str_to_interp_mode
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _to_normalized_tensor(mean=IMAGENET_MEAN, std=IMAGENET_STD) -> list:
    return [
        T.PILToTensor(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(mean, std),
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


def eval_transform(
    img_size: int,
    crop_pct: float = 224 / 256,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    interpolation: str = "bicubic",
) -> T.Compose:
    """Resize the short side to img_size / crop_pct, centre crop (MAE evaluation; a timm
    backbone's own ``pretrained_cfg`` gives crop_pct, mean, std and interpolation).

    For tiny images (img_size < 64, e.g. CIFAR) no crop: resize straight to img_size.
    """
    try:  # timm's names (a pretrained_cfg's 'bicubic', 'lanczos', ...)
        mode = str_to_interp_mode(interpolation)
    except KeyError:  # e.g. 'random': evaluation stays deterministic
        mode = InterpolationMode.BICUBIC
    if img_size < 64:
        ops = [T.Resize((img_size, img_size), interpolation=mode)]
    else:
        resize = int(round(img_size / crop_pct))
        ops = [T.Resize(resize, interpolation=mode), T.CenterCrop(img_size)]
    return T.Compose(ops + _to_normalized_tensor(mean, std))


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) normalised -> [0, 1]"""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x * std + mean).clamp(0, 1)


def linprobe_transform(img_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> T.Compose:
    """MAE linear probing augmentation: RandomResizedCrop (bicubic) + flip."""
    return T.Compose(
        [
            T.RandomResizedCrop(img_size, interpolation=InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            *_to_normalized_tensor(mean, std),
        ]
    )


def finetune_transform(
    img_size: int,
    auto_augment: str | None,
    reprob: float,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
):
    """MAE fine-tuning augmentation, built by timm's ``create_transform`` as the official
    code: RandomResizedCrop (bicubic) + flip + RandAugment + random erasing (pixel mode).
    ``scale``/``ratio`` = (1, 1) make the crop the whole image (ConvMixer's CIFAR recipe)."""
    from timm.data import create_transform

    _fix_timm_posterize()
    return create_transform(
        input_size=img_size,
        is_training=True,
        scale=tuple(scale),
        ratio=tuple(ratio),
        color_jitter=None,
        auto_augment=auto_augment,
        interpolation="bicubic",
        re_prob=reprob,
        re_mode="pixel",
        re_count=1,
        mean=tuple(mean),
        std=tuple(std),
    )


def _posterize(img, bits_to_keep, **_):
    """timm's posterize, working with Pillow >= 12 too.

    RandAugment's increasing posterize can ask for 0 bits at magnitude 10 (m9 + noise);
    older Pillow then returned a black image, newer Pillow raises. Keep the old result.
    """
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _fix_timm_posterize() -> None:
    from timm.data import auto_augment as aa

    for name, fn in aa.NAME_TO_OP.items():
        if fn is aa.posterize:
            aa.NAME_TO_OP[name] = _posterize
