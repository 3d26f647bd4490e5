"""Shared drawing pieces for the backbone pictures (attention, feature maps, neighbours).

- ``load_images(sources, img_size, ...)``: files or PIL images -> the model's input batch
  ``(N, 3, S, S)`` (normalised, as the evaluation transform) and the same crops for display
  ``(N, 3, S, S)`` in [0, 1], so every picture shows exactly what the model saw.
- ``heat_overlay(image, heat)``: a [0, 1] map coloured and blended over an image.
- ``compose_grid(tiles, ...)``: a titled grid of equally sized tiles as one PIL image,
  with optional captions under tiles and coloured frames (neighbours' right/wrong class).

Drawn with PIL (matplotlib only for its colour maps): a grid of many small tiles is a
paste per tile, and the result is the PIL image the callers return.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from ..data.images import open_rgb
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform

ImageLike = str | Path | Image.Image
Color = tuple[int, int, int]

GREEN: Color = (0, 150, 60)
RED: Color = (200, 30, 30)


def open_image(src: ImageLike) -> Image.Image:
    """A path (any format ``open_rgb`` reads) or a PIL image -> an RGB PIL image."""
    return src.convert("RGB") if isinstance(src, Image.Image) else open_rgb(src)


def load_images(
    sources: Sequence[ImageLike],
    img_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    crop_pct: float = 224 / 256,
    interpolation: str = "bicubic",
) -> tuple[torch.Tensor, torch.Tensor]:
    """sources -> (batch (N, 3, S, S) normalised for the model, display (N, 3, S, S) in [0, 1]).

    The arguments are those of ``data.eval_transform`` (``models.registry.preprocessing``
    gives them for a model)."""
    transform = eval_transform(img_size, crop_pct, mean, std, interpolation)
    batch = torch.stack([transform(open_image(s)) for s in sources])
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return batch, (batch * s + m).clamp(0, 1)


def display_from_batch(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) of any range -> (N, 3, H, W) in [0, 1], each image min-max scaled
    (a stand-in when the caller has no display images)."""
    x = images.detach().float().cpu()
    lo = x.flatten(1).amin(1).view(-1, 1, 1, 1)
    hi = x.flatten(1).amax(1).view(-1, 1, 1, 1)
    return (x - lo) / (hi - lo).clamp(min=1e-12)


def to_hwc(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """(3, H, W) tensor or (H, W, 3) array in [0, 1] -> (H, W, 3) float32 array."""
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().permute(1, 2, 0).numpy()
    return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)


def upsample(maps: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """maps: (N, C, h, w) -> (N, C, H, W); ``nearest`` keeps patch edges (cluster ids)."""
    kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(maps.float(), size=size, mode=mode, **kw)


def colormap(values: np.ndarray, name: str = "inferno") -> np.ndarray:
    """(...,) in [0, 1] -> (..., 3) RGB float in [0, 1]."""
    from matplotlib import colormaps

    return colormaps[name](np.clip(values, 0.0, 1.0))[..., :3].astype(np.float32)


def heat_overlay(
    image: np.ndarray, heat: np.ndarray, cmap: str = "inferno", alpha: float = 0.6
) -> np.ndarray:
    """image (H, W, 3), heat (H, W), both in [0, 1] -> blended (H, W, 3)."""
    return (1 - alpha) * image + alpha * colormap(heat, cmap)


def _font(size: int) -> ImageFont.ImageFont:
    try:  # Pillow >= 10.1 ships a scalable default font
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _tile_image(array: np.ndarray, tile: int, nearest: bool) -> Image.Image:
    img = Image.fromarray((to_hwc(array) * 255).round().astype(np.uint8))
    # small inputs (32 px CIFAR) are enlarged without blur, so patches stay visible
    resample = Image.NEAREST if nearest else Image.BICUBIC
    return img.resize((tile, tile), resample)


def compose_grid(
    tiles: Sequence[Sequence[np.ndarray | torch.Tensor]],
    col_titles: Sequence[str] = (),
    row_titles: Sequence[str] = (),
    captions: Sequence[Sequence[str]] | None = None,
    frames: Sequence[Sequence[Color | None]] | None = None,
    tile: int = 128,
    pad: int = 4,
) -> Image.Image:
    """tiles[r][c]: (H, W, 3) arrays or (3, H, W) tensors in [0, 1] -> one RGB image.

    ``col_titles`` go above the columns, ``row_titles`` left of the rows, ``captions[r][c]``
    under each tile (one or two short lines), ``frames[r][c]`` a 3 px coloured frame."""
    rows, cols = len(tiles), max(len(r) for r in tiles)
    font = _font(max(10, tile // 10))
    line = font.getbbox("Ag")[3] + 2
    top = line + pad if col_titles else pad
    left = max((int(font.getlength(t)) for t in row_titles), default=0)
    left = left + 2 * pad if row_titles else pad
    cap = 2 * line if captions else 0
    cell_w, cell_h = tile + pad, tile + cap + pad
    canvas = Image.new("RGB", (left + cols * cell_w, top + rows * cell_h), "white")
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(col_titles):
        draw.text((left + c * cell_w, pad // 2), title, fill="black", font=font)
    for r, row in enumerate(tiles):
        y = top + r * cell_h
        if r < len(row_titles):
            draw.text((pad, y + tile // 2 - line // 2), row_titles[r], fill="black", font=font)
        for c, array in enumerate(row):
            x = left + c * cell_w
            nearest = min(np.asarray(to_hwc(array)).shape[:2]) < tile
            canvas.paste(_tile_image(array, tile, nearest), (x, y))
            color = frames[r][c] if frames and c < len(frames[r]) else None
            if color is not None:
                draw.rectangle((x, y, x + tile - 1, y + tile - 1), outline=color, width=3)
            text = captions[r][c] if captions and c < len(captions[r]) else ""
            if text:
                draw.multiline_text(
                    (x, y + tile + 1), text, fill=color or "black", font=font, spacing=1
                )
    return canvas
