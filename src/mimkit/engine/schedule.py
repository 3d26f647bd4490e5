"""Learning-rate schedules, evaluated per iteration."""

from __future__ import annotations

import math


def effective_lr(
    blr: float, lr: float | None, effective_batch: int, reference_batch: int = 256
) -> float:
    """lr = blr * effective batch / reference batch (the linear scaling rule: 256 for MAE,
    512 for SimMIM) unless lr is given."""
    return lr if lr is not None else blr * effective_batch / reference_batch


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


def linspace_at(i: int, start: float, stop: float, num: int) -> float:
    """``np.linspace(start, stop, num)[i]`` with NumPy's arithmetic (``i * step + start``,
    the last entry exactly ``stop``; one entry is ``start``)."""
    if num == 1:
        return start
    if i == num - 1:
        return stop
    return i * ((stop - start) / (num - 1)) + start


def cosine_iter(
    step: int,
    base: float,
    final: float,
    total_steps: int,
    warmup_steps: int = 0,
    start: float = 0.0,
) -> float:
    """Entry ``step`` of DINO's / iBOT's ``cosine_scheduler`` array, computed alone.

    Warmup is ``np.linspace(start, base, warmup_steps)``: it *reaches* ``base`` at the last
    warmup step (MAE's fractional-epoch warmup reaches it one step later); then
    ``final + (base - final) / 2 * (1 + cos(pi * i / n))`` for i = 0..n-1 over the
    n = total - warmup remaining steps. Steps past the end keep the last value. The
    arithmetic follows NumPy's order, so values equal the official arrays.
    """
    step = min(max(step, 0), total_steps - 1)
    if step < warmup_steps:
        return linspace_at(step, start, base, warmup_steps)
    i, n = step - warmup_steps, total_steps - warmup_steps
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / n))


def cosine_iter_array(
    base: float, final: float, epochs: int, steps_per_epoch: int, warmup_epochs: float = 0
) -> list[float]:
    """The whole per-iteration array (DINO ``cosine_scheduler``), e.g. wd or EMA momentum."""
    total = epochs * steps_per_epoch
    warmup = warmup_steps(warmup_epochs, steps_per_epoch)
    return [cosine_iter(s, base, final, total, warmup) for s in range(total)]


def warmup_steps(warmup_epochs: float, steps_per_epoch: int) -> int:
    return int(round(warmup_epochs * steps_per_epoch))


def per_epoch_warmup(start: float, end: float, warmup_epochs: int, epochs: int) -> list[float]:
    """``concat(linspace(start, end, warmup_epochs), end)``: one value per epoch (iBOT's
    teacher temperatures, indexed by epoch)."""
    return [
        linspace_at(e, start, end, warmup_epochs) if e < warmup_epochs else end
        for e in range(epochs)
    ]
