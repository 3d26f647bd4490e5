"""Tar shards in the WebDataset layout, read and written with the ``webdataset`` library,
for datasets that do not fit a local folder or live behind a URL.

A sample is the files of a shard sharing a key: ``<key>.jpg`` (or png, webp...) and
optionally ``<key>.cls`` (the integer label). ``mimkit shards`` also writes
``shards.json`` beside them with each shard's sample count and the class names.

``--data`` may be a local shard folder (with ``shards.json``), a brace pattern
(``/data/train-{000000..000099}.tar``, ``https://host/train-{0..9}.tar``) or a ``pipe:``
command (``pipe:aws s3 cp s3://bucket/train-{000000..001023}.tar -``). Without an index
the sample count comes from ``data.num_samples``.

Reading: each epoch the shard list is permuted from (seed, epoch), split by rank (node)
and by worker; every (rank, worker) slot streams its shards through webdataset's tar
reader and stops at a fixed quota (webdataset's ``with_epoch``): every rank steps the same
number of batches, which DDP needs. A slot that runs out of samples starts its shards
over. With a shard count divisible by ranks x workers and equal shards, each sample is
seen exactly once per epoch.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import re
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import webdataset as wds
from PIL import Image
from webdataset.shardlists import expand_urls

from ..errors import UserError
from ..utils.io import atomic_write_text
from ..utils.rng import seeded
from .images import failure_reason, open_rgb
from .loader import build_loader, sample_seed
from .sources import IMAGE_EXTENSIONS, ImageSource, Scheme, register_scheme

log = logging.getLogger("mimkit")

INDEX = "shards.json"
_IMAGE_KEYS = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)
_TAR = (".tar", ".tgz", ".tar.gz")
_REMOTE = re.compile(r"^(pipe:|[a-zA-Z][a-zA-Z0-9+.-]*://)")


# ---------------------------------------------------------------------------- writing


def write_shards(
    source: ImageSource, out_dir: str | Path, shard_size: int = 1000, prefix: str = "shard"
) -> list[Path]:
    """Pack a source into tar shards of ``shard_size`` samples (the last may be smaller)
    with ``webdataset.ShardWriter``; keys are the source indices (``000000042.jpg``).
    Files that cannot be read are left out (and counted in the log)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done: list[tuple[str, int]] = []  # (file, samples) of each finished shard
    writer = None

    def finished(fname: str) -> None:
        done.append((fname, writer.count))

    writer = wds.ShardWriter(
        str(out / f"{prefix}-%06d.tar"),
        maxcount=shard_size,
        maxsize=float("inf"),  # split by count only: counts must be known exactly
        post=finished,
        verbose=0,
        # a whole-second mtime: webdataset's default (time.time(), a float) makes tarfile
        # add a PAX header to every member, which doubles the header parsing when reading
        mtime=int(time.time()),
    )
    missing = 0
    with writer:
        for i in range(len(source)):
            try:
                entry = source.read(i)  # a file path, or encoded bytes (hf: rows)
                data = Path(entry).read_bytes() if isinstance(entry, str) else entry
                ext = _extension(entry, data)
            except OSError as e:
                missing += 1
                log.warning("left out %s (%s)", source.paths[i], failure_reason(e))
                continue
            sample = {"__key__": f"{i:09d}", ext: data}
            if source.labels is not None:
                sample["cls"] = int(source.labels[i])
            writer.write(sample)
    paths = [Path(f) for f, n in done if n > 0]
    for f, n in done:
        if n == 0:  # ShardWriter opens its first shard before any sample arrives
            os.remove(f)
    if missing:
        log.warning("%d of %d files could not be read and were left out", missing, len(source))
    index = {
        "shards": [p.name for p in paths],
        "counts": [n for _, n in done if n > 0],
        "classes": source.classes,
    }
    atomic_write_text(out / INDEX, json.dumps(index, indent=1) + "\n")
    return paths


def _sample_name(sample: dict) -> str:
    """``shard-000003.tar:000000042``, for messages about a skipped sample."""
    return f"{shard_name(sample['__url__'])}:{sample['__key__']}"


