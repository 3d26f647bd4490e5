"""Inference, evaluation and prediction as mmsegmentation's test mode.

An image is resized to the test scale (short side 512 unless the long side would pass
2048, aspect kept), normalised, cut into crop x crop windows every ``stride`` pixels (the
last window of a row/column flush with the edge), each window's logits added into the
image's frame and divided by the number of windows covering each pixel, then resized
bilinearly to the image's original size and soft-maxed. Multi-scale + flip averages those
probabilities over ``ratios`` of the scale and the mirrored image, as mmseg's ``aug_test``.
Windows of one image are batched (``window_batch``); the loop runs on every rank over its
share of the images and the confusion matrix is summed once at the end.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..engine import precision as precision_lib
from ..utils.distributed import unwrap
from .heads import resize
from .metrics import ConfusionMatrix
from .transforms import MEAN, STD, normalize, rescale_size

log = logging.getLogger("mimkit")


def window_boxes(
    h: int, w: int, crop: Sequence[int], stride: Sequence[int]
) -> list[tuple[int, int, int, int]]:
    """mmseg's ``slide_inference`` grid: (y1, y2, x1, x2) windows of at most ``crop`` that
    cover an h x w image, every ``stride``, the last ones moved back to end at the edge."""
    (ch, cw), (sh, sw) = crop, stride
    rows = max(h - ch + sh - 1, 0) // sh + 1
    cols = max(w - cw + sw - 1, 0) // sw + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, h), min(c * sw + cw, w)
            boxes.append((max(y2 - ch, 0), y2, max(x2 - cw, 0), x2))
    return boxes


@torch.no_grad()
def slide_logits(
    model,
    img: torch.Tensor,
    crop: Sequence[int],
    stride: Sequence[int],
    window_batch: int = 8,
) -> torch.Tensor:
    """img: (1, 3, H, W) normalised -> logits (1, K, H, W), the windows' logits averaged
    where they overlap."""
    _, _, h, w = img.shape
    boxes = window_boxes(h, w, crop, stride)
    preds, count = None, img.new_zeros(1, 1, h, w)
    for start in range(0, len(boxes), window_batch):
        chunk = boxes[start : start + window_batch]
        crops = torch.cat([img[..., y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])
        out = model(crops).float()
        if preds is None:
            preds = img.new_zeros(1, out.shape[1], h, w, dtype=torch.float32)
        for k, (y1, y2, x1, x2) in enumerate(chunk):
            preds[..., y1:y2, x1:x2] += out[k]
            count[..., y1:y2, x1:x2] += 1
    return preds / count


@torch.no_grad()
def predict_probs(
    model,
    img: torch.Tensor,
    scale: Sequence[int] = (2048, 512),
    crop: Sequence[int] | None = (512, 512),
    stride: Sequence[int] = (341, 341),
    ratios: Sequence[float] = (1.0,),
    flip: bool = False,
    mean: Sequence[float] = MEAN,
    std: Sequence[float] = STD,
    precision: str = "fp32",
    window_batch: int = 8,
) -> torch.Tensor:
    """img: (3, H, W) uint8 on the model's device -> class probabilities (K, H, W) at the
    original size. ``crop=None`` runs the whole resized image at once ('whole' mode).
    The model should be in eval mode (``evaluate`` and ``predict_files`` see to it)."""
    h, w = img.shape[-2:]
    x = normalize(img, mean, std)[None]
    total = None
    for ratio in ratios:
        size = rescale_size(h, w, (int(scale[0] * ratio), int(scale[1] * ratio)))
        scaled = resize(x, size)  # bilinear on normalised values: resize and affine commute
        for flipped in (False, True) if flip else (False,):
            inp = scaled.flip(-1) if flipped else scaled
            with precision_lib.autocast(precision, img.device):
                if crop is None:
                    logits = model(inp).float()
                else:
                    logits = slide_logits(model, inp, crop, stride, window_batch)
            logits = logits.flip(-1) if flipped else logits
            probs = resize(logits, (h, w)).softmax(1)[0]
            total = probs if total is None else total + probs
    return total / (len(ratios) * (2 if flip else 1))


@torch.no_grad()
def evaluate(
    model,
    loader,
    num_classes: int,
    device: torch.device,
    classes: Sequence[str] | None = None,
    ignore_index: int = 255,
    scale: Sequence[int] = (2048, 512),
    crop: Sequence[int] | None = (512, 512),
    stride: Sequence[int] = (341, 341),
    ratios: Sequence[float] = (1.0,),
    flip: bool = False,
    mean: Sequence[float] = MEAN,
    std: Sequence[float] = STD,
    precision: str = "fp32",
) -> dict:
    """mIoU, mAcc, aAcc and per-class scores (``metrics.scores``) of ``model`` on this
    rank's share of ``loader`` (``EvalDataset`` + ``eval_collate``), summed over ranks.
    A collective: every rank calls it."""
    meter = ConfusionMatrix(num_classes, ignore_index, device=device)
    with _eval_mode(model) as net:
        for batch in loader:
            for img, label in zip(batch["image"], batch["label"]):
                probs = predict_probs(
                    net, img.to(device), scale, crop, stride, ratios, flip, mean, std, precision
                )
                meter.update(probs.argmax(0), label.to(device))
    return meter.compute(classes)


@contextlib.contextmanager
def _eval_mode(model):
    """The plain module (no DDP: windows are this rank's own work) in eval mode, its
    previous mode restored afterwards."""
    net = unwrap(model)
    was_training = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was_training)


class SegmentTask:
    """Segmentation on the one training loop: the model's loss dict per batch
    ({'image': (N, 3, h, w), 'label': (N, h, w)}), mIoU on ``val_loader`` after epochs."""

    def __init__(
        self,
        val_loader,
        num_classes: int,
        device: torch.device,
        classes: Sequence[str] | None = None,
        ignore_index: int = 255,
        scale: Sequence[int] = (2048, 512),
        crop: Sequence[int] | None = (512, 512),
        stride: Sequence[int] = (341, 341),
        precision: str = "fp32",
    ):
        self.val_loader, self.num_classes, self.device = val_loader, num_classes, device
        self.classes, self.ignore_index, self.precision = classes, ignore_index, precision
        self.scale, self.crop, self.stride = scale, crop, stride
        self.last_metrics: dict = {}

    def training_step(self, model, batch: dict) -> dict[str, torch.Tensor]:
        return model(batch["image"], batch["label"])

    def evaluate(self, model, epoch: int) -> dict[str, float]:
        if self.val_loader is None:
            return {}
        self.last_metrics = evaluate(
            model,
            self.val_loader,
            self.num_classes,
            self.device,
            self.classes,
            self.ignore_index,
            self.scale,
            self.crop,
            self.stride,
            precision=self.precision,
        )
        return {f"val/{k}": self.last_metrics[k] for k in ("mIoU", "mAcc", "aAcc")}


def predict_files(
    model,
    paths: Sequence[str | Path],
    out_dir: str | Path,
    device: torch.device,
    palette: np.ndarray,
    classes: Sequence[str] | None = None,
    overlays: bool = True,
    **inference,
) -> list[Path]:
    """Predict each image file: ``<out_dir>/<stem>.png`` (a palette PNG whose pixel is the
    class id; 16-bit grey past 256 classes) and, with ``overlays``, ``<stem>_overlay.png``
    (the image beside its coloured prediction). ``inference``: ``predict_probs``'s
    keyword arguments (scale, crop, stride, ratios, flip, mean, std, precision)."""
    from ..data.images import read_rgb_tensor
    from .pictures import prediction_figure, save_mask

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [Path(p) for p in paths]
    written = []
    with _eval_mode(model) as net:
        for path, stem in zip(paths, _unique_stems(paths)):
            img = read_rgb_tensor(path)
            pred = predict_probs(net, img.to(device), **inference).argmax(0).cpu()
            written.append(save_mask(pred, out_dir / f"{stem}.png", palette))
            if overlays:
                picture = out_dir / f"{stem}_overlay.png"
                prediction_figure(img, pred, None, palette, picture, classes)
    return written


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    """File stems, made unique with their parent folders where two share one
    (a/0001.jpg, b/0001.jpg -> a_0001, b_0001), so no prediction overwrites another."""
    stems = [p.stem for p in paths]
    dup = {s for s in stems if stems.count(s) > 1}
    return ["_".join([*p.parent.parts[-2:], p.stem]) if p.stem in dup else p.stem for p in paths]
