"""Learning-rate schedules, evaluated per iteration."""

from __future__ import annotations

import math


def effective_lr(blr: float, lr: float | None, effective_batch: int) -> float:
    """lr = blr * effective batch / 256 (MAE's linear scaling rule) unless lr is given."""
    return lr if lr is not None else blr * effective_batch / 256


def one_cycle(epoch: float, lr_max: float, epochs: float) -> float:
    """ConvMixer's CIFAR schedule: linear 0 -> ``lr_max`` over the first 2/5 of training,
    down to ``lr_max / 20`` at 4/5, then to 0 (the reference interpolates the same points,
    at whole epochs: 10, 20, 25 for 25 epochs)."""
    points = (0.0, 0.4 * epochs, 0.8 * epochs, float(epochs))
    values = (0.0, lr_max, lr_max / 20, 0.0)
    epoch = min(max(epoch, 0.0), float(epochs))
    for (x0, x1), (y0, y1) in zip(zip(points, points[1:]), zip(values, values[1:])):
        if epoch <= x1:
            return y0 + (y1 - y0) * (epoch - x0) / max(x1 - x0, 1e-12)
    return 0.0


def lr_at(schedule: str, epoch: float, base_lr: float, min_lr: float, warmup: float, epochs):
    """The lr of ``schedule`` ('cosine': warmup + half-cosine; 'onecycle') at a fractional epoch."""
    if schedule == "onecycle":
        return one_cycle(epoch, base_lr, epochs)
    return warmup_cosine(epoch, base_lr, min_lr, warmup, epochs)


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
