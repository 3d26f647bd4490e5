"""Training checkpoints: where a run's last checkpoint is, and reading one to resume."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..utils.io import atomic_save, safe_torch_load  # noqa: F401  (atomic_save re-exported)
from ..utils.rng import rng_state, seed_all, set_rng_state  # noqa: F401  (re-exported)

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
