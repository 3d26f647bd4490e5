"""Map-style dataset over an ImageSource with per-sample seeded augmentation.

Each item is addressed as ``(index, seed)`` (see ``EpochSampler``): the transform runs
under ``torch.manual_seed(seed)``, so an image's augmentation depends only on
(run seed, epoch, index), not on worker count, worker RNG or resume. That is what
makes ``--resume`` exact.

Unreadable images are skipped: the next readable one takes the slot (batch shapes stay
fixed, which DDP needs) and the bad path travels with the batch to be counted.
"""

from __future__ import annotations

import contextlib
import random
import warnings

import numpy as np
import torch
from PIL import Image

from .sources import ImageSource


def load_rgb(path: str) -> Image.Image:
    """Open and fully decode an image as RGB (grayscale, palette, RGBA, CMYK included)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. palette-with-transparency notices
        with Image.open(path) as img:
            img.load()
            if img.mode == "RGBA" or (img.mode == "P" and "transparency" in img.info):
                img = img.convert("RGBA")
                bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
                return Image.alpha_composite(bg, img).convert("RGB")
            return img.convert("RGB")


class ImageDataset(torch.utils.data.Dataset):
    def __init__(self, source: ImageSource, transform, max_skip: int = 64):
        self.source = source
        self.transform = transform
        self.max_skip = max_skip

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        bad = []
        for step in range(self.max_skip):
            j = (index + step) % len(self.source)
            try:
                img = load_rgb(self.source.paths[j])
                break
            except Exception:  # any decode failure: PIL raises many types
                bad.append(self.source.paths[j])
        else:
            raise RuntimeError(
                f"{self.max_skip} unreadable images in a row near {self.source.paths[index]}: "
                "is this really an image folder?"
            )
        label = self.source.labels[j] if self.source.labels is not None else -1
        if seed is None:
            return self.transform(img), label, bad
        with seeded(seed):
            return self.transform(img), label, bad


@contextlib.contextmanager
def seeded(seed: int):
    """Seed torch, ``random`` and NumPy (timm's RandAugment draws from all three) for the
    block, then restore the previous states."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def collate(items):
    """[(image, label, bad_paths)] -> {'image': (N,3,H,W), 'label': (N,), 'bad': [paths]}"""
    images, labels, bad = zip(*items)
    return {
        "image": torch.stack(images),
        "label": torch.tensor(labels, dtype=torch.long),
        "bad": [p for paths in bad for p in paths],
    }
