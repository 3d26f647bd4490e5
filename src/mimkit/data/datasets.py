"""Map-style dataset over an ImageSource with per-sample seeded augmentation.

Each item is addressed as ``(index, seed)`` (see ``EpochSampler``): the transform runs
under ``torch.manual_seed(seed)``, so an image's augmentation depends only on
(run seed, epoch, index), not on worker count, worker RNG or resume. That is what
makes ``--resume`` exact.

Unreadable images are skipped: the next readable one takes the slot (batch shapes stay
fixed, which DDP needs) and ``(path, reason)`` travels with the batch to be counted.
"""

from __future__ import annotations

import torch
from PIL import Image

from ..errors import UserError
from ..utils.rng import seeded
from .images import failure_reason, open_rgb
from .sources import ImageSource


def load_rgb(path: str, max_side: int | None = None) -> Image.Image:
    """Open and fully decode an image file as RGB (see ``data.images.open_rgb``)."""
    return open_rgb(path, max_side)


class ImageDataset(torch.utils.data.Dataset):
    def __init__(
        self, source: ImageSource, transform, max_skip: int = 64, max_side: int | None = None
    ):
        self.source = source
        self.transform = transform
        self.max_skip = max_skip
        self.max_side = max_side  # decode large images reduced to about this size

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        bad = []
        for step in range(self.max_skip):
            j = (index + step) % len(self.source)
            try:
                img = open_rgb(self.source.read(j), self.max_side)
                break
            except Exception as e:  # any decode failure: PIL raises many types
                bad.append((self.source.paths[j], failure_reason(e)))
        else:
            path, reason = bad[0]
            raise UserError(
                f"{self.max_skip} unreadable images in a row from {path} ({reason}): "
                "is this really an image folder?"
            )
        label = self.source.labels[j] if self.source.labels is not None else -1
        if seed is None:
            return self.transform(img), label, bad
        with seeded(seed):
            return self.transform(img), label, bad


def collate(items):
    """[(image, label, bad)] -> {'image': (N,3,H,W), 'label': (N,), 'bad': [(path, reason)]}.

    A transform that returns a dict (a method's views: ``{'image', 'mask'}``, multi-crop
    ``{'global': [...], 'local': [...], 'masks': [...]}``) gives its keys, each tensor
    stacked over the batch and each list of tensors stacked entry by entry."""
    images, labels, bad = zip(*items)
    batch = _stack(images) if isinstance(images[0], dict) else {"image": torch.stack(images)}
    return {
        **batch,
        "label": torch.tensor(labels, dtype=torch.long),
        "bad": [p for paths in bad for p in paths],
    }


def _stack(views: tuple[dict, ...]) -> dict:
    out = {}
    for key, first in views[0].items():
        if isinstance(first, (list, tuple)):
            out[key] = [torch.stack(crops) for crops in zip(*(v[key] for v in views))]
        else:
            out[key] = torch.stack([v[key] for v in views])
    return out
