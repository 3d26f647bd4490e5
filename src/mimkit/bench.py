"""Throughput of the real training step (the Trainer's hot path) and of data loaders."""

from __future__ import annotations

import itertools
import platform
import time
from collections.abc import Iterable

import torch

from .engine import precision as P
from .engine.loop import LoopConfig, Trainer, _to_device
from .engine.optim import adamw, weight_decay_groups


class SyntheticLoader:
    """Stands in for a DataLoader: identical device batches of random images, endlessly."""

    def __init__(self, batch_size: int, img_size: int, device: torch.device):
        self.batch_size = batch_size
        self.sampler = range(10**9)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch_size, 3, img_size, img_size, generator=g).to(device)
        self.batch = {"image": x, "label": torch.zeros(batch_size, dtype=torch.long, device=device)}

    def __len__(self) -> int:
        return 10**9

    def __iter__(self):
        while True:
            yield dict(self.batch)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_trainer(
    task, model, device: torch.device, precision: str, out_dir, batch_size: int, img_size: int
) -> Trainer:
    """A Trainer whose optimizer and step are the ones training uses (AdamW, fused on CUDA)."""
    optimizer = adamw(weight_decay_groups(model, 0.05), 1e-4, (0.9, 0.95), device)
    loop = LoopConfig(epochs=1, base_lr=1e-4, precision=P.resolve(precision, device))
    return Trainer(
        task, model, optimizer, SyntheticLoader(batch_size, img_size, device), device, loop, out_dir
    )


def step_throughput(
    task, model, batch: int, img_size: int, device, precision: str, steps: int, warmup: int, out
) -> dict:
    """Model-only training-step throughput of ``model`` on synthetic images."""
    trainer = make_trainer(task, model, device, precision, out, batch, img_size)
    result = time_steps(trainer, trainer.loader, steps, warmup)
    return result | {"precision": trainer.cfg.precision}


def time_steps(trainer: Trainer, batches: Iterable, steps: int, warmup: int) -> dict:
    """Images/s over ``steps`` training steps after ``warmup`` steps (data included)."""
    it = iter(batches)
    trainer.model.train()
    for i in range(warmup):
        trainer._micro_step(0, i, _drop_bad(next(it)))
    _sync(trainer.device)
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.device)
    n, t0 = 0, time.perf_counter()
    for i in range(steps):
        batch = _drop_bad(next(it))
        n += len(batch["image"])
        trainer._micro_step(0, warmup + i, batch)
    _sync(trainer.device)
    seconds = time.perf_counter() - t0
    cuda = trainer.device.type == "cuda"
    return {
        "img_s": n / seconds,
        "step_ms": 1000 * seconds / steps,
        "peak_mem_gb": torch.cuda.max_memory_allocated(trainer.device) / 2**30 if cuda else None,
    }


def time_loader(loader, device: torch.device, steps: int, warmup: int) -> float:
    """Images/s of a loader alone (batches moved to ``device``), cycling epochs if needed."""
    it = itertools.chain.from_iterable(itertools.repeat(loader))
    for _ in range(warmup):
        _to_device(_drop_bad(next(it)), device)
    _sync(device)
    n, t0 = 0, time.perf_counter()
    for _ in range(steps):
        batch = _to_device(_drop_bad(next(it)), device)
        n += len(batch["image"])
    _sync(device)
    return n / (time.perf_counter() - t0)


def _drop_bad(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "bad"}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
