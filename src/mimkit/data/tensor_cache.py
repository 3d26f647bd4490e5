"""Small datasets held on the device: decode once into a uint8 tensor cache on disk,
keep it in (GPU) memory and augment whole batches there, so no CPU worker limits
throughput (CIFAR-10: 50,000 x 3 x 32 x 32 bytes = 154 MB)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T
from tqdm import tqdm

from ..errors import UserError
from ..utils import distributed as dist
from ..utils.cache import files_fingerprint
from ..utils.io import atomic_save
from .datasets import load_rgb
from .device_aug import augment_batch
from .images import failure_reason
from .loader import EpochSampler, sample_seed
from .sources import ImageSource

log = logging.getLogger("mimkit")


class _Decode(torch.utils.data.Dataset):
    def __init__(self, source: ImageSource, size: int):
        self.source, self.size = source, size
        self.resize = T.Compose(
            [
                T.Resize(size, interpolation=InterpolationMode.BICUBIC),
                T.CenterCrop(size),
                T.PILToTensor(),
            ]
        )

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i):
        try:  # max_side: a large JPEG decodes at a reduced DCT scale, no bigger than needed
            return self.resize(load_rgb(self.source.paths[i], max_side=self.size)), i
        except Exception as e:  # left out by the caller, with the reason
            return failure_reason(e), i


def _collate(items):
    return items


def tensor_cache_path(cache_dir: str | Path, source: ImageSource, size: int) -> Path:
    """The cache file for (source, size), named by content: every image's path, size and
    mtime_ns and the labels (see ``utils.cache``), so an edited image is decoded again."""
    h = hashlib.sha256(f"{size}\0".encode())
    h.update(files_fingerprint(source.paths).encode())
    h.update(json.dumps(source.labels).encode())
    return Path(cache_dir) / f"images-{len(source)}-{size}px-{h.hexdigest()[:16]}.pt"


def build_tensor_cache(
    source: ImageSource, size: int, path: str | Path, num_workers: int = 4
) -> dict:
    """Decode every image (short side resized to ``size``, centre crop) into uint8
    (N, 3, size, size); unreadable images are left out and listed under 'bad'."""
    workers = min(num_workers, len(os.sched_getaffinity(0)))
    loader = torch.utils.data.DataLoader(
        _Decode(source, size), batch_size=256, num_workers=workers, collate_fn=_collate
    )
    images = torch.empty(len(source), 3, size, size, dtype=torch.uint8)
    keep = torch.zeros(len(source), dtype=torch.bool)
    reasons: dict[int, str] = {}
    for batch in tqdm(loader, desc="decoding into tensor cache", disable=None, leave=False):
        for x, i in batch:
            if isinstance(x, str):
                reasons[i] = x
            else:
                images[i], keep[i] = x, True
    labels = torch.tensor(source.labels if source.labels is not None else [-1] * len(source))
    bad = [f"{source.paths[i]} ({why})" for i, why in sorted(reasons.items())]
    cache = {
        "images": images[keep].contiguous(),
        "labels": labels[keep],
        "bad": bad,
        "size": size,
        "classes": source.classes,
    }
    atomic_save(cache, path)
    return cache


def load_tensor_cache(
    source: ImageSource, size: int, cache_dir: str | Path, num_workers: int = 4
) -> dict:
    """The cache for (source, size): built by rank 0 on first use, then read by all. A
    damaged file (a killed copy, a full disk) is named in a warning and built again."""
    path = tensor_cache_path(cache_dir, source, size)
    cache = None
    if dist.is_main():
        cache = _read(path) if path.is_file() else None
        if cache is None:
            log.info("building tensor cache %s (%d images at %d px)", path, len(source), size)
            cache = build_tensor_cache(source, size, path, num_workers)
    dist.barrier()
    if cache is None:  # the other ranks read what rank 0 checked or wrote
        try:
            cache = torch.load(path, weights_only=True)
        except Exception as e:
            raise UserError(
                f"tensor cache {path} cannot be read on rank {dist.rank()} after rank 0 wrote "
                f"it ({failure_reason(e)}): is the cache folder ($MIMKIT_CACHE) shared by "
                "every node?"
            ) from None
    if cache["bad"]:
        log.warning(
            "%d unreadable images left out of the cache (first: %s)",
            len(cache["bad"]),
            cache["bad"][0],
        )
    return cache


_KEYS = ("images", "labels", "bad", "size", "classes")


def _read(path: Path) -> dict | None:
    """The cache at ``path``, or None (with a warning naming it) when it cannot be read:
    torch's own error for a truncated file is a bare ``OSError`` with no file name."""
    try:
        cache = torch.load(path, weights_only=True)
        if not isinstance(cache, dict) or any(k not in cache for k in _KEYS):
            raise ValueError("not a tensor cache")
    except Exception as e:  # truncated zip, garbage, another file: rebuilt, never trusted
        log.warning("damaged tensor cache %s (%s): rebuilding it", path, failure_reason(e))
        return None
    return cache


class TensorCacheLoader:
    """Batches from a uint8 image tensor on ``device``, augmented on the device.

    Same interface the Trainer uses from a DataLoader (``len``, ``batch_size``,
    ``sampler.set_epoch``); batch b of epoch e is augmented with a generator seeded by
    (seed, e, b), so runs and resumes are exact.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        sampler: EpochSampler,
        device: torch.device,
        img_size: int,
        scale=(0.2, 1.0),
        hflip: bool = True,
        drop_last: bool = True,
        bad: list[str] = (),
    ):
        # images the cache left out ('path (reason)'): named with each epoch's first batch,
        # so a run counts them as the file pipeline does (skipped_images)
        self.bad = [tuple(b.rsplit(" (", 1)) if " (" in b else (b, "") for b in bad]
        self.bad = [(p, why.rstrip(")")) for p, why in self.bad]
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size, self.sampler, self.device = batch_size, sampler, device
        self.img_size, self.scale, self.hflip = img_size, tuple(scale), hflip
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        order = torch.tensor([i for i, _ in self.sampler], dtype=torch.long, device=self.device)
        first = self.sampler.start // self.batch_size  # a mid-epoch resume starts there
        for b in range(first, len(self)):
            k = b - first
            idx = order[k * self.batch_size : (k + 1) * self.batch_size]
            x = self.images.index_select(0, idx)
            g = torch.Generator(device=self.device)
            g.manual_seed(sample_seed(self.sampler.seed, self.sampler.epoch, b))
            x = augment_batch(x, self.img_size, self.scale, self.hflip, generator=g)
            bad = list(self.bad) if b == first else []
            yield {"image": x, "label": self.labels.index_select(0, idx), "bad": bad}
