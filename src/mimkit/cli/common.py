"""Flags shared by the training commands, and run-folder handling."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .. import config as C
from ..engine import distributed as dist
from ..engine.checkpoint import load_training_state, resume_path
from ..engine.loop import LoopConfig
from ..errors import UserError
from ..utils.io import atomic_write_text, remove_stale_temps

log = logging.getLogger("mimkit")


def add_training_flags(
    p: argparse.ArgumentParser, default_preset: str | None, training: bool = True
) -> None:
    """Flags every configured command shares; ``training`` adds --epochs and --resume."""
    default = f"default: {default_preset}; " if default_preset else ""
    p.add_argument(
        "--config",
        "-c",
        default=None,
        help=f"preset name or YAML path ({default}see `mimkit configs`)",
    )
    p.add_argument("--data", help="image folder, or ROOT with train/ and val/ class folders")
    p.add_argument("--out", help="run folder (default: runs/<name>)")
    p.add_argument("--name", help="run name (default: the preset name)")
    p.add_argument("--batch-size", type=int, help="data.batch_size, per process")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (train.device)")
    if training:
        p.add_argument("--epochs", type=int, help="train.epochs")
        p.add_argument(
            "--resume",
            metavar="PATH",
            help="continue exactly from a checkpoint file or a run folder",
        )
    add_trust_flag(p)
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. optim.blr=1e-3 eval.pool=avg",
    )


def add_trust_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="load checkpoints holding arbitrary Python objects (this can run code from the "
        "file: only for files you made or trust)",
    )


def flag_overrides(args: argparse.Namespace) -> list[str]:
    pairs = {
        "data.path": args.data,
        "out": args.out,
        "name": args.name,
        "train.epochs": getattr(args, "epochs", None),
        "data.batch_size": args.batch_size,
        "train.device": args.device,
        "eval.checkpoint": getattr(args, "checkpoint", None),
        "eval.pool": getattr(args, "pool", None),
        "trust_checkpoint": True if getattr(args, "trust_checkpoint", False) else None,
    }
    return [f"{k}={_quote(v)}" for k, v in pairs.items() if v is not None]


def _quote(v) -> str:
    # OmegaConf parses values as YAML; quote strings so paths like "1e3" or "null" stay strings.
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    return str(v)


def resolve_config(args, default_preset: str | None, task: str):
    """Config from preset + flags + overrides; on --resume, the run's saved config is the base."""
    base, resume = None, None
    if getattr(args, "resume", None):
        resume = resume_path(args.resume)
        state = load_training_state(resume, trust=args.trust_checkpoint)
        base, saved_model = state.get("config"), state.get("model_name")
        if base is None:
            raise UserError(f"{resume} holds no config; it was not written by mimkit")
        if not args.out:
            base["out"] = str(resume.parent)
    preset = args.config or (None if base else default_preset)
    cfg = C.load_config(preset, [*flag_overrides(args), *args.overrides], base=base, task=task)
    if resume and task == "pretrain" and saved_model and saved_model != cfg.model.name:
        raise UserError(f"{resume} holds {saved_model}, the config asks for {cfg.model.name}")
    return cfg, resume


def prepare_run_dir(cfg, resuming: bool) -> Path:
    """runs/<name> by default (numbered if taken); an explicit --out holding a run is refused
    unless resuming, so a new run never overwrites another's checkpoints."""
    if cfg.out:
        out = Path(cfg.out)
        if not resuming and (out / "checkpoint-last.pth").exists():
            raise UserError(
                f"{out} already holds a run: continue it with --resume {out}, "
                "or choose another --out"
            )
    else:
        out = _free_dir(Path("runs") / (cfg.name or cfg.task))
    out = Path(dist.broadcast_object(str(out)))
    cfg.out = str(out)
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        stale = remove_stale_temps(out)
        if stale:
            log.info("removed %d temp files of an interrupted write in %s", len(stale), out)
        if not resuming:  # a resumed run's config is written once its checkpoint loaded
            save_config(cfg)
    dist.barrier()
    return out


def save_config(cfg) -> None:
    """The resolved config into the run folder (rank 0)."""
    if dist.is_main():
        atomic_write_text(Path(cfg.out) / "config.yaml", C.to_yaml(cfg))


def _free_dir(path: Path) -> Path:
    if not (path / "checkpoint-last.pth").exists():
        return path
    n = 2
    while (path.parent / f"{path.name}-{n}" / "checkpoint-last.pth").exists():
        n += 1
    return path.parent / f"{path.name}-{n}"


def loop_config(cfg, lr: float, precision: str, monitor: str | None = None) -> LoopConfig:
    """The training loop's settings from a resolved config (every training command)."""
    return LoopConfig(
        epochs=cfg.train.epochs,
        base_lr=lr,
        min_lr=cfg.optim.min_lr,
        warmup_epochs=cfg.optim.warmup_epochs,
        accum_iter=cfg.optim.accum_iter,
        clip_grad=cfg.optim.clip_grad,
        precision=precision,
        log_every=cfg.train.log_every,
        save_every=cfg.train.save_every,
        max_steps=cfg.train.max_steps,
        monitor=monitor,
        eval_every=cfg.train.eval_every,
        schedule=cfg.optim.schedule,
        max_abs_weight=cfg.train.max_abs_weight,
    )