def _extension(entry: str | bytes, data: bytes) -> str:
    """The member extension of a sample: the file's own, or the encoded format's."""
    if isinstance(entry, str) and Path(entry).suffix:
        return Path(entry).suffix.lower().lstrip(".")
    try:
        fmt = (Image.open(io.BytesIO(data)).format or "jpeg").lower()
    except (OSError, Image.DecompressionBombError) as e:
        raise OSError(f"not an image: {e}") from e
    ext = "jpg" if fmt == "jpeg" else fmt
    if ext not in _IMAGE_KEYS:
        raise OSError(f"{fmt} images cannot go into shards ({', '.join(_IMAGE_KEYS)})")
    return ext


# ---------------------------------------------------------------------------- opening


@dataclass
class ShardSet:
    """Shard URLs (local paths, URLs or ``pipe:`` commands) and how many samples they hold."""

    urls: list[str]
    num_samples: int
    classes: list[str]
    counts: list[int] | None = None  # per shard, from a shards.json index
    index: str | None = None  # that index, for messages


def is_shard_spec(path: str | Path | None) -> bool:
    """Whether ``--data`` names shards: a folder with shards.json, a brace pattern, a
    ``pipe:`` command, a URL, or a .tar file."""
    if not path:
        return False
    s = str(path)
    if Path(s).is_dir():
        return (Path(s) / INDEX).is_file()
    return bool(_REMOTE.match(s)) or ("{" in s and "}" in s) or s.endswith(_TAR)


register_scheme(Scheme("shards", kind="shards", matches=is_shard_spec))


def open_shards(spec: str | Path, num_samples: int | None = None) -> ShardSet:
    """Resolve ``--data`` to shard URLs and a sample count (``num_samples`` overrides the
    count of an index; it is required where there is no index)."""
    p = Path(str(spec))
    if not _REMOTE.match(str(spec)) and p.is_dir():
        urls, counts, classes = read_index(p.resolve())
        index = str(p.resolve() / INDEX)
        return ShardSet([str(u) for u in urls], num_samples or sum(counts), classes, counts, index)
    urls = expand_urls(str(spec))
    local = [u for u in urls if not _REMOTE.match(u)]
    missing = [u for u in local if not Path(u.removeprefix("file:")).is_file()]
    if missing:
        raise UserError(f"shard not found: {missing[0]} (from --data {spec})")
    counts, classes = _counts_from_index(urls) if len(local) == len(urls) else (None, [])
    if num_samples is None and counts is None:
        where = (
            "is a URL or pipe: command"
            if len(local) < len(urls)
            else f"names shards without a {INDEX} beside them"
        )
        raise UserError(
            f"--data {spec} {where}, so mimkit cannot count its samples: set "
            f"data.num_samples=N (the number of samples in all the shards), or give a local "
            f"shard folder with its {INDEX} index (`mimkit shards` writes one)"
        )
    if num_samples is not None and num_samples < 1:
        raise UserError(f"config key 'data.num_samples' must be at least 1, got {num_samples}")
    index = str(Path(urls[0].removeprefix("file:")).parent / INDEX) if counts else None
    return ShardSet(urls, num_samples or sum(counts), classes, counts, index)


def read_index(folder: str | Path) -> tuple[list[Path], list[int], list[str]]:
    """Shard paths, per-shard counts and classes from ``folder/shards.json``."""
    folder = Path(folder)
    index = folder / INDEX
    if not index.is_file():
        raise UserError(
            f"{folder} has no {INDEX}: write shards with `mimkit shards --data DIR --out {folder}`"
        )
    meta = json.loads(index.read_text())
    folder = folder.resolve()  # absolute: no name can be read as a scheme or command
    shards = [folder / _plain_name(name, index) for name in meta["shards"]]
    missing = [str(p) for p in shards if not p.is_file()]
    if missing:
        raise UserError(f"shard listed in {index} not found: {missing[0]}")
    return shards, meta["counts"], meta.get("classes", [])


def _plain_name(name, index: Path) -> str:
    """A shard name of an index: a relative file name inside its folder. A name with a
    scheme (``pipe:``, ``https:``), an absolute path or ``..`` is refused: webdataset
    would run a ``pipe:`` name through the shell (an index is data, never a command)."""
    s = str(name)
    parts = Path(s).parts
    if (
        not isinstance(name, str)
        or not s
        or ":" in s
        or Path(s).is_absolute()
        or ".." in parts
        or "\\" in s
    ):
        raise UserError(
            f"{index} lists shard {s!r}: an index may only hold plain file names inside "
            "its folder (no scheme, absolute path or '..'); rewrite it with `mimkit shards`"
        )
    return s


