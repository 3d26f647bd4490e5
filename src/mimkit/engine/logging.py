"""Run-folder logging: JSONL lines, optional TensorBoard, console messages. Rank 0 only."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from ..utils import distributed as dist
from ..utils.io import atomic_write_text

log = logging.getLogger("mimkit")


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (redirections made later are honoured)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def setup_console(level: int = logging.INFO) -> None:
    """Messages to stderr as 'mimkit: ...' on rank 0; warnings only on other ranks."""
    if log.handlers:
        log.setLevel(level if dist.is_main() else logging.WARNING)
        return
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("mimkit: %(message)s"))
    log.addHandler(handler)
    log.setLevel(level if dist.is_main() else logging.WARNING)
    log.propagate = False


class RunLogger:
    """Appends one JSON object per line to ``log.jsonl``; mirrors scalars to TensorBoard."""

    def __init__(self, out_dir: str | Path, tensorboard: bool = True):
        self.enabled = dist.is_main()
        self.path = Path(out_dir) / "log.jsonl"
        self.tb = None
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(out_dir) / "tb"))
            except ImportError:  # tensorboard not installed: JSONL only
                self.tb = None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=_jsonable) + "\n")
        if self.tb is not None and "step" in record:
            kind = record.get("kind", "train")
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "time", "epoch"):
                    self.tb.add_scalar(f"{kind}/{k}", v, record["step"])

    def truncate(self, step: int, epochs_done: int) -> int:
        """On resume: drop rows written after the checkpoint (steps redone after a kill),
        so the log holds each step once. Returns how many rows were dropped."""
        if not self.enabled or not self.path.is_file():
            return 0
        rows = read_log(self.path)
        keep = [r for r in rows if not _after(r, step, epochs_done)]
        if len(keep) != len(rows):
            text = "".join(json.dumps(r, default=_jsonable) + "\n" for r in keep)
            atomic_write_text(self.path, text)
        return len(rows) - len(keep)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _after(row: dict, step: int, epochs_done: int) -> bool:
    if row.get("kind") == "train":
        return row.get("step", 0) > step
    if row.get("kind") == "epoch":
        return row.get("epoch", 0) > epochs_done
    return False


def _jsonable(x):
    return str(x)  # tensors, paths, numpy scalars: their printed form


def read_log(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
