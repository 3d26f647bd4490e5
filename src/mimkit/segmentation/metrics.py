"""mIoU, mAcc, aAcc and per-class IoU / accuracy from one confusion matrix over the whole
set, as mmsegmentation's ``IoUMetric`` / ``eval_metrics``.

The matrix is accumulated image by image (pixels whose label is ``ignore_index`` are left
out) and, when a process group is initialised, summed over ranks once at the end, so the
scores equal those of one process on the union of the data. Per class:
IoU = TP / (TP + FP + FN), Acc = TP / (TP + FN); a class with no pixel in either the labels
or the predictions has IoU NaN, one absent from the labels has Acc NaN, and the means skip
NaN (``nanmean``), as mmsegmentation does. aAcc = all TP / all labelled pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..utils import distributed as dist


class ConfusionMatrix:
    """(K, K) int64 counts, rows = ground truth, columns = prediction."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device=None):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """pred, label: (N, H, W) or (H, W) class ids of the same shape."""
        if pred.shape != label.shape:
            raise ValueError(
                f"prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ"
            )
        k = self.num_classes
        label = label.reshape(-1).to(self.matrix.device, torch.int64)
        pred = pred.reshape(-1).to(self.matrix.device, torch.int64)
        keep = label != self.ignore_index
        label, pred = label[keep], pred[keep]
        if label.numel() and (label.min() < 0 or label.max() >= k):
            bad = label[(label < 0) | (label >= k)][0].item()
            raise ValueError(f"label {bad} is neither a class id (0..{k - 1}) nor the ignore index")
        self.matrix += torch.bincount(label * k + pred, minlength=k * k).reshape(k, k)

    def reduced(self) -> torch.Tensor:
        """The matrix summed over every rank (a collective: all ranks call it), on the CPU."""
        return dist.all_reduce_sum(self.matrix.clone()).cpu()

    def compute(self, classes: Sequence[str] | None = None) -> dict:
        """All ranks' scores (a collective): see ``scores``."""
        return scores(self.reduced(), classes)


def scores(matrix: torch.Tensor, classes: Sequence[str] | None = None) -> dict:
    """(K, K) confusion (rows = truth) -> {'mIoU', 'mAcc', 'aAcc'} in %, per-class 'IoU' and
    'Acc' lists in % (NaN where undefined), 'classes' and 'num_pixels'."""
    m = matrix.to(torch.float64)
    tp = m.diag()
    area_label, area_pred = m.sum(1), m.sum(0)
    union = area_label + area_pred - tp
    iou = tp / union  # 0/0 -> NaN: the class is in neither
    acc = tp / area_label
    total = area_label.sum()
    k = matrix.shape[0]
    return {
        "mIoU": _pct(iou.nanmean()),
        "mAcc": _pct(acc.nanmean()),
        "aAcc": _pct(tp.sum() / total) if total > 0 else float("nan"),
        "IoU": [_pct(v) for v in iou],
        "Acc": [_pct(v) for v in acc],
        "classes": list(classes) if classes is not None else [str(i) for i in range(k)],
        "num_pixels": int(total),
    }


def _pct(v: torch.Tensor) -> float:
    return float(v) * 100.0
