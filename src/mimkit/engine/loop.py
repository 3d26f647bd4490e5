"""The one training loop. Tasks (pretrain, classify, detect) only turn a batch into a
dict of losses; everything else (precision, accumulation, schedule, clipping, logging,
checkpoints, resume, DDP) happens here, once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from tqdm import tqdm

from ..errors import NonFiniteLossError, UserError
from ..utils import distributed as dist
from ..utils.batch import batch_images
from ..utils.rng import rng_state
from ..version import __version__
from . import precision as precision_lib
from .checkpoint import check_weights, full_state_dicts, restore, saved_note, write_checkpoints
from .logging import RunLogger
from .optim import set_lr
from .schedule import cosine_iter, lr_at, warmup_steps

log = logging.getLogger("mimkit")


class Task(Protocol):
    """What the loop asks of a task. Only ``training_step`` is required; the Trainer calls
    each other method when the task defines it (``model`` is the wrapped model as passed
    to the Trainer: use ``distributed.unwrap`` to reach the module). ``step`` is the
    global optimizer-step index ``epoch * steps_per_epoch + i // accum_iter``, the index
    of per-iteration schedule arrays (DINO / iBOT ``it``).
    """

    def training_step(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """Return at least {'loss': scalar}; other entries are logged."""

    def evaluate(self, model: nn.Module, epoch: int) -> dict[str, float]:
        """Optional: metrics after an epoch (called on every rank)."""

    def on_step_start(self, model: nn.Module, optimizer, step: int, epoch: int) -> None:
        """Optional: at the first micro-batch of each optimizer step, after the lr is set
        (e.g. per-iteration weight decay, per-epoch temperatures)."""

    def before_optimizer_step(self, model: nn.Module, epoch: int) -> None:
        """Optional: after backward, gradient all-reduce and ``scaler.unscale_`` (and the
        loop's own ``clip_grad`` if set), before ``optimizer.step`` (e.g. per-parameter
        clipping, dropping a layer's gradients)."""

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Optional: right after ``optimizer.step`` (e.g. a teacher's EMA update)."""


@dataclass
class LoopConfig:
    epochs: int
    base_lr: float
    min_lr: float = 0.0
    warmup_epochs: float = 0.0
    accum_iter: int = 1
    clip_grad: float | None = None
    precision: str = "fp32"
    log_every: int = 50
    save_every: int = 20
    max_steps: int | None = None
    monitor: str | None = None  # metric that selects checkpoint-best.pth (higher is better)
    eval_every: int = 1
    # cosine (warmup + half-cosine, MAE) | onecycle (ConvMixer) | cosine_iter (DINO / iBOT
    # per-iteration arrays: the warmup reaches base_lr at its last step)
    schedule: str = "cosine"
    max_abs_weight: float | None = 1e4  # larger weights count as diverged: not saved
    # a method's own lr rule, (optimizer step, planned steps) -> lr; replaces ``schedule``
    lr_fn: Callable[[int, int], float] | None = None


@dataclass
class TrainState:
    epoch: int = 0  # next epoch to run
    step: int = 0  # optimizer steps taken
    best: float = -math.inf
    bad_images: set[str] = field(default_factory=set)


class Trainer:
    def __init__(
        self,
        task: Task,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loader,
        device: torch.device,
        loop: LoopConfig,
        out_dir: str | Path,
        meta: dict | None = None,
        logger: RunLogger | None = None,
    ):
        self.task, self.model, self.optimizer, self.loader = task, model, optimizer, loader
        self.device, self.cfg, self.out_dir = device, loop, Path(out_dir)
        self.meta = meta or {}  # saved in checkpoints: config, model_name, model_args, task
        self.logger = logger or RunLogger(out_dir)
        self.scaler = precision_lib.grad_scaler(loop.precision, device)
        self.state = TrainState()
        steps = len(loader) // loop.accum_iter * loop.accum_iter
        if steps == 0:
            raise UserError(
                f"an epoch has no full batch: {len(loader.sampler)} images per process, batch size "
                f"{loader.batch_size} x accum_iter {loop.accum_iter}; "
                "lower data.batch_size (--batch-size)"
            )
        self.micro_steps = steps  # micro-batches per epoch (a multiple of accum_iter)
        self.steps_per_epoch = steps // loop.accum_iter  # optimizer steps per epoch
        self._extras: dict[str, torch.Tensor] = {}  # the last step's other scalars

    # ------------------------------------------------------------------ public
    def resume(self, path: str | Path, trust: bool = False) -> None:
        """Restore model, optimizer, scaler, counters and RNG from a checkpoint."""
        saved = restore(Path(path), self.model, self.optimizer, self.scaler, self.meta, trust)
        self.state.epoch = saved["epoch"] + 1
        self.state.step = saved.get("step", 0)
        self.state.best = saved.get("best", -math.inf)
        self.logger.truncate(self.state.step, self.state.epoch)
        log.info(
            "resumed from %s after epoch %d (step %d); next: epoch %d/%d",
            path,
            self.state.epoch,
            self.state.step,
            self.state.epoch + 1,
            self.cfg.epochs,
        )

    def fit(self) -> dict:
        last = {}
        for epoch in range(self.state.epoch, self.cfg.epochs):
            last = self.train_one_epoch(epoch)
            if self._should_eval(epoch):
                last.update(self._evaluate(epoch))
            self.state.epoch = epoch + 1
            self._save(epoch, last)
            self.logger.write(
                {"kind": "epoch", "epoch": epoch + 1, "step": self.state.step, **last}
            )
            log.info("epoch %d/%d  %s", epoch + 1, self.cfg.epochs, _fmt(last))
            if self._out_of_steps():
                break
        self.logger.close()
        return last

    # ------------------------------------------------------------------ epoch
    def train_one_epoch(self, epoch: int) -> dict:
        self.model.train()
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        window = _Window(self.device)
        total = _Window(self.device)
        bar = tqdm(
            total=self.micro_steps,
            desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
            disable=None if dist.is_main() else True,
            leave=False,
            dynamic_ncols=True,
        )
        t_wait = time.perf_counter()
        for i, batch in enumerate(self.loader):
            if i >= self.micro_steps or self._out_of_steps():
                break
            window.wait += time.perf_counter() - t_wait
            self._note_bad(batch.pop("bad", []) if isinstance(batch, dict) else [])
            loss = self._micro_step(epoch, i, batch)
            n = _batch_size(batch)
            window.add(loss, n, self._extras)
            total.add(loss, n, self._extras)
            if (i + 1) % self.cfg.log_every == 0:
                self._log_window(epoch, window, bar)
            bar.update(1)
            t_wait = time.perf_counter()
        bar.close()
        loss, _, extras = total.reduce()
        stats = {"loss": loss, "lr": self._lr(), **extras}
        self._check_finite(stats["loss"], epoch)
        stats["skipped_images"] = self._gather_bad()
        return stats

    def step(self, batch: dict, epoch: int = 0, index: int = 0) -> torch.Tensor:
        """One micro-step of the training loop on ``batch`` (micro-batch ``index`` of
        ``epoch``): lr schedule, forward, backward and, at the end of an accumulation
        window, the optimizer step. Returns the detached loss (benchmarks time this)."""
        return self._micro_step(epoch, index, batch)

    def _micro_step(self, epoch: int, i: int, batch: dict) -> torch.Tensor:
        accum = self.cfg.accum_iter
        it = epoch * self.steps_per_epoch + i // accum  # global optimizer step
        if i % accum == 0:
            set_lr(self.optimizer, self._scheduled_lr(epoch, i, it))
            self._call_task("on_step_start", self.model, self.optimizer, it, epoch)
        batch = to_device(batch, self.device)
        sync = (i + 1) % accum == 0
        with self._no_sync(not sync):
            with precision_lib.autocast(self.cfg.precision, self.device):
                out = self.task.training_step(self.model, batch)
            loss = out["loss"]
            self.scaler.scale(loss / accum).backward()
        # other scalars the task returns (e.g. iBOT's two losses, temperature) are logged
        self._extras = {k: v.detach() for k, v in out.items() if k != "loss" and _scalar(v)}
        if sync:
            self._optimizer_step(epoch, it)
        return loss.detach()

    def _scheduled_lr(self, epoch: int, i: int, it: int) -> float:
        cfg = self.cfg
        if cfg.lr_fn is not None:
            return cfg.lr_fn(it, cfg.epochs * self.steps_per_epoch)
        if cfg.schedule == "cosine_iter":
            total = cfg.epochs * self.steps_per_epoch
            warmup = warmup_steps(cfg.warmup_epochs, self.steps_per_epoch)
            return cosine_iter(it, cfg.base_lr, cfg.min_lr, total, warmup)
        frac = epoch + i / self.micro_steps
        return lr_at(cfg.schedule, frac, cfg.base_lr, cfg.min_lr, cfg.warmup_epochs, cfg.epochs)

    def _call_task(self, name: str, *args) -> None:
        fn = getattr(self.task, name, None)
        if fn is not None:
            fn(*args)

    def _optimizer_step(self, epoch: int = 0, it: int = 0) -> None:
        before = getattr(self.task, "before_optimizer_step", None)
        if self.cfg.clip_grad or before is not None:
            self.scaler.unscale_(self.optimizer)
        if self.cfg.clip_grad:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
        if before is not None:
            before(self.model, epoch)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._call_task("after_optimizer_step", self.model, it)
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1

    def _lr(self) -> float:
        """The base lr: the largest group lr (groups with layer decay have scale <= 1)."""
        return max(g["lr"] for g in self.optimizer.param_groups)

    @contextlib.contextmanager
    def _no_sync(self, skip_sync: bool):
        """Skip the gradient all-reduce on accumulation micro-steps (DDP and FSDP)."""
        if skip_sync and isinstance(self.model, nn.parallel.DistributedDataParallel):
            with self.model.no_sync():
                yield
        elif skip_sync and dist.is_fsdp(self.model):
            dist.unwrap(self.model).set_requires_gradient_sync(False)
            try:
                yield
            finally:
                dist.unwrap(self.model).set_requires_gradient_sync(True)
        else:
            yield

    # ------------------------------------------------------------------ logging
    def _log_window(self, epoch: int, window: _Window, bar) -> None:
        """The one host-device sync point: average the window's loss over all ranks."""
        loss, n, extras = window.reduce()
        self._check_finite(loss, epoch)
        elapsed = time.perf_counter() - window.start
        record = {
            "kind": "train",
            "epoch": epoch + 1,
            "step": self.state.step,
            "loss": loss,
            "lr": self._lr(),
            "img_s": n / max(elapsed, 1e-9),
            "data_wait": window.wait / max(elapsed, 1e-9),
            **extras,
        }
        self.logger.write(record)
        bar.set_postfix(
            loss=f"{loss:.4f}", lr=f"{record['lr']:.2e}", img_s=f"{record['img_s']:.0f}"
        )
        window.reset()

    def _check_finite(self, loss: float, epoch: int) -> None:
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"the training loss became {loss} at epoch {epoch + 1}, step {self.state.step}; "
                f"{self._saved_note()}"
            )

    def _saved_note(self) -> str:
        return saved_note(self.out_dir)

    def _note_bad(self, entries: list) -> None:
        for entry in entries:
            path, reason = entry if isinstance(entry, (tuple, list)) else (entry, "")
            if path not in self.state.bad_images:
                self.state.bad_images.add(path)
                if len(self.state.bad_images) <= 5:
                    log.warning("skipped unreadable image %s (%s)", path, reason or "unreadable")

    def _gather_bad(self) -> int:
        bad = set().union(*dist.all_gather_object(sorted(self.state.bad_images)))
        if bad and dist.is_main():
            log.warning(
                "%d unreadable images skipped so far (first: %s)",
                len(bad),
                ", ".join(sorted(bad)[:3]),
            )
        return len(bad)

    # ------------------------------------------------------------------ eval/save
    def _should_eval(self, epoch: int) -> bool:
        last = epoch + 1 == self.cfg.epochs or self._out_of_steps()
        has_eval = callable(getattr(self.task, "evaluate", None))
        return has_eval and (last or (epoch + 1) % self.cfg.eval_every == 0)

    def _evaluate(self, epoch: int) -> dict:
        with precision_lib.autocast(self.cfg.precision, self.device):
            return self.task.evaluate(self.model, epoch) or {}

    def _out_of_steps(self) -> bool:
        return self.cfg.max_steps is not None and self.state.step >= self.cfg.max_steps

    def _save(self, epoch: int, metrics: dict) -> None:
        """Checkpoints of the finished epoch: last, numbered every ``save_every`` epochs
        (and at the end), best by ``monitor``; never weights that diverged."""
        where = f"epoch {epoch + 1}, step {self.state.step}"
        check_weights(self.model, self.cfg.max_abs_weight, where, self._saved_note)
        rngs = dist.all_gather_object(rng_state())
        model_sd, optim_sd = full_state_dicts(self.model, self.optimizer)
        if not dist.is_main():
            return
        improved = self._improved(metrics)
        state = {
            "model": model_sd,
            "optimizer": optim_sd,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "epoch": epoch,
            "step": self.state.step,
            "best": self.state.best,
            "metrics": metrics,
            "rng": rngs,
            "mimkit_version": __version__,
            **self.meta,
        }
        done = epoch + 1
        numbered = done % self.cfg.save_every == 0 or done == self.cfg.epochs
        write_checkpoints(self.out_dir, state, done if numbered else None, improved)

    def _improved(self, metrics: dict) -> bool:
        key = self.cfg.monitor
        if not key or key not in metrics or metrics[key] <= self.state.best:
            return False
        self.state.best = metrics[key]
        return True


class _Window:
    """Loss (and the task's other scalars) summed with the image count on the device: no
    host-device sync until ``reduce``, which all-reduces them in one call."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(2, device=self.device, dtype=torch.float64)
        self.extras: dict[str, torch.Tensor] = {}
        self.start = time.perf_counter()
        self.wait = 0.0

    def add(self, loss: torch.Tensor, n: int, extras: dict | None = None) -> None:
        self.sums[0] += loss.double() * n
        self.sums[1] += n
        for k, v in (extras or {}).items():
            self.extras[k] = self.extras.get(k, 0.0) + v.double() * n

    def reduce(self) -> tuple[float, float, dict[str, float]]:
        keys = sorted(self.extras)
        parts = [self.sums] + [self.extras[k].reshape(1).to(self.device) for k in keys]
        s = dist.all_reduce_sum(torch.cat(parts)).tolist()
        n = max(s[1], 1)
        return s[0] / n, s[1], {k: s[2 + i] / n for i, k in enumerate(keys)}


def _scalar(v) -> bool:
    return torch.is_tensor(v) and v.numel() == 1


def _batch_size(batch) -> int:
    return len(batch_images(batch))


def to_device(batch, device: torch.device):
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _fmt(stats: dict) -> str:
    return "  ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items()
    )
