"""What every job shares: resolving its config, starting the run, and fitting a task on
the one Trainer.

    cfg, resume = resolve("pretrain", preset, overrides, values, resume)
    ctx = start(cfg, resume)          # device, process group, console, precision, seed
    out = ctx.run_dir()               # the run folder (config.yaml written once it is safe)
    fitted = fit(ctx, task, model, make_optimizer, loader, lr, meta)   # resume, fit, save
"""

from __future__ import annotations

import itertools
import logging
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import config as config_lib
from ..engine import precision as precision_lib
from ..engine.checkpoint import LAST, load_training_state, resume_path
from ..engine.logging import RunLogger, setup_console
from ..engine.loop import LoopConfig, Trainer, parse_seconds
from ..engine.schedule import effective_lr
from ..engine.trackers import select_loggers
from ..errors import UserError
from ..utils import distributed as dist
from ..utils.io import atomic_write_text, remove_stale_temps
from ..utils.rng import seed_all
from ..utils.runlock import RunLock, lock_run_dir
from .registry import get_recipe, load_config

log = logging.getLogger("mimkit")


def resolve(
    task: str,
    preset: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    values: dict | None = None,
    resume: str | Path | None = None,
    trust: bool = False,
) -> tuple[config_lib.Config, Path | None]:
    """The run's config: recipe defaults <- preset <- overrides <- values. On resume the
    run's saved config is the base (and its folder the default ``out``), and a pretraining
    checkpoint of another model is refused before anything is written."""
    recipe = get_recipe(task)
    base, path, saved_model, stored_data = None, None, None, None
    if resume:
        path = resume_path(resume)
        state = load_training_state(path, trust=trust)
        base, saved_model = state.get("config"), state.get("model_name")
        if base is None:
            raise UserError(f"{path} holds no config; it was not written by mimkit")
        has_out = any(str(o).startswith("out=") for o in overrides) or "out" in (values or {})
        if not has_out:
            base["out"] = str(path.parent)
        stored_data = _plain_data_location(base, path)
        saved = {key: _get(base, key) for key in _EXACT_KEYS} | {"data.path": stored_data}
    preset = preset or (None if base else recipe.preset)
    cfg = load_config(preset, overrides, base=base, task=task, values=values)
    if resume:
        _data_from_checkpoint(cfg, stored_data)
        _note_inexact_resume(saved, cfg)
    if trust:
        cfg.trust_checkpoint = True
    if path and task == "pretrain" and saved_model and saved_model != cfg.model.name:
        raise UserError(f"{path} holds {saved_model}, the config asks for {cfg.model.name}")
    return cfg, path


def execute(recipe, cfg: config_lib.Config, resume: Path | None = None):
    """Run a job's recipe as the CLI and the Python API do: the run folder's lock is freed
    when the run ends, however it ends, and running out of memory is a one-line UserError
    that names the batch size and what to lower."""
    before = set(_LIVE)
    try:
        return recipe.run(cfg, resume)
    except RuntimeError as e:
        if not is_out_of_memory(e):
            raise
        reason = memory_reason(e)
    finally:
        for lock in set(_LIVE) - before:
            lock.release()
    # raised out here, not from the except block: the failed step's tensors are freed
    raise UserError(_lower_the_batch(cfg, recipe.trains, reason))


def is_out_of_memory(e: BaseException) -> bool:
    """torch's OutOfMemoryError (CUDA), or the CPU allocator's / MPS's RuntimeError."""
    text = str(e).lower()
    return isinstance(e, torch.OutOfMemoryError) or any(
        s in text for s in ("can't allocate memory", "out of memory")
    )


def memory_reason(e: BaseException) -> str:
    """'it tried to allocate 2.00 GiB' from an allocator's message (else its first line)."""
    text = str(e)
    found = re.search(r"tried to allocate ([\d.]+ ?[KMGT]i?B|\d+ bytes)", text, re.I)
    if found is None:
        return (text.strip().splitlines() or [type(e).__name__])[0][:120]
    amount = found.group(1)
    if amount.endswith(" bytes"):
        amount = f"{int(amount.split()[0]) / 2**30:.2f} GiB"
    return f"it tried to allocate {amount}"


