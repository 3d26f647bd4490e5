"""The one training loop. Tasks (pretrain, classify, detect) only turn a batch into a
dict of losses; everything else (precision, accumulation, schedule, clipping, logging,
checkpoints, resume, DDP, a time budget, online evaluation, a clean stop on SIGINT or
SIGTERM) happens here, once.

The run's length is a number of optimizer steps, ``total_steps``: ``epochs x steps per
epoch``, or, with ``time_budget``, what the budget holds at the step time measured over
the first ``probe_steps`` steps (which count towards it). Every schedule (the lr, and a
task's own through ``on_plan``) is sized by it, so it completes at the budget.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from tqdm import tqdm

from ..errors import NonFiniteLossError, TrainingInterrupted, UserError
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

    def on_plan(self, total_steps: int, steps_per_epoch: int) -> None:
        """Optional: the run's length in optimizer steps, known at the start (or, with a
        time budget, after the first steps): size per-step schedules by it."""


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
    time_budget: float | None = None  # seconds of training (evaluation not counted)
    planned_steps: int | None = None  # a plan already made (resume): no new timing
    probe_steps: int = 10  # steps timed before a budget is turned into a plan
    on_plan: Callable[[int, float | None], None] | None = None  # (steps, s/step): record it
    # online evaluation: (model, step) -> metrics, at ``online_evals`` evenly spaced steps
    online_eval: Callable[[nn.Module, int], dict] | None = None
    online_evals: int = 0
    clock: Callable[[], float] = time.perf_counter  # injectable for tests


@dataclass
class TrainState:
    epoch: int = 0  # next epoch to run
    micro: int = 0  # micro-batches of that epoch already done (a mid-epoch resume)
    step: int = 0  # optimizer steps taken
    best: float = -math.inf
    bad_images: set[str] = field(default_factory=set)
    train_seconds: float = 0.0  # training time so far (the budget's clock)


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
        # the plan: total optimizer steps; with a budget, made after the probe steps
        self.total_steps = loop.planned_steps or loop.epochs * self.steps_per_epoch
        self.planned = loop.time_budget is None or loop.planned_steps is not None
        self.step_time: float | None = None  # measured s/step (a budget's plan)
        self._probe: list[float] = []  # clock at the end of each probe step
        self._clock_at: float | None = None  # when the budget clock last started
        self._eval_steps: set[int] = set()
        self._stop: int | None = None  # the signal that asked to stop

    # ------------------------------------------------------------------ public
    def resume(self, path: str | Path, trust: bool = False) -> None:
        """Restore model, optimizer, scaler, counters and RNG from a checkpoint."""
        saved = restore(Path(path), self.model, self.optimizer, self.scaler, self.meta, trust)
        position = saved.get("position") or {"epoch": saved["epoch"] + 1, "micro": 0}
        self.state.epoch, self.state.micro = position["epoch"], position["micro"]
        self.state.step = saved.get("step", 0)
        self.state.best = saved.get("best", -math.inf)
        self.state.train_seconds = saved.get("train_seconds", 0.0)
        self.logger.truncate(self.state.step, self.state.epoch)
        e, step = self.state.epoch, self.state.step
        if self.state.micro:
            where = f"at {self.state.micro} batches into epoch {e + 1} (step {step})"
            then = f"the rest of epoch {e + 1}/{self.epochs}"
        else:
            where, then = f"after epoch {e} (step {step})", f"epoch {e + 1}/{self.epochs}"
        log.info("resumed from %s %s; next: %s", path, where, then)

    @property
    def epochs(self) -> int:
        """Epochs the plan spans (the last one may be partial)."""
        return -(-self.total_steps // self.steps_per_epoch)

    def fit(self) -> dict:
        last: dict = {}
        self._call_task("on_plan", self.total_steps, self.steps_per_epoch)
        self._schedule_online_evals()
        with _stop_on_signals(self):
            self._clock_at = self.cfg.clock()
            while self.state.epoch < self.epochs and not self._done():
                epoch = self.state.epoch
                last = self.train_one_epoch(epoch)
                self._pause_clock()
                if self._should_eval(epoch):
                    last.update(self._evaluate(epoch))
                self.state.epoch, self.state.micro = epoch + 1, 0
                self._save(epoch, last)
                record = {"kind": "epoch", "epoch": epoch + 1, "step": self.state.step, **last}
                self.logger.write(record)
                log.info("epoch %d/%d  %s", epoch + 1, self.epochs, _fmt(last))
                self._clock_at = self.cfg.clock()
        self.logger.close()
        return last

    # ------------------------------------------------------------------ epoch
    def train_one_epoch(self, epoch: int) -> dict:
        self.model.train()
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        skip = self.state.micro  # a mid-epoch resume: the batches already trained on
        batches = self._batches_from(skip)
        window = _Window(self.device)
        total = _Window(self.device)
        bar = tqdm(
            total=self.micro_steps,
            initial=skip,
            desc=f"epoch {epoch + 1}/{self.epochs}",
            disable=None if dist.is_main() else True,
            leave=False,
            dynamic_ncols=True,
        )
        t_wait = time.perf_counter()
        for i, batch in enumerate(batches, start=skip):
            if i >= self.micro_steps or self._done():
                break
            window.wait += time.perf_counter() - t_wait
            self._note_bad(batch.pop("bad", []) if isinstance(batch, dict) else [])
            loss = self._micro_step(epoch, i, batch)
            n = _batch_size(batch)
            window.add(loss, n, self._extras)
            total.add(loss, n, self._extras)
            if (i + 1) % self.cfg.accum_iter == 0:
                self._after_step(epoch, i, window, bar)
            elif (i + 1) % self.cfg.log_every == 0:
                self._log_window(epoch, window, bar)
            bar.update(1)
            t_wait = time.perf_counter()
        bar.close()
        loss, _, extras = total.reduce()
        stats = {"loss": loss, "lr": self._lr(), **extras}
        self._check_finite(stats["loss"], epoch)
        stats["skipped_images"] = self._gather_bad()
        return stats

    def _batches_from(self, skip: int):
        """The epoch's batches from micro-batch ``skip`` on: the sampler starts there when
        it can (no image is read twice), else the first ``skip`` batches are drawn and
        dropped (streamed shards)."""
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_start"):
            sampler.set_start(skip * self.loader.batch_size)
            return iter(self.loader)
        it = iter(self.loader)
        for _ in range(skip):
            next(it, None)
        return it

    def _after_step(self, epoch: int, i: int, window: _Window, bar) -> None:
        """After each optimizer step: the log window, the budget's plan, online
        evaluation, and a requested stop (saved at this step, then raised)."""
        if (i + 1) % self.cfg.log_every == 0:
            self._log_window(epoch, window, bar)
        if not self.planned:
            self._probe_step()
        if self.state.step in self._eval_steps:
            self._online_eval(epoch)
        if self._stop_now((i + 1) % self.cfg.log_every == 0):
            self.state.micro = i + 1
            self._interrupt(epoch)

    # ------------------------------------------------------------------ the budget
    def _pause_clock(self) -> None:
        """Add the training time since the clock started to ``train_seconds``."""
        if self._clock_at is not None:
            self.state.train_seconds += self.cfg.clock() - self._clock_at
            self._clock_at = None

    def _elapsed(self) -> float:
        running = self.cfg.clock() - self._clock_at if self._clock_at is not None else 0.0
        return self.state.train_seconds + running

    def _probe_step(self) -> None:
        """Time the first steps; after ``probe_steps`` of them, make the plan (the same on
        every rank: rank 0's, broadcast)."""
        self._probe.append(self._elapsed())
        if len(self._probe) < self.cfg.probe_steps + 1 and not self._done():
            return
        # steady-state s/step: the first step (kernel selection, workers starting) is left
        # out of the rate but its time counts towards the budget
        rate = (self._probe[-1] - self._probe[0]) / max(len(self._probe) - 1, 1)
        total = plan_steps(
            self.cfg.time_budget,
            self._probe[-1],
            self.state.step,
            rate,
            warmup_steps(self.cfg.warmup_epochs, self.steps_per_epoch),
        )
        total, rate = dist.broadcast_object((total, rate))
        self.total_steps, self.step_time, self.planned = total, rate, True
        self._call_task("on_plan", total, self.steps_per_epoch)
        self._schedule_online_evals()
        if self.cfg.on_plan is not None:
            self.cfg.on_plan(total, rate)
        log.info(
            "time budget %s: %.3f s/step measured over %d steps -> %d steps in all "
            "(%.2f epochs of %d steps)",
            _seconds(self.cfg.time_budget),
            rate,
            len(self._probe) - 1,
            total,
            total / self.steps_per_epoch,
            self.steps_per_epoch,
        )

    # ------------------------------------------------------------------ online evaluation
    def _schedule_online_evals(self) -> None:
        """``online_evals`` evenly spaced steps of the plan (the last one included)."""
        k, total = self.cfg.online_evals, self.total_steps
        if self.cfg.online_eval is None or k < 1 or not self.planned:
            return
        self._eval_steps = {max(1, round(total * j / k)) for j in range(1, k + 1)}

    def _online_eval(self, epoch: int) -> None:
        """Evaluate the model now (the budget's clock stopped): logged as a 'monitor'
        record with the seconds it took."""
        self._pause_clock()
        t0 = time.perf_counter()
        was_training = self.model.training
        self.model.eval()
        try:
            with precision_lib.autocast(self.cfg.precision, self.device):
                metrics = self.cfg.online_eval(self.model, self.state.step) or {}
        finally:
            self.model.train(was_training)
        seconds = time.perf_counter() - t0
        record = {"kind": "monitor", "epoch": epoch + 1, "step": self.state.step, **metrics}
        self.logger.write({**record, "seconds": seconds, "train_seconds": self._elapsed()})
        log.info("step %d  %s  (%.1f s)", self.state.step, _fmt(metrics), seconds)
        self._clock_at = self.cfg.clock()

    # ------------------------------------------------------------------ stopping
    def _stop_now(self, synced: bool) -> bool:
        """Whether a stop was asked: checked every step in one process; with several,
        where the ranks synchronise anyway (the log window), so all stop at one step."""
        if dist.world_size() == 1:
            return self._stop is not None
        if not synced:
            return False
        flag = torch.tensor([float(self._stop or 0)], device=self.device)
        self._stop = int(dist.all_reduce_max(flag).item()) or None
        return self._stop is not None

    def _interrupt(self, epoch: int) -> None:
        """Save where the run stands (mid-epoch: resumed exactly from the next batch),
        then stop with the way to continue."""
        self._pause_clock()
        self._save(epoch, {})
        name = signal.Signals(self._stop).name if self._stop else "a signal"
        raise TrainingInterrupted(
            f"stopped by {name} at step {self.state.step} ({self.state.micro} batches into "
            f"epoch {epoch + 1}); saved {self.out_dir / 'checkpoint-last.pth'}: continue "
            f"with --resume {self.out_dir} (resume= in Python)",
            self._stop or 0,
        )

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
        """The lr at optimizer step ``it`` (micro-batch ``i`` of ``epoch``) of a run of
        ``total_steps``: per micro-batch fractional epochs (MAE), per-step arrays (DINO)
        or the method's own rule."""
        cfg, total = self.cfg, self.total_steps
        if cfg.lr_fn is not None:
            return cfg.lr_fn(it, total)
        if cfg.schedule == "cosine_iter":
            warmup = warmup_steps(cfg.warmup_epochs, self.steps_per_epoch)
            return cosine_iter(it, cfg.base_lr, cfg.min_lr, total, warmup)
        frac = epoch + i / self.micro_steps
        epochs = total / self.steps_per_epoch
        return lr_at(cfg.schedule, frac, cfg.base_lr, cfg.min_lr, cfg.warmup_epochs, epochs)

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
        last = epoch + 1 == self.epochs or self._done()
        has_eval = callable(getattr(self.task, "evaluate", None))
        return has_eval and (last or (epoch + 1) % self.cfg.eval_every == 0)

    def _evaluate(self, epoch: int) -> dict:
        with precision_lib.autocast(self.cfg.precision, self.device):
            return self.task.evaluate(self.model, epoch) or {}

    def _done(self) -> bool:
        """The plan is done (or ``max_steps``, a smoke run's cap)."""
        capped = self.cfg.max_steps is not None and self.state.step >= self.cfg.max_steps
        return capped or self.state.step >= self.total_steps

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
            "position": {"epoch": self.state.epoch, "micro": self.state.micro},
            "train_seconds": self.state.train_seconds,
            "mimkit_version": __version__,
            **self.meta,
        }
        done = epoch + 1
        if self.state.micro:  # a mid-epoch stop: the last checkpoint only
            write_checkpoints(self.out_dir, state, None, False)
            return
        numbered = done % self.cfg.save_every == 0 or done == self.epochs
        write_checkpoints(self.out_dir, state, done if numbered else None, improved)

    def _improved(self, metrics: dict) -> bool:
        key = self.cfg.monitor
        if not key or key not in metrics or metrics[key] <= self.state.best:
            return False
        self.state.best = metrics[key]
        return True


