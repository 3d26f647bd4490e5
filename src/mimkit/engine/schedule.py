"""Learning-rate schedules, evaluated per iteration."""

from __future__ import annotations

import math


def effective_lr(blr: float, lr: float | None, effective_batch: int) -> float:
    """lr = blr * effective batch / 256 (MAE's linear scaling rule) unless lr is given."""
    return lr if lr is not None else blr * effective_batch / 256


def warmup_cosine(
    epoch: float, base_lr: float, min_lr: float, warmup: float, epochs: float
) -> float:
    """Linear warmup to ``base_lr`` then half-cosine to ``min_lr``, for a fractional epoch
    (MAE's ``adjust_learning_rate``: ``epoch = step / steps_per_epoch + epoch``)."""
    if epoch < warmup:
        return base_lr * epoch / warmup
    span = max(epochs - warmup, 1e-12)
    progress = min((epoch - warmup) / span, 1.0)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