def _lower_the_batch(cfg: config_lib.Config, trains: bool, reason: str) -> str:
    b, accum, eval_b = cfg.data.batch_size, cfg.optim.accum_iter, cfg.eval.batch_size
    if not trains:
        return (
            f"out of memory at data.batch_size={b} / eval.batch_size={eval_b} per process "
            f"({reason}): lower --batch-size or eval.batch_size"
        )
    effective = b * accum * dist.world_size()
    return (
        f"out of memory at data.batch_size={b} per process ({reason}): lower --batch-size; "
        f"optim.accum_iter keeps the effective batch of {effective} "
        f"(e.g. --batch-size {max(b // 2, 1)} optim.accum_iter={accum * 2})"
    )


# what an exact continuation keeps: the data and its order, the steps and their batches
_EXACT_KEYS = (
    "data.path",
    "data.file_list",
    "data.num_samples",
    "data.batch_size",
    "optim.accum_iter",
)


_ABSENT = object()  # a key an older run's config lacks


def _get(tree: dict, key: str):
    for part in key.split("."):
        tree = tree.get(part, _ABSENT) if isinstance(tree, dict) else _ABSENT
    return tree


def _note_inexact_resume(saved: dict, cfg: config_lib.Config) -> None:
    """One warning line when a resumed run reads other data or batches than the run did
    (honoured, but the continuation is no longer the run it would have been)."""
    now = config_lib.to_dict(cfg)
    changed = [
        f"{key} {saved[key]} -> {_get(now, key)}"
        for key in _EXACT_KEYS
        if saved[key] is not _ABSENT and not _same_value(saved[key], _get(now, key))
    ]
    if changed:
        log.warning(
            "resuming with %s: the continuation is not exact (the run's data order, steps "
            "and lr were set for the old values)",
            ", ".join(changed),
        )


def _same_value(old, new) -> bool:
    if isinstance(old, str) and isinstance(new, str) and is_plain_path(old) and is_plain_path(new):
        return Path(old).expanduser().resolve() == Path(new).expanduser().resolve()
    return old == new


def _plain_data_location(base: dict, path: Path) -> str | None:
    """Take the data location out of a checkpoint's config unless it is a plain path: a
    ``pipe:`` command or a URL in a file someone sent you must never run (the user gives
    it again with --data). Returns what the checkpoint named, for the run header."""
    data = base.get("data") if isinstance(base.get("data"), dict) else {}
    stored = data.get("path")
    if stored is not None and not is_plain_path(str(stored)):
        data["path"] = None
    return stored


def is_plain_path(location: str) -> bool:
    """A local path: no ``pipe:`` command and no URL (``hf:DIR`` is a local folder)."""
    return not location.startswith("pipe:") and "://" not in location


def _data_from_checkpoint(cfg: config_lib.Config, stored: str | None) -> None:
    if cfg.data.path is None and stored is not None and not is_plain_path(str(stored)):
        raise UserError(
            f"the run read its data from {stored!r}, a command or URL stored in its "
            "checkpoint, which mimkit never runs from a file: give the data again with "
            "--data (data= in Python)"
        )
    if cfg.data.path is not None:
        origin = "from the checkpoint's config" if cfg.data.path == stored else "given"
        log.info("data: %s (%s)", cfg.data.path, origin)