def _counts_from_index(urls: list[str]) -> tuple[list[int] | None, list[str]]:
    """Counts of local shards listed in a shards.json beside them (a brace pattern over
    a folder written by ``mimkit shards``)."""
    folders = {Path(u.removeprefix("file:")).parent for u in urls}
    if len(folders) != 1 or not (next(iter(folders)) / INDEX).is_file():
        return None, []
    meta = json.loads((next(iter(folders)) / INDEX).read_text())
    count = dict(zip(meta["shards"], meta["counts"]))
    names = [Path(u).name for u in urls]
    if not all(n in count for n in names):
        return None, []
    return [count[n] for n in names], meta.get("classes", [])


def shard_name(url: str) -> str:
    """A short name for messages: the shard file of a path, URL or ``pipe:`` command."""
    words = url.removeprefix("pipe:").split()
    tars = [w for w in words if w.endswith(_TAR)]
    word = tars[-1] if tars else url
    return word.rstrip("/").rsplit("/", 1)[-1]


# ---------------------------------------------------------------------------- reading


class ShardDataset(torch.utils.data.IterableDataset):
    """Streams (image, label, bad) from this rank's share of the shards, augmented with
    per-sample seeds (run seed, epoch, key). ``len`` is the per-rank epoch length.

    ``shards``: a shard folder, URL pattern or ``pipe:`` command (see ``open_shards``),
    or an opened ``ShardSet``. ``rank``/``world`` default to the process group's.
    ``max_side``: large images are decoded at a reduced scale (see ``open_rgb``)."""

    def __init__(
        self,
        shards: str | Path | ShardSet,
        transform,
        seed: int = 0,
        rank: int | None = None,
        world: int | None = None,
        shuffle: bool = True,
        num_samples: int | None = None,
        max_side: int | None = None,
    ):
        self.shards = shards if isinstance(shards, ShardSet) else open_shards(shards, num_samples)
        node_rank, node_world, _, _ = wds.utils.pytorch_worker_info()
        self.rank = node_rank if rank is None else rank
        self.world = node_world if world is None else world
        self.transform, self.seed, self.shuffle, self.max_side = transform, seed, shuffle, max_side
        # in shared memory: persistent DataLoader workers see set_epoch from the trainer
        self._epoch = torch.zeros((), dtype=torch.long).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return self.shards.num_samples // self.world

    def quota(self, worker: int, workers: int) -> int:
        """Samples one worker yields per epoch (the rank's share dealt over its workers)."""
        n = len(self)
        return n // workers + (worker < n % workers)

    def check_slots(self, workers: int) -> None:
        n, slots = len(self.shards.urls), self.world * max(workers, 1)
        if n < slots:
            raise UserError(
                f"{n} shards for {self.world} processes x {max(workers, 1)} workers: write "
                "more, smaller shards (mimkit shards --shard-size) or use fewer workers"
            )

    def epoch_urls(self, epoch: int) -> list[str]:
        """This epoch's shard order: a permutation drawn from seed + epoch."""
        urls = self.shards.urls
        if not self.shuffle:
            return list(urls)
        g = torch.Generator().manual_seed(self.seed + epoch)
        return [urls[i] for i in torch.randperm(len(urls), generator=g).tolist()]

    def slot_urls(self, epoch: int) -> list[str]:
        """This (rank, worker) slot's shards: node split, then webdataset's worker split.
        (webdataset's ``split_by_node`` reads the rank from the environment; it is passed
        explicitly here so a dataset can be built for any rank.)"""
        mine = self.epoch_urls(epoch)[self.rank :: self.world]
        return list(wds.split_by_worker(mine))

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        self.check_slots(workers)
        epoch = self.epoch
        samples = self._samples(self.slot_urls(epoch), epoch, self.world * workers)
        # a fixed number of samples per worker, as webdataset's with_epoch
        return itertools.islice(samples, self.quota(worker, workers))

    def _samples(self, urls: list[str], epoch: int, slots: int = 1):
        """Endless: the slot's shards, started over when they run out. Skipped samples
        are named in the next yielded item's ``bad`` list."""
        bad: list[tuple[str, str]] = []
        for rnd in itertools.count():
            got = read = 0
            for url in urls:
                for sample in _read_shard(url, bad):
                    read += 1
                    item = self._decode(sample, epoch, rnd, bad)
                    if item is not None:
                        got += 1
                        yield (*item, bad[:])
                        bad.clear()
            if got == 0:
                where = f"{bad[0][0]}: {bad[0][1]}" if bad else "no samples"
                raise UserError(f"no readable sample in shards {', '.join(urls)} ({where})")
            if rnd == 0:  # the quota outlasted the shards: was their count right?
                self._check_count(urls, read, slots)

    def _check_count(self, urls: list[str], read: int, slots: int) -> None:
        """Warn (once) when the index counted more samples in this slot's shards than the
        first pass read, or, for a single slot, ``data.num_samples`` more than all hold:
        every sample is then read several times an epoch."""
        s = self.shards
        if s.counts is not None:
            count = dict(zip(s.urls, s.counts))
            expected, source = sum(count.get(u, 0) for u in urls), s.index
            fix = "rewrite the shards with `mimkit shards` (or correct its counts)"
        elif slots == 1:
            expected, source = s.num_samples, f"data.num_samples (shards {urls[0]}, ...)"
            fix = "set data.num_samples to the number of samples in all the shards"
        else:
            return
        if read >= expected or getattr(self, "_count_warned", False):
            return
        self._count_warned = True
        log.warning(
            "%s counts %d samples in %d shards, which hold %d: each sample is read about "
            "%.0f times an epoch; %s",
            source,
            expected,
            len(urls),
            read,
            expected / max(read, 1),
            fix,
        )

    def _decode(self, sample: dict, epoch: int, rnd: int, bad: list):
        """(image, label), or None when the sample is skipped (and named in ``bad``)."""
        key = sample["__key__"]
        data = next((sample[k] for k in _IMAGE_KEYS if k in sample), None)
        if data is None:
            bad.append((_sample_name(sample), "no image file in the sample"))
            return None
        try:
            img = open_rgb(data, self.max_side)
            label = int(sample["cls"]) if "cls" in sample else -1
        except Exception as e:  # any decode failure: PIL raises many types
            bad.append((_sample_name(sample), failure_reason(e)))
            return None
        # a shard read again (its slot ran out) draws new augmentations for its samples
        ident = key if rnd == 0 else f"{key}#{rnd}"
        with seeded(sample_seed(self.seed, epoch, zlib.crc32(ident.encode()))):
            return self.transform(img), label


