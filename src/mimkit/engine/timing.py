"""Timing the real training step: a stand-in loader of one device batch, steps timed
after warm-up (data included when the batches come from a real loader), a loader alone,
and a profile of a few steps. ``recipes.benchmark`` reports them; the scripts in
``benchmarks/`` call them directly."""

from __future__ import annotations

import itertools
import os
import platform
import time
from collections.abc import Iterable
from pathlib import Path

import torch

from ..utils.batch import batch_images
from .loop import Trainer, to_device


class SyntheticLoader:
    """Stands in for a DataLoader: the same device batch, endlessly."""

    def __init__(self, batch: dict, batch_size: int):
        self.batch, self.batch_size = batch, batch_size
        self.sampler = range(10**9)

    def __len__(self) -> int:
        return 10**9

    def __iter__(self):
        while True:
            yield dict(self.batch)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(trainer: Trainer, batches: Iterable, steps: int, warmup: int) -> dict:
    """Images/s over ``steps`` training steps after ``warmup`` steps (data included)."""
    it = iter(batches)
    trainer.model.train()
    for i in range(warmup):
        trainer.step(drop_bad(next(it)), index=i)
    sync(trainer.device)
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.device)
    n, t0 = 0, time.perf_counter()
    for i in range(steps):
        batch = drop_bad(next(it))
        n += images_in(batch)
        trainer.step(batch, index=warmup + i)
    sync(trainer.device)
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
        to_device(drop_bad(next(it)), device)
    sync(device)
    n, t0 = 0, time.perf_counter()
    for _ in range(steps):
        batch = to_device(drop_bad(next(it)), device)
        n += images_in(batch)
    sync(device)
    return n / (time.perf_counter() - t0)


def images_in(batch: dict) -> int:
    return len(batch_images(batch))


def drop_bad(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "bad"}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def profile_steps(trainer: Trainer, steps: int, trace: Path, top: int = 10) -> dict:
    """``steps`` more training steps under torch.profiler: a Chrome / Perfetto trace at
    ``trace`` and the ``top`` operators by self time (device time on CUDA)."""
    # Kineto's own log (read at its first use) says 'gpuGetDeviceCount failed' on a
    # CPU-only machine running a CUDA build of torch: keep it quiet unless asked
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    from torch.profiler import ProfilerActivity, profile

    cuda = trainer.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    it = iter(trainer.loader)
    with profile(activities=activities) as prof:
        for i in range(steps):
            trainer.step(drop_bad(next(it)), index=i)
        sync(trainer.device)
    prof.export_chrome_trace(str(trace))
    self_time = (lambda e: e.self_device_time_total) if cuda else (lambda e: e.self_cpu_time_total)
    events = [e for e in prof.key_averages() if self_time(e) > 0]
    total = sum(self_time(e) for e in events) or 1.0
    ranked = sorted(events, key=self_time, reverse=True)[:top]
    rows = [
        {
            "op": e.key,
            "self_ms_per_step": round(self_time(e) / 1e3 / steps, 3),
            "share": round(self_time(e) / total, 4),
            "calls_per_step": e.count / steps,
        }
        for e in ranked
    ]
    return {"trace": str(trace), "steps": steps, "time": "device" if cuda else "cpu", "top": rows}