@dataclass
class RunContext:
    """A started run: its config, device, precision and (once made) its folder."""

    cfg: config_lib.Config
    device: torch.device
    precision: str
    resume: Path | None = None
    out: Path | None = None
    _logger: RunLogger | None = None
    _lock: RunLock | None = None  # rank 0's lock on the run folder, held while the run runs
    precision_reason: str = "set"  # why: 'auto: CPU has AMX/AVX512-BF16', ...
    lr_batch: int = 256  # the batch optim.blr is given for (a method's rule: 256, 512)

    @property
    def effective_batch(self) -> int:
        c = self.cfg
        return c.data.batch_size * c.optim.accum_iter * dist.world_size()

    def lr(self) -> float:
        """optim.lr, or optim.blr x effective batch / ``lr_batch`` (linear scaling)."""
        c = self.cfg.optim
        return effective_lr(c.blr, c.lr, self.effective_batch, self.lr_batch)

    def run_dir(self) -> Path:
        if self.out is None:
            self.out, self._lock = prepare_run_dir(self.cfg, resuming=self.resume is not None)
        return self.out

    def loop_config(self, lr: float, monitor: str | None = None, **changes) -> LoopConfig:
        c = self.cfg
        settings = dict(
            epochs=c.train.epochs,
            base_lr=lr,
            min_lr=c.optim.min_lr,
            warmup_epochs=c.optim.warmup_epochs,
            accum_iter=c.optim.accum_iter,
            clip_grad=c.optim.clip_grad,
            precision=self.precision,
            log_every=c.train.log_every,
            save_every=c.train.save_every,
            max_steps=c.train.max_steps,
            monitor=monitor,
            eval_every=c.train.eval_every,
            schedule=str(c.optim.schedule),
            max_abs_weight=c.train.max_abs_weight,
            time_budget=parse_seconds(c.train.time_budget) if c.train.time_budget else None,
            planned_steps=c.train.planned_steps if c.train.time_budget else None,
        )
        return LoopConfig(**{**settings, **changes})

    def logger(self) -> RunLogger:
        """The run's log.jsonl and trackers (train.loggers: TensorBoard, W&B, MLflow, CSV),
        made once: the Trainer writes to it, the recipe adds its pictures after fit."""
        if self._logger is None:
            t, out = self.cfg.train, self.run_dir()
            self._logger = RunLogger(
                out,
                loggers=select_loggers(t.loggers, t.tensorboard),
                config=config_lib.to_dict(self.cfg),
                run_name=t.run_name or out.name,
                project=t.wandb_project,
                tags=t.tags,
                mlflow_uri=t.mlflow_uri,
                mlflow_experiment=t.mlflow_experiment,
            )
        return self._logger

    def finish(self, pictures: list[Path | None] = ()) -> None:
        """Log the run's pictures to the trackers and end their runs."""
        if self._logger is None:
            return
        for picture in pictures:
            if picture is not None:
                self._logger.log_image(picture)
        self._logger.finish()


def start(cfg: config_lib.Config, resume: Path | None = None) -> RunContext:
    """Device, process group (under torchrun), console, precision (``auto`` resolved for
    this machine, recorded in ``cfg.train.precision_resolved``) and seed (the same
    initial weights on every rank)."""
    device = dist.resolve_device(cfg.train.device)
    dist.init(device, cfg.train.dist_timeout_min)
    setup_console()
    resolved = precision_lib.resolve_with_reason(str(cfg.train.precision), device)
    # config.yaml (written with the run folder) records what 'auto' became; the log why
    cfg.train.precision_resolved = resolved.precision
    log.info("%s on %s", resolved.describe(), device)
    seed_all(cfg.train.seed)
    return RunContext(cfg, device, resolved.precision, resume, precision_reason=resolved.reason)


def prepare_run_dir(cfg: config_lib.Config, resuming: bool) -> tuple[Path, RunLock | None]:
    """runs/<name> by default (a fresh runs/<name>-N when it exists); an explicit ``out``
    holding a run is refused unless resuming, so a new run never overwrites another's
    checkpoints. Rank 0 locks the folder for the life of the run: a second run into it
    is refused while this one runs (the lock is returned; dropping it frees it). Temp
    files of an interrupted write are removed."""
    claimed, lock = None, None
    if dist.is_main():
        try:
            out, lock = _claim_run_dir(cfg, resuming)
            claimed = str(out)
        except UserError as e:
            claimed = e
    claimed = dist.broadcast_object(claimed)  # every rank stops on rank 0's error
    if isinstance(claimed, UserError):
        raise UserError(str(claimed))
    out = Path(claimed)
    cfg.out = str(out)
    if dist.is_main():
        stale = remove_stale_temps(out)
        if stale:
            log.info("removed %d temp files of an interrupted write in %s", len(stale), out)
        if not resuming:  # a resumed run's config is written once its checkpoint loaded
            save_config(cfg)
    dist.barrier()
    return out, lock


