"""What every batch format shares: a batch's images, whatever else it holds."""

from __future__ import annotations

import torch


def batch_images(batch) -> torch.Tensor:
    """The (N, 3, H, W) images of a batch: ``batch['image']``, else its first entry (a
    multi-crop batch's ``'global'`` list of crops gives the first crop), or a tuple's
    first element."""
    if isinstance(batch, dict):
        x = batch["image"] if "image" in batch else next(iter(batch.values()))
    else:
        x = batch[0]
    while isinstance(x, (list, tuple)):
        x = x[0]
    return x
