"""mmsegmentation's ADE20K pipeline, step by step, on (image, label) tensors.

Training: random resize (ratio 0.5-2.0 of a (2048, 512) scale, aspect kept) -> random
crop (512 x 512, re-drawn up to 10 times while one class covers 75% or more of the
labelled pixels) -> horizontal flip (p 0.5) -> photometric distortion -> normalise ->
pad to the crop size (image 0, label 255). Evaluation resizes to the scale (short side
512 unless the long side would pass 2048), aspect kept; the label stays at its size.

Images are (3, H, W) uint8 RGB until normalised; labels (H, W) int64. The random draws
are mmsegmentation's, in its order, from NumPy's global generator, which
``utils.rng.seeded`` seeds per sample (``SegmentationDataset``), so an image's
augmentation depends on (seed, epoch, index) only.

Differences from mmsegmentation (which resizes with OpenCV): bilinear resizing is
``torch.nn.functional.interpolate`` (half-pixel centres, no antialiasing, as
``cv2.INTER_LINEAR``) rounded to uint8; nearest label resizing picks
``floor(i * in / out)`` as ``cv2.INTER_NEAREST``; the HSV round trip of the saturation
and hue steps follows OpenCV's 8-bit conversion (H in 0..179) in float32, within one
level of OpenCV's fixed-point arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

# mmseg's img_norm_cfg (ImageNet mean / std in 0..255), RGB
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


def rescale_size(h: int, w: int, scale: Sequence[int]) -> tuple[int, int]:
    """mmcv's ``rescale_size``: the largest (h', w') with the same aspect ratio whose long
    side is at most max(scale) and short side at most min(scale)."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def resize_image(img: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(3, H, W) uint8 -> (3, h, w) uint8, bilinear."""
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    x = F.interpolate(img[None].float(), size=tuple(size), mode="bilinear", align_corners=False)
    return x[0].round_().clamp_(0, 255).to(torch.uint8)


