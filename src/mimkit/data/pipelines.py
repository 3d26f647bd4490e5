"""The pretraining data paths, one factory:

- ``files``: CPU workers decode image files (PIL) and augment (transforms v2);
- ``tensor_cache``: decoded once into a uint8 tensor cache, held on the device,
  augmented there in batches (small datasets: CIFAR, low-resolution ImageNet);
- ``gpu_jpeg``: workers read bytes, the device decodes the batch (nvJPEG) and augments;
- ``shards``: WebDataset-style tar shards streamed by CPU workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..utils import distributed as dist
from ..utils.cache import cache_root
from .datasets import ImageDataset, collate
from .jpeg import DeviceJpegLoader
from .loader import EpochSampler, build_loader
from .shards import ShardDataset, ShardLoader, read_index
from .sources import ImageSource, open_source
from .tensor_cache import TensorCacheLoader, load_tensor_cache
from .transforms import pretrain_transform


@dataclass
class PretrainData:
    pipeline: str
    num_images: int
    source: ImageSource | None = None
    shard_dir: Path | None = None


def open_pretrain_data(pipeline: str, path: str | None, file_list: str | None) -> PretrainData:
    """Check the data exists and count it, before any model is built."""
    if pipeline == "shards":
        if not path:
            raise UserError("no data given: pass --data SHARD_FOLDER (with shards.json)")
        _, counts = read_index(path)
        return PretrainData(pipeline, sum(counts), shard_dir=Path(path))
    source = open_source(path, file_list)
    return PretrainData(pipeline, len(source), source=source)


def build_pretrain_loader(
    data: PretrainData,
    img_size: int,
    batch_size: int,
    num_workers: int,
    scale: tuple[float, float],
    hflip: bool,
    seed: int,
    device: torch.device,
    cache_dir: str | None = None,
    cache_size: int | None = None,
    transform=None,
    collate_fn=None,
):
    """``transform`` / ``collate_fn`` replace the single-crop augmentation and batching of
    the CPU pipelines (files, shards), e.g. iBOT's multi-crop views."""
    rank, world = dist.rank(), dist.world_size()
    pin = device.type == "cuda"
    transform = transform or pretrain_transform(img_size, scale[0], hflip)
    collate_fn = collate_fn or collate
    if data.pipeline == "shards":
        ds = ShardDataset(data.shard_dir, transform, seed, rank, world)
        return ShardLoader(ds, batch_size, num_workers, pin, collate_fn)
    sampler = EpochSampler(data.num_images, shuffle=True, seed=seed, rank=rank, world=world)
    if data.pipeline == "files":
        # large images are decoded at a reduced scale, still 4x the crop's output size
        ds = ImageDataset(data.source, transform, max_side=4 * img_size)
        return build_loader(ds, batch_size, sampler, num_workers, True, pin, collate_fn)
    if data.pipeline == "gpu_jpeg":
        return DeviceJpegLoader(
            data.source, batch_size, sampler, num_workers, device, img_size, scale, hflip
        )
    cache = load_tensor_cache(
        data.source, cache_size or img_size, cache_dir or cache_root() / "tensors", num_workers
    )
    # the cache may hold fewer images (unreadable ones left out): sample what it holds
    sampler = EpochSampler(len(cache["images"]), shuffle=True, seed=seed, rank=rank, world=world)
    return TensorCacheLoader(
        cache["images"], cache["labels"], batch_size, sampler, device, img_size, scale, hflip
    )
