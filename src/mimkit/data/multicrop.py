"""DINO / iBOT multi-crop augmentation with per-crop block masks (transforms v2).

One PIL image -> ``{'global': [(3, S, S)] * G, 'local': [(3, s, s)] * n, 'masks':
[(S/p, S/p) bool] * G}``, as the official ``DataAugmentationiBOT`` + ``ImageFolderMask``:
global crops scale 0.25-1 with local crops (0.14-1 without), 96 px local crops at
0.05-0.25; flip, colour jitter (p 0.8), grayscale (p 0.2); blur p 1.0 (first global),
0.1 (other globals, plus solarisation p 0.2), 0.5 (local); one masking ratio per global
crop. ``ImageDataset`` runs it under a per-sample seed (torch, ``random``, NumPy), so a
sample's crops and masks depend only on (seed, epoch, index).
"""

from __future__ import annotations

import torch
from PIL import Image, ImageFilter
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from ..masking import block_mask, draw_pred_ratio
from .datasets import collate
from .transforms import _to_normalized_tensor


class RandomPILGaussianBlur(torch.nn.Module):
    """PIL Gaussian blur with radius U(0.1, 2) applied with probability ``p`` (DINO's
    ``GaussianBlur``; torchvision's needs a kernel size, PIL's radius has none). Draws
    from torch's RNG like the v2 transforms."""

    def __init__(self, p: float, radius_min: float = 0.1, radius_max: float = 2.0):
        super().__init__()
        self.p, self.radius_min, self.radius_max = p, radius_min, radius_max

    def forward(self, img: Image.Image) -> Image.Image:
        if self.p < 1.0 and torch.rand(()).item() >= self.p:
            return img
        radius = self.radius_min + (self.radius_max - self.radius_min) * torch.rand(()).item()
        return img.filter(ImageFilter.GaussianBlur(radius=radius))


def _flip_and_color_jitter() -> list:
    return [
        T.RandomHorizontalFlip(p=0.5),
        T.RandomApply(
            [T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8
        ),
        T.RandomGrayscale(p=0.2),
    ]


def _view(size: int, scale, blur: float, solarize: float = 0.0) -> T.Compose:
    ops = [
        T.RandomResizedCrop(size, scale=tuple(scale), interpolation=InterpolationMode.BICUBIC),
        *_flip_and_color_jitter(),
        RandomPILGaussianBlur(blur),
    ]
    if solarize:
        ops.append(T.RandomSolarize(threshold=128, p=solarize))
    return T.Compose(ops + _to_normalized_tensor())


class MultiCropTransform:
    """Callable: PIL image -> {'global': [...], 'local': [...], 'masks': [...]}.

    ``global_scale=None`` picks the official default: (0.25, 1) with local crops, (0.14, 1)
    without. ``pred_ratio`` / ``pred_ratio_var`` as ``masking.draw_pred_ratio``; masks are
    BEiT blocks on the (global_size / patch_size) grid, drawn with the global ``random``.
    """

    def __init__(
        self,
        global_size: int = 224,
        local_size: int = 96,
        global_crops: int = 2,
        local_crops: int = 10,
        global_scale: tuple[float, float] | None = None,
        local_scale: tuple[float, float] = (0.05, 0.25),
        patch_size: int = 16,
        pred_ratio: float | list[float] = (0.0, 0.3),
        pred_ratio_var: float | list[float] = (0.0, 0.2),
        pred_aspect_ratio: tuple[float, float] = (0.3, 1 / 0.3),
    ):
        if global_size % patch_size:
            raise ValueError(f"global crop size {global_size} is not a multiple of {patch_size}")
        if global_scale is None:
            global_scale = (0.25, 1.0) if local_crops > 0 else (0.14, 1.0)
        self.global_crops, self.local_crops = global_crops, local_crops
        self.first = _view(global_size, global_scale, blur=1.0)
        self.other = _view(global_size, global_scale, blur=0.1, solarize=0.2)
        self.local = _view(local_size, local_scale, blur=0.5)
        self.grid = global_size // patch_size
        self.pred_ratio = _as_ratio(pred_ratio)
        self.pred_ratio_var = _as_ratio(pred_ratio_var)
        self.aspect = tuple(pred_aspect_ratio)

    def __call__(self, img: Image.Image) -> dict[str, list[torch.Tensor]]:
        glob = [self.first(img)] + [self.other(img) for _ in range(self.global_crops - 1)]
        local = [self.local(img) for _ in range(self.local_crops)]
        masks = [self.draw_mask() for _ in glob]
        return {"global": glob, "local": local, "masks": masks}

    def draw_mask(self) -> torch.Tensor:
        """One crop's (grid, grid) bool mask at a freshly drawn ratio."""
        ratio = draw_pred_ratio(self.pred_ratio, self.pred_ratio_var)
        return block_mask(self.grid, self.grid, ratio, aspect=self.aspect)


def _as_ratio(x):
    return float(x) if isinstance(x, (int, float)) else [float(v) for v in x]


def multicrop_collate(items) -> dict:
    """[(crops dict, label, bad_paths)] (``ImageDataset`` items) -> {'global': [(N,3,S,S)]
    * G, 'local': [(N,3,s,s)] * n, 'masks': [(N,S/p,S/p) bool] * G, 'label': (N,),
    'bad': [paths]}: crop i of every image stacked (``datasets.collate`` does it)."""
    return collate(items)
