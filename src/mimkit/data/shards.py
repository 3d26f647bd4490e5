"""Tar shards in the WebDataset layout, for datasets that do not fit a local folder.

Each shard is a plain tar; a sample is the files sharing a key: ``<key>.jpg`` (or png,
webp...) and optionally ``<key>.cls`` (the integer label). ``shards.json`` beside them
records each shard's sample count, so every rank knows the epoch length up front.

Reading: shards are dealt to the (rank, worker) slots by a per-epoch permutation;
each slot streams its shards in order. Every rank yields the same number of samples
(DDP ranks must step together): a slot that runs out starts its shards over. With
equal shards and a shard count divisible by ranks x workers, each sample is seen
exactly once per epoch.
"""

from __future__ import annotations

import io
import json
import tarfile
import zlib
from pathlib import Path

import torch
from PIL import Image

from ..errors import UserError
from ..utils.rng import seeded
from .loader import sample_seed
from .sources import IMAGE_EXTENSIONS, ImageSource

INDEX = "shards.json"


def write_shards(
    source: ImageSource, out_dir: str | Path, shard_size: int = 1000, prefix: str = "shard"
) -> list[Path]:
    """Pack a source into tar shards of ``shard_size`` samples (the last may be smaller)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths, counts = [], []
    for s, start in enumerate(range(0, len(source), shard_size)):
        path = out / f"{prefix}-{s:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(start, min(start + shard_size, len(source))):
                key = f"{i:09d}"
                ext = Path(source.paths[i]).suffix.lower()
                tar.add(source.paths[i], arcname=key + ext)
                if source.labels is not None:
                    _add_bytes(tar, key + ".cls", str(source.labels[i]).encode())
        paths.append(path)
        counts.append(min(shard_size, len(source) - start))
    index = {"shards": [p.name for p in paths], "counts": counts, "classes": source.classes}
    (out / INDEX).write_text(json.dumps(index, indent=1) + "\n")
    return paths


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def read_index(folder: str | Path) -> tuple[list[Path], list[int]]:
    folder = Path(folder)
    index = folder / INDEX
    if not index.is_file():
        raise UserError(
            f"{folder} has no {INDEX}: write shards with `mimkit shards --data DIR --out {folder}`"
        )
    meta = json.loads(index.read_text())
    shards = [folder / name for name in meta["shards"]]
    missing = [str(p) for p in shards if not p.is_file()]
    if missing:
        raise UserError(f"shard listed in {index} not found: {missing[0]}")
    return shards, meta["counts"]


def iter_samples(path: Path):
    """(key, image bytes, label or -1) for each sample of one shard, in tar order."""
    current, image, label = None, None, -1
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.rpartition(".")
            if key != current:
                if current is not None and image is not None:
                    yield current, image, label
                current, image, label = key, None, -1
            data = tar.extractfile(member).read()
            if "." + ext.lower() in IMAGE_EXTENSIONS:
                image = data
            elif ext == "cls":
                label = int(data.decode().strip())
    if current is not None and image is not None:
        yield current, image, label


class ShardDataset(torch.utils.data.IterableDataset):
    """Streams (image, label, bad) from this rank's share of the shards, augmented with
    per-sample seeds (run seed, epoch, key). ``len`` is the per-rank epoch length."""

    def __init__(
        self,
        folder: str | Path,
        transform,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        shuffle: bool = True,
    ):
        self.shards, self.counts = read_index(folder)
        self.transform, self.seed, self.rank, self.world = transform, seed, rank, world
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(self.counts) // self.world

    def slot_shards(self, worker: int, workers: int) -> list[int]:
        order = list(range(len(self.shards)))
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(order), generator=g).tolist()
        slots = self.world * workers
        if len(order) < slots:
            raise UserError(
                f"{len(order)} shards for {self.world} processes x {workers} "
                "workers: write more, smaller shards or use fewer workers"
            )
        return order[self.rank * workers + worker :: slots]

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        mine = self.slot_shards(worker, workers)
        quota = len(self) // workers + (worker < len(self) % workers)
        done, bad = 0, []
        while done < quota:
            for s in mine:
                for key, data, label in iter_samples(self.shards[s]):
                    if done == quota:
                        return
                    img = _open(data)
                    if img is None:  # skipped; its key travels with the next sample
                        bad.append((f"{self.shards[s].name}:{key}", "unreadable image"))
                        continue
                    with seeded(sample_seed(self.seed, self.epoch, zlib.crc32(key.encode()))):
                        yield self.transform(img), label, bad
                    done, bad = done + 1, []


def _open(data: bytes) -> Image.Image | None:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        return img.convert("RGB")
    except Exception:  # any decode failure
        return None


class ShardLoader:
    """DataLoader over a ShardDataset with the interface the Trainer uses; workers are
    not persistent so that ``set_epoch`` reaches them each epoch."""

    def __init__(
        self, dataset: ShardDataset, batch_size: int, num_workers: int, pin_memory: bool, collate_fn
    ):
        self.dataset, self.sampler, self.batch_size = dataset, dataset, batch_size
        self.workers = max(num_workers, 1)
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            collate_fn=collate_fn,
            drop_last=True,
        )

    def __len__(self) -> int:
        """Each worker batches its own quota (the last partial batch dropped)."""
        n, w = len(self.dataset), self.workers
        return sum((n // w + (k < n % w)) // self.batch_size for k in range(w))

    def __iter__(self):
        return iter(self.loader)
