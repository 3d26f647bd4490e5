"""The pretraining data paths, one factory:

- ``files``: CPU workers decode image files (PIL) and augment (transforms v2);
- ``tensor_cache``: decoded once into a uint8 tensor cache, held on the device,
  augmented there in batches (small datasets: CIFAR, low-resolution ImageNet);
- ``gpu_jpeg``: workers read bytes, the device decodes the batch (nvJPEG) and augments;
- ``shards``: WebDataset tar shards (a local folder, URL patterns, ``pipe:`` commands)
  streamed by CPU workers through the ``webdataset`` library.

``--data hf:DIR`` / ``hf:parquet:DIR`` (Hugging Face datasets) read rows of a memory-mapped
table through the ``files`` pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError
from ..utils import distributed as dist
from ..utils.cache import cache_root
from .datasets import ImageDataset, collate
from .jpeg import DeviceJpegLoader
from .loader import EpochSampler, build_loader, sample_seed
from .shards import ShardDataset, ShardLoader, ShardSet, open_shards
from .sources import ImageSource, open_source, scheme_for
from .tensor_cache import TensorCacheLoader, load_tensor_cache
from .transforms import pretrain_transform


@dataclass
class PretrainData:
    pipeline: str
    num_images: int
    source: ImageSource | None = None  # image files (None for shards and hf: tables)
    shards: ShardSet | None = None
    hf: ImageSource | None = None  # rows of a Hugging Face dataset (read through .read(i))


def open_pretrain_data(
    pipeline: str,
    path: str | None,
    file_list: str | None,
    num_samples: int | None = None,
    image_key: str | None = None,
    label_key: str | None = None,
) -> PretrainData:
    """Check the data exists and count it, before any model is built. Shards named by
    ``--data`` (a folder with shards.json, a URL pattern, ``pipe:``) select the shards
    pipeline under the default ``files``; ``num_samples`` (data.num_samples) counts shards
    without an index."""
    scheme = scheme_for(path) if not file_list else None
    if pipeline in ("files", "auto") and scheme is not None and scheme.kind == "shards":
        pipeline = "shards"
    if pipeline == "shards":
        if not path:
            raise UserError(
                "no data given: pass --data SHARDS (a folder with shards.json, a URL "
                "pattern such as /data/train-{000000..000099}.tar, or pipe:COMMAND)"
            )
        shards = open_shards(path, num_samples)
        return PretrainData(pipeline, shards.num_samples, shards=shards)
    if scheme is not None and scheme.kind == "table":
        pipeline = "files" if pipeline == "auto" else pipeline
        if pipeline != "files":
            raise UserError(
                f"--data {path} is read with data.pipeline=files (the {pipeline} pipeline "
                "reads image files)"
            )
        source = open_source(path, image_key=image_key, label_key=label_key)
        return PretrainData(pipeline, len(source), hf=source)
    source = open_source(path, file_list)
    return PretrainData(pipeline, len(source), source=source)


# The tensor cache holds every image decoded at the input size in memory: for small inputs
# (CIFAR-size) it takes the JPEG decode and per-image augmentation off the CPU cores the
# model needs (2-core CPU, CIFAR-10 MAE: see docs/PERFORMANCE.md), at a bounded cost.
AUTO_CACHE_MAX_SIZE = 64  # px
AUTO_CACHE_MAX_BYTES = 4 * 2**30


def resolve_pipeline(data: PretrainData, img_size: int, allowed: tuple[str, ...]) -> str:
    """``data.pipeline='auto'`` made concrete (``data.pipeline`` is set); returns why, for
    the run header."""
    if data.pipeline != "auto":
        return "set"
    need = data.num_images * 3 * img_size * img_size
    small = img_size <= AUTO_CACHE_MAX_SIZE and need <= AUTO_CACHE_MAX_BYTES
    if small and data.source is not None and "tensor_cache" in allowed:
        data.pipeline = "tensor_cache"
        return (
            f"auto: {data.num_images} images at {img_size} px fit in {need / 2**30:.2f} GiB: "
            "decoded once, augmented in batches on the device"
        )
    data.pipeline = "files"
    return "auto: image files decoded and augmented by the loader's workers"


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
    batch_extra=None,
):
    """``transform`` / ``collate_fn`` replace the single-crop augmentation and batching of
    the CPU pipelines (files, shards), e.g. iBOT's multi-crop views; ``batch_extra(n,
    generator, device) -> dict`` adds a method's entries (SimMIM's masks) to each batch
    of the device pipelines (tensor_cache, gpu_jpeg), drawn from the batch's seed."""
    rank, world = dist.rank(), dist.world_size()
    pin = device.type == "cuda"
    transform = transform or pretrain_transform(img_size, scale[0], hflip)
    collate_fn = collate_fn or collate
    if data.pipeline == "shards":
        ds = ShardDataset(data.shards, transform, seed, rank, world, max_side=4 * img_size)
        return ShardLoader(ds, batch_size, num_workers, pin, collate_fn)
    sampler = EpochSampler(data.num_images, shuffle=True, seed=seed, rank=rank, world=world)
    if data.pipeline == "files":
        # large images are decoded at a reduced scale, still 4x the crop's output size
        ds = ImageDataset(data.source or data.hf, transform, max_side=4 * img_size)
        return build_loader(ds, batch_size, sampler, num_workers, True, pin, collate_fn)
    if data.pipeline == "gpu_jpeg":
        loader = DeviceJpegLoader(
            data.source, batch_size, sampler, num_workers, device, img_size, scale, hflip
        )
        return WithExtras(loader, batch_extra) if batch_extra else loader
    cache = load_tensor_cache(
        data.source, cache_size or img_size, cache_dir or cache_root() / "tensors", num_workers
    )
    # the cache may hold fewer images (unreadable ones left out): sample what it holds
    sampler = EpochSampler(len(cache["images"]), shuffle=True, seed=seed, rank=rank, world=world)
    loader = TensorCacheLoader(
        cache["images"], cache["labels"], batch_size, sampler, device, img_size, scale, hflip,
        bad=cache["bad"],
    )  # fmt: skip
    return WithExtras(loader, batch_extra) if batch_extra else loader


class WithExtras:
    """A device loader whose batches gain a method's entries (``extra(n, generator,
    device) -> dict``), each batch's drawn from (seed, epoch, batch index): the same for
    any resume point, as the loader's own augmentation."""

    def __init__(self, loader, extra):
        self.loader, self.extra = loader, extra
        self.sampler, self.batch_size = loader.sampler, loader.batch_size

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        s = self.sampler
        first = s.start // self.batch_size
        for b, batch in enumerate(self.loader, start=first):
            g = torch.Generator().manual_seed(sample_seed(s.seed, s.epoch, b) + 1)
            image = batch["image"]
            yield {**batch, **self.extra(len(image), g, image.device)}
