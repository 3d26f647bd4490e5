"""Sampling and loading: deterministic per-epoch order, sharded across DDP ranks."""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, Sampler

from ..utils import distributed as dist
from .datasets import collate

_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant to spread seeds


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Seed for one image's augmentation; depends only on (seed, epoch, index)."""
    return (seed * _MIX + epoch * 1_000_003 + index * 7919) % (2**63 - 1)


class EpochSampler(Sampler):
    """Yields ``(index, sample_seed)`` for this rank's share of one epoch.

    The order is a permutation drawn from ``seed + epoch`` (or ``range(n)`` without
    shuffle), padded by wrapping so every rank gets ``ceil(n / world)`` items, then
    interleaved across ranks like ``DistributedSampler``. Call ``set_epoch`` each epoch.
    """

    def __init__(
        self,
        n: int,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        pad: bool = True,
    ):
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world, self.pad = rank, world, pad
        self.epoch = 0
        self.start = 0  # items of this epoch to leave out (a mid-epoch resume)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start(self, start: int) -> None:
        """Begin this epoch's iteration at item ``start`` (a run resumed mid-epoch: the
        batches before it were trained on); ``len`` stays the epoch's."""
        self.start = start

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.pad:
            total = -(-self.n // self.world) * self.world
            order += order[: total - self.n]
        return order[self.rank :: self.world]

    def __iter__(self):
        for i in self.indices()[self.start :]:
            yield i, sample_seed(self.seed, self.epoch, i)

    def __len__(self) -> int:
        if self.pad:
            return -(-self.n // self.world)
        return len(range(self.rank, self.n, self.world))


def build_loader(
    dataset,
    batch_size: int,
    sampler: EpochSampler,
    num_workers: int,
    drop_last: bool,
    pin_memory: bool,
    collate_fn,
) -> DataLoader:
    # More workers than cores only adds contention (and a warning from PyTorch).
    num_workers = min(num_workers, len(os.sched_getaffinity(0)))
    # An explicit generator keeps the loader from drawing on the global RNG, which
    # holds the masking noise and must resume exactly.
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
        collate_fn=collate_fn,
        generator=torch.Generator(),
        prefetch_factor=4 if num_workers > 0 else None,
    )


def eval_loader(
    dataset, batch_size: int, num_workers: int, pin_memory: bool = False, collate_fn=None
) -> DataLoader:
    """This rank's share of ``dataset`` in order, unpadded (every item counted once over
    all ranks; ``utils.distributed.interleave`` restores the order after a gather)."""
    sampler = EpochSampler(
        len(dataset), shuffle=False, rank=dist.rank(), world=dist.world_size(), pad=False
    )
    return build_loader(
        dataset, batch_size, sampler, num_workers, False, pin_memory, collate_fn or collate
    )


def train_loader(
    dataset,
    batch_size: int,
    seed: int,
    num_workers: int,
    pin_memory: bool = False,
    collate_fn=None,
) -> DataLoader:
    """Shuffled per epoch from ``seed``, padded so every rank steps equally, full batches."""
    world = dist.world_size()
    sampler = EpochSampler(len(dataset), shuffle=True, seed=seed, rank=dist.rank(), world=world)
    return build_loader(
        dataset, batch_size, sampler, num_workers, True, pin_memory, collate_fn or collate
    )