def resize_label(label: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(H, W) -> (h, w), nearest (source index floor(i * H / h), OpenCV's rule)."""
    h, w = label.shape
    if (h, w) == tuple(size):
        return label
    ys = (torch.arange(size[0], dtype=torch.float64) * (h / size[0])).long().clamp_(max=h - 1)
    xs = (torch.arange(size[1], dtype=torch.float64) * (w / size[1])).long().clamp_(max=w - 1)
    return label[ys][:, xs]


def random_resize(
    img: torch.Tensor, label: torch.Tensor, scale: Sequence[int], ratio_range: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """mmseg ``Resize(img_scale=scale, ratio_range=...)``: scale x uniform ratio, aspect kept."""
    lo, hi = ratio_range
    ratio = np.random.random_sample() * (hi - lo) + lo
    target = (int(scale[0] * ratio), int(scale[1] * ratio))
    size = rescale_size(*img.shape[-2:], target)
    return resize_image(img, size), resize_label(label, size)


def _crop_box(h: int, w: int, crop: Sequence[int]) -> tuple[int, int, int, int]:
    y = np.random.randint(0, max(h - crop[0], 0) + 1)
    x = np.random.randint(0, max(w - crop[1], 0) + 1)
    return y, y + crop[0], x, x + crop[1]


def random_crop(
    img: torch.Tensor,
    label: torch.Tensor,
    crop: Sequence[int],
    cat_max_ratio: float = 0.75,
    ignore_index: int = 255,
) -> tuple[torch.Tensor, torch.Tensor]:
    """mmseg ``RandomCrop``: a crop of at most ``crop`` (h, w); with ``cat_max_ratio`` < 1 a
    crop where one class holds that share or more of the labelled pixels (or only one
    class is present) is re-drawn, up to 10 times, after which the last draw is kept."""
    h, w = label.shape
    y1, y2, x1, x2 = _crop_box(h, w, crop)
    if cat_max_ratio < 1.0:
        for _ in range(10):
            part = label[y1:y2, x1:x2]
            _, counts = torch.unique(part[part != ignore_index], return_counts=True)
            if len(counts) > 1 and counts.max().item() / counts.sum().item() < cat_max_ratio:
                break
            y1, y2, x1, x2 = _crop_box(h, w, crop)
    return img[:, y1:y2, x1:x2], label[y1:y2, x1:x2]


def random_flip(
    img: torch.Tensor, label: torch.Tensor, prob: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    if np.random.rand() < prob:
        return img.flip(-1), label.flip(-1)
    return img, label


def _convert(x: torch.Tensor, alpha: float = 1.0, beta: float = 0.0) -> torch.Tensor:
    """mmseg's ``convert``: x * alpha + beta in float32, clipped to 0..255, truncated."""
    return (x.float() * alpha + beta).clamp_(0, 255).to(torch.uint8)


def rgb_to_hsv(img: torch.Tensor) -> torch.Tensor:
    """(3, H, W) uint8 RGB -> (3, H, W) uint8 HSV as OpenCV's 8-bit conversion: H in 0..179
    (degrees / 2), S and V in 0..255, each rounded."""
    rgb = img.float()
    r, g, b = rgb
    v, _ = rgb.max(0)
    diff = v - rgb.min(0).values
    s = torch.where(v > 0, diff * 255.0 / v.clamp(min=1), torch.zeros_like(v))
    d = diff.clamp(min=1)
    h = torch.where(
        v == r,
        (g - b) * 30.0 / d,
        torch.where(v == g, 60.0 + (b - r) * 30.0 / d, 120.0 + (r - g) * 30.0 / d),
    )
    h = torch.where(diff > 0, torch.floor(h + 0.5), torch.zeros_like(h))
    h = torch.where(h < 0, h + 180.0, h)
    return torch.stack([h, torch.floor(s + 0.5), v]).to(torch.uint8)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of ``rgb_to_hsv`` (OpenCV's HSV2RGB for 8-bit: float maths, rounded)."""
    h, s, v = hsv.float()
    h = h * (6.0 / 180.0)
    s, v = s / 255.0, v / 255.0
    sector = torch.floor(h)
    f = h - sector
    sector = sector.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    # (r, g, b) per sector, OpenCV's table
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = torch.zeros(3, *h.shape)
    for k, channels in enumerate(table):
        out = torch.where(sector == k, torch.stack(channels), out)
    return (out * 255.0).round_().clamp_(0, 255).to(torch.uint8)


def photometric_distortion(
    img: torch.Tensor,
    brightness_delta: int = 32,
    contrast_range: Sequence[float] = (0.5, 1.5),
    saturation_range: Sequence[float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> torch.Tensor:
    """mmseg ``PhotoMetricDistortion`` on (3, H, W) uint8: each step with probability 0.5,
    brightness (+ uniform delta), then contrast (x uniform factor) either first or last,
    saturation (S x factor) and hue (H + randint shift, mod 180) in between."""
    if np.random.randint(2):
        img = _convert(img, beta=np.random.uniform(-brightness_delta, brightness_delta))
    contrast_first = np.random.randint(2) == 1
    if contrast_first:
        img = _contrast(img, contrast_range)
    if np.random.randint(2):
        hsv = rgb_to_hsv(img)
        hsv[1] = _convert(hsv[1], alpha=np.random.uniform(*saturation_range))
        img = hsv_to_rgb(hsv)
    if np.random.randint(2):
        hsv = rgb_to_hsv(img)
        shift = np.random.randint(-hue_delta, hue_delta)
        hsv[0] = ((hsv[0].long() + shift) % 180).to(torch.uint8)
        img = hsv_to_rgb(hsv)
    if not contrast_first:
        img = _contrast(img, contrast_range)
    return img


def _contrast(img: torch.Tensor, contrast_range: Sequence[float]) -> torch.Tensor:
    if np.random.randint(2):
        return _convert(img, alpha=np.random.uniform(*contrast_range))
    return img


def normalize(img: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    """(3, H, W) uint8 -> float32 (img - mean) / std, mean/std in 0..255 units."""
    m = torch.tensor(mean, dtype=torch.float32, device=img.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=img.device).view(3, 1, 1)
    return (img.float() - m) / s


def pad_to(
    img: torch.Tensor, label: torch.Tensor, size: Sequence[int], ignore_index: int = 255
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad bottom/right to at least ``size`` (h, w): image with 0, label with ``ignore_index``."""
    ph, pw = max(size[0] - img.shape[-2], 0), max(size[1] - img.shape[-1], 0)
    if not (ph or pw):
        return img, label
    return F.pad(img, (0, pw, 0, ph), value=0.0), F.pad(label, (0, pw, 0, ph), value=ignore_index)


class TrainTransform:
    """(image (3, H, W) uint8, label (H, W) int64) -> (image (3, h, w) float32 normalised,
    label (h, w) int64), (h, w) = ``crop``; mmseg's ADE20K training pipeline."""

    def __init__(
        self,
        crop: Sequence[int] = (512, 512),
        scale: Sequence[int] = (2048, 512),
        ratio_range: Sequence[float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        flip_prob: float = 0.5,
        photometric: bool = True,
        mean: Sequence[float] = MEAN,
        std: Sequence[float] = STD,
        ignore_index: int = 255,
    ):
        self.crop, self.scale, self.ratio_range = tuple(crop), tuple(scale), tuple(ratio_range)
        self.cat_max_ratio, self.flip_prob, self.photometric = cat_max_ratio, flip_prob, photometric
        self.mean, self.std, self.ignore_index = tuple(mean), tuple(std), ignore_index

    def __call__(self, img: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img, label = random_resize(img, label, self.scale, self.ratio_range)
        img, label = random_crop(img, label, self.crop, self.cat_max_ratio, self.ignore_index)
        img, label = random_flip(img, label, self.flip_prob)
        if self.photometric:
            img = photometric_distortion(img)
        img = normalize(img, self.mean, self.std)
        return pad_to(img, label, self.crop, self.ignore_index)
