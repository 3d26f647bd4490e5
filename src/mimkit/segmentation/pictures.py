"""Pictures of segmentations (matplotlib, Agg): a class palette, palette-PNG masks, the
image beside its ground truth and prediction overlays, and a per-class IoU bar plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def palette(num_classes: int) -> np.ndarray:
    """(K, 3) uint8 colours, distinct for every id below 256 and stable across runs: the
    PASCAL VOC colour map (the bits of the id spread over R, G and B), skipping black,
    which marks ignored pixels."""
    out = np.zeros((num_classes, 3), dtype=np.uint8)
    for k in range(num_classes):
        c, rgb = k + 1, [0, 0, 0]
        for shift in range(7, -1, -1):
            for ch in range(3):
                rgb[ch] |= ((c >> ch) & 1) << shift
            c >>= 3
        out[k] = rgb
    return out


def colorize(mask, colors: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8; ignored (and unknown) ids black."""
    m = _numpy(mask).astype(np.int64)
    out = np.zeros((*m.shape, 3), dtype=np.uint8)
    known = (m >= 0) & (m < len(colors)) & (m != ignore_index)
    out[known] = colors[m[known]]
    return out


def overlay(
    image, mask, colors: np.ndarray, alpha: float = 0.5, ignore_index: int = 255
) -> np.ndarray:
    """image (3, H, W) or (H, W, 3) uint8 blended with the mask's colours; ignored pixels
    keep the image."""
    img = _hwc(image).astype(np.float32)
    m = _numpy(mask)
    shown = (m != ignore_index)[..., None]
    mixed = (1 - alpha) * img + alpha * colorize(m, colors, ignore_index).astype(np.float32)
    return np.where(shown, mixed, img).round().astype(np.uint8)


def save_mask(mask, path: str | Path, colors: np.ndarray) -> Path:
    """(H, W) class ids -> a palette PNG (pixel = class id, shown in ``colors``), or a 16-bit
    grey PNG when an id passes 255."""
    m = _numpy(mask).astype(np.int64)
    path = Path(path)
    if m.size and m.max() > 255:
        Image.fromarray(m.astype(np.uint16)).save(path)
        return path
    im = Image.fromarray(m.astype(np.uint8), mode="P")
    pal = np.zeros((256, 3), dtype=np.uint8)
    pal[: min(len(colors), 256)] = colors[:256]
    im.putpalette(pal.flatten().tolist())
    im.save(path)
    return path


def prediction_figure(
    image,
    pred,
    label,
    colors: np.ndarray,
    path: str | Path,
    classes: Sequence[str] | None = None,
    ignore_index: int = 255,
    title: str = "",
) -> Path:
    """The image, its ground truth (when ``label`` is given) and the prediction overlaid in
    the class colours, side by side, with a legend of the classes shown; a PNG."""
    plt = _pyplot()
    panels = [("image", _hwc(image))]
    if label is not None:
        panels.append(("ground truth", overlay(image, label, colors, ignore_index=ignore_index)))
    panels.append(("prediction", overlay(image, pred, colors, ignore_index=ignore_index)))
    h, w = panels[0][1].shape[:2]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels) * w / max(h, w) + 1, 4.4))
    for ax, (name, pic) in zip(np.atleast_1d(axes), panels):
        ax.imshow(pic)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    _legend(fig, [pred] + ([label] if label is not None else []), colors, classes, ignore_index)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_class_iou(
    iou: Sequence[float], classes: Sequence[str], path: str | Path, title: str = "", top: int = 60
) -> Path:
    """Per-class IoU (%) as horizontal bars, best first (NaN classes left out; at most
    ``top`` classes, the rest summarised in the title); a PNG."""
    plt = _pyplot()
    pairs = sorted(((v, c) for v, c in zip(iou, classes) if v == v), reverse=True)
    left = len(pairs) - top
    pairs = pairs[:top]
    fig, ax = plt.subplots(figsize=(6, 1 + 0.22 * max(len(pairs), 1)))
    ax.barh(range(len(pairs)), [v for v, _ in pairs], color="tab:blue")
    ax.set_yticks(range(len(pairs)), [c for _, c in pairs], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("IoU (%)")
    mean = np.mean([v for v, _ in pairs]) if pairs else float("nan")
    note = f" ({left} more not shown)" if left > 0 else ""
    ax.set_title(f"{title}  mean of shown {mean:.1f}{note}".strip(), fontsize=9)
    return _save(fig, path)


def _legend(fig, masks, colors, classes, ignore_index) -> None:
    from matplotlib.patches import Patch

    ids = sorted({int(v) for m in masks for v in np.unique(_numpy(m)) if v != ignore_index})
    ids = [i for i in ids if 0 <= i < len(colors)][:20]
    names = classes if classes is not None else [str(i) for i in range(len(colors))]
    handles = [Patch(color=colors[i] / 255.0, label=names[i]) for i in ids]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _numpy(x) -> np.ndarray:
    return x.cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def _hwc(image) -> np.ndarray:
    a = _numpy(image)
    return np.ascontiguousarray(a.transpose(1, 2, 0)) if a.ndim == 3 and a.shape[0] == 3 else a
