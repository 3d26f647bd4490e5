"""Training checkpoints: writing them (never diverged weights), finding a run's last one,
and restoring a run from it exactly (model, optimizer, scaler, counters, every rank's RNG).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..errors import NonFiniteLossError, UserError
from ..utils import distributed as dist
from ..utils.io import atomic_save, safe_torch_load
from ..utils.rng import set_rng_state

log = logging.getLogger("mimkit")

LAST = "checkpoint-last.pth"


def resume_path(path: str | Path) -> Path:
    """A checkpoint file, or a run folder whose ``checkpoint-last.pth`` is used."""
    p = Path(path)
    if p.is_dir():
        p = p / LAST
    if not p.is_file():
        raise UserError(f"nothing to resume at {path}: no such checkpoint file or run folder")
    return p


def load_training_state(path: Path, trust: bool = False) -> dict:
    state = safe_torch_load(path, trust=trust)
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a mimkit checkpoint (it holds a {type(state).__name__})")
    missing = {"model", "optimizer", "epoch"} - set(state)
    if missing:
        raise UserError(
            f"{path} is not a resumable mimkit checkpoint (no {', '.join(sorted(missing))})"
        )
    return state


def restore(path: Path, model, optimizer, scaler, meta: dict, trust: bool = False) -> dict:
    """Load a checkpoint into a (wrapped) model, its optimizer and scaler, and this rank's
    RNG; returns the checkpoint (its epoch, step, best). A checkpoint of another model is
    a one-line error naming what differs."""
    state = load_training_state(path, trust=trust)
    mine, theirs = meta.get("model_name"), state.get("model_name")
    if mine and theirs and mine != theirs:
        raise UserError(f"{path} holds {theirs}, the config asks for {mine}")
    if dist.is_fsdp(model):  # every rank holds the full dicts; each keeps its shard
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(
            model,
            optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
            options=StateDictOptions(full_state_dict=True),
        )
    else:
        try:
            dist.unwrap(model).load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            why = "; ".join(_arch_diffs(meta, state)) or _first(e)
            raise UserError(f"{path} does not fit this run's model: {why}") from None
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    rngs = state.get("rng") or []
    if len(rngs) == dist.world_size():
        set_rng_state(rngs[dist.rank()])
    else:
        log.warning(
            "checkpoint was written by %d processes, now %d: random streams restart",
            len(rngs),
            dist.world_size(),
        )
    return state


def _arch_diffs(meta: dict, state: dict) -> list[str]:
    ours, saved = meta.get("model_args"), state.get("model_args")
    if not (isinstance(ours, dict) and isinstance(saved, dict)):
        return []
    return [
        f"{k} {saved[k]} in the checkpoint vs {ours[k]} in the config"
        for k in sorted(set(ours) & set(saved))
        if saved[k] != ours[k]
    ]


def _first(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) < 200 else text[:197] + "..."


def check_weights(
    model: nn.Module, limit: float | None, where: str, note: Callable[[], str]
) -> None:
    """Before any save: every parameter finite and below ``limit`` on every rank (a
    diverged update of the epoch's last step must not replace a good checkpoint)."""
    worst, name = 0.0, None
    for n, p in dist.unwrap(model).named_parameters():
        t = p.detach()
        t = t.to_local() if hasattr(t, "to_local") else t  # FSDP shard
        if t.numel() == 0:
            continue
        m = t.abs().max().float()
        m = math.inf if not torch.isfinite(m) else m.item()
        if m > worst:
            worst, name = m, n
    worst_all = dist.all_gather_object(worst)
    bad = not all(math.isfinite(w) for w in worst_all) or (
        limit is not None and max(worst_all) > limit
    )
    if bad:
        what = "non-finite" if not math.isfinite(max(worst_all)) else f"{max(worst_all):.3g}"
        at = f" (largest in {name})" if name and dist.is_main() else ""
        raise NonFiniteLossError(
            f"the weights diverged at {where}: max |w| is {what}{at}, above "
            f"train.max_abs_weight={limit}; {note()}"
        )


def saved_note(out_dir: Path) -> str:
    """What is on disk, truthfully, for the stop messages."""
    last = Path(out_dir) / LAST
    if not last.is_file():
        return f"nothing was saved and no checkpoint exists yet in {out_dir}"
    try:
        done = int(load_training_state(last)["epoch"]) + 1
    except Exception:  # only for a message
        done = None
    at = f" (after epoch {done})" if done is not None else ""
    return (
        f"nothing was saved: {last}{at} is unchanged; once the cause is fixed, continue "
        f"from it with --resume {out_dir} (resume= in Python)"
    )


def full_state_dicts(model: nn.Module, optimizer) -> tuple[dict, dict]:
    """Full model and optimizer state (gathered from all ranks under FSDP)."""
    if dist.is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_state_dict(model, optimizer, options=options)
    return dist.unwrap(model).state_dict(), optimizer.state_dict()


def write_checkpoints(out_dir: Path, state: dict, numbered: int | None, best: bool) -> None:
    """``checkpoint-last.pth``, and ``checkpoint-NNNN.pth`` / ``checkpoint-best.pth`` when
    asked: each written to a temp file and renamed (a killed write never replaces one)."""
    out_dir = Path(out_dir)
    atomic_save(state, out_dir / LAST)
    if numbered is not None:
        atomic_save(state, out_dir / f"checkpoint-{numbered:04d}.pth")
    if best:
        atomic_save(state, out_dir / "checkpoint-best.pth")