def plan_steps(
    budget: float, elapsed: float, steps_done: int, step_time: float, warmup: int
) -> int:
    """Optimizer steps a run of ``budget`` seconds holds: those done in ``elapsed`` plus
    what the rest of the budget gives at ``step_time``. A budget that cannot finish the
    warm-up (or a single step) is a one-line error with the minimum it measured."""
    total = steps_done + int(max(budget - elapsed, 0.0) // max(step_time, 1e-9))
    need = max(warmup, 1) + 1
    if total < need:
        least = elapsed + (need - steps_done) * step_time
        raise UserError(
            f"train.time_budget={_seconds(budget)} holds {total} steps at the measured "
            f"{step_time:.3g} s/step ({elapsed:.1f} s went to the first {steps_done}); the "
            f"warm-up alone needs {need - 1} steps: give at least {_seconds(least)} "
            "(--time-budget), or fewer warm-up epochs (optim.warmup_epochs)"
        )
    return total


def parse_seconds(text) -> float:
    """'15m', '2h', '90s', '1h30m' or a number of seconds -> seconds."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        parts = re.fullmatch(
            r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*"
            r"(?:(\d+(?:\.\d+)?)s?)?\s*",
            str(text),
        )
        if not parts or not any(parts.groups()):
            raise UserError(
                f"train.time_budget={text!r} is not a duration: use e.g. 15m, 2h, 90s, 1h30m "
                "or a number of seconds"
            )
        h, m, sec = (float(g) if g else 0.0 for g in parts.groups())
        seconds = 3600 * h + 60 * m + sec
    if not seconds > 0:
        raise UserError(f"train.time_budget must be above 0 seconds, got {text!r}")
    return seconds


def _seconds(s: float) -> str:
    return f"{s / 60:.1f}m" if s >= 120 else f"{s:.0f}s"


@contextlib.contextmanager
def _stop_on_signals(trainer: Trainer):
    """SIGINT and SIGTERM (what Slurm and Kubernetes send before a preemption) ask the
    trainer to stop at the next step, saved; a second SIGINT stops at once."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def ask(signum, frame):
        if trainer._stop is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        trainer._stop = signum
        log.warning("%s: stopping after this step (saved, resumable)", signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, ask)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
