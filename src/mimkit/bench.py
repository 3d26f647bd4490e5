"""Throughput measurement of the real training step (the Trainer's hot path) on synthetic data."""

from __future__ import annotations

import platform
import time

import torch

from .engine import precision as P
from .engine.loop import LoopConfig, Trainer
from .engine.optim import adamw, weight_decay_groups


class SyntheticLoader:
    """Stands in for a DataLoader: ``n`` identical device batches of random images."""

    def __init__(self, batch_size: int, img_size: int, device: torch.device, n: int = 1_000_000):
        self.batch_size, self.n = batch_size, n
        self.sampler = range(n * batch_size)
        g = torch.Generator().manual_seed(0)
        self.batch = {
            "image": torch.randn(batch_size, 3, img_size, img_size, generator=g).to(device)
        }

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for _ in range(self.n):
            yield dict(self.batch)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_throughput(
    task,
    model,
    batch_size: int,
    img_size: int,
    device: torch.device,
    precision: str,
    steps: int,
    warmup: int,
    out_dir,
) -> dict:
    """Images/s of ``steps`` optimizer steps after ``warmup`` steps, with the Trainer's step."""
    precision = P.resolve(precision, device)
    optimizer = adamw(weight_decay_groups(model, 0.05), 1e-4, (0.9, 0.95), device)
    loader = SyntheticLoader(batch_size, img_size, device)
    trainer = Trainer(
        task,
        model,
        optimizer,
        loader,
        device,
        LoopConfig(epochs=1, base_lr=1e-4, precision=precision),
        out_dir,
    )
    model.train()
    batches = iter(loader)
    for i in range(warmup):
        trainer._micro_step(0, i, next(batches))
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for i in range(steps):
        trainer._micro_step(0, warmup + i, next(batches))
    _sync(device)
    seconds = time.perf_counter() - t0
    return {
        "img_s": steps * batch_size / seconds,
        "step_ms": 1000 * seconds / steps,
        "precision": precision,
        "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30
        if device.type == "cuda"
        else None,
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