# the run folder locks this process holds (`execute` frees those of its run, however the
# run ends; a run's context holds its lock, so a lock also goes with its run's context)
_LIVE: weakref.WeakSet[RunLock] = weakref.WeakSet()


def _claim_run_dir(cfg: config_lib.Config, resuming: bool) -> tuple[Path, RunLock]:
    """Make (or, for ``out``, take) the run folder and lock it (rank 0)."""
    if cfg.out:
        out = Path(cfg.out)
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file: a run writes a folder; choose another --out")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot make the run folder {out}: {e.strerror}") from None
    else:  # claimed by mkdir, which only one process can win for a name
        out = _free_dir(Path("runs") / (cfg.name or cfg.task), claim=True)
    lock = lock_run_dir(out)
    if cfg.out and not resuming and (out / LAST).exists():
        lock.release()
        raise UserError(
            f"{cfg.out} already holds a run: continue it with --resume {cfg.out} "
            "(resume= in Python), or choose another --out (out=)"
        )
    _LIVE.add(lock)
    return out, lock


def save_config(cfg: config_lib.Config) -> None:
    """The resolved config into the run folder (rank 0)."""
    if dist.is_main():
        atomic_write_text(Path(cfg.out) / "config.yaml", config_lib.to_yaml(cfg))


def planned_run_dir(cfg: config_lib.Config) -> Path:
    """The folder a run of ``cfg`` will write (``out``, or the free runs/<name>)."""
    return Path(cfg.out) if cfg.out else _free_dir(Path("runs") / (cfg.name or cfg.task))


def _free_dir(path: Path, claim: bool = False) -> Path:
    """``path``, else ``path-2``, ``path-3``...: the first that does not exist (an existing
    folder may belong to a run still starting, before its first checkpoint). With
    ``claim`` the folder is made here: of two runs starting together, one gets each."""
    for n in itertools.count(1):
        candidate = path if n == 1 else path.parent / f"{path.name}-{n}"
        if not claim:
            if not candidate.exists():
                return candidate
            continue
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            continue
        except OSError as e:
            raise UserError(f"cannot make the run folder {candidate}: {e.strerror}") from None
    raise AssertionError("unreachable")


@dataclass
class Fitted:
    trainer: Trainer
    last: dict = field(default_factory=dict)  # the last epoch's metrics

    @property
    def best(self) -> float:
        return self.trainer.state.best


def fit(
    ctx: RunContext,
    task,
    model: torch.nn.Module,
    make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer],
    loader,
    lr: float,
    meta: dict,
    monitor: str | None = None,
    **loop_changes,
) -> Fitted:
    """Wrap (DDP/FSDP/compile), build the optimizer (after wrapping: FSDP replaces the
    parameters), make the Trainer, reseed per rank (masking, mixup and drop path differ
    across ranks), resume, write config.yaml, fit."""
    cfg = ctx.cfg
    wrapped = dist.wrap(model, ctx.device, cfg.train.fsdp, cfg.train.compile)
    meta = {"config": config_lib.to_dict(cfg), **meta}

    def record_plan(steps: int, step_time: float | None) -> None:
        """config.yaml and every later checkpoint hold the plan (a resume continues it)."""
        cfg.train.planned_steps, cfg.train.step_time = steps, step_time
        meta["config"]["train"].update(planned_steps=steps, step_time=step_time)
        save_config(cfg)

    loop = ctx.loop_config(lr, monitor, **{"on_plan": record_plan, **loop_changes})
    trainer = Trainer(
        task,
        wrapped,
        make_optimizer(model),
        loader,
        ctx.device,
        loop,
        ctx.run_dir(),
        meta=meta,
        logger=ctx.logger(),
    )
    seed_all(cfg.train.seed + 1 + dist.rank())
    if ctx.resume:
        trainer.resume(ctx.resume, trust=cfg.trust_checkpoint)
        save_config(cfg)
    return Fitted(trainer, trainer.fit())