def _read_shard(url: str, bad: list):
    """Samples of one shard through webdataset (local file, URL or ``pipe:``); a shard
    that cannot be opened or is truncated is named in ``bad`` and the rest skipped."""

    def handler(e: BaseException) -> bool:
        reason = failure_reason(e)
        log.warning("shard %s: %s", url, reason)
        bad.append((shard_name(url), reason))
        return True  # continue with the next shard

    return wds.tarfile_samples([{"url": url}], handler=handler)


class ShardLoader:
    """DataLoader over a ShardDataset with the interface the Trainer uses. Workers are
    persistent: the epoch reaches them through the dataset's shared-memory counter."""

    def __init__(
        self, dataset: ShardDataset, batch_size: int, num_workers: int, pin_memory: bool, collate_fn
    ):
        num_workers = min(num_workers, len(os.sched_getaffinity(0)))
        dataset.check_slots(num_workers)  # here, not in a worker: one line, not a traceback
        self.dataset, self.sampler, self.batch_size = dataset, dataset, batch_size
        self.workers = max(num_workers, 1)
        # build_loader's settings, its own generator included (the global RNG holds the
        # masking noise, which must resume exactly)
        self.loader = build_loader(
            dataset, batch_size, None, num_workers, True, pin_memory, collate_fn
        )

    def __len__(self) -> int:
        """Each worker batches its own quota (the last partial batch dropped)."""
        w = self.workers
        return sum(self.dataset.quota(k, w) // self.batch_size for k in range(w))

    def __iter__(self):
        return iter(self.loader)
