"""Run-folder logging: JSONL lines, experiment trackers (TensorBoard, W&B, MLflow, CSV;
see ``trackers``), console messages. Rank 0 only."""

from __future__ import annotations

import atexit
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..utils import distributed as dist
from ..utils.io import WriteError, atomic_write_text
from . import trackers as T

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
    """Appends one JSON object per line to ``log.jsonl`` and mirrors each record, the run's
    parameters and pictures to the trackers named in ``loggers``.

    ``loggers``: names from ``trackers.TRACKERS`` (``RunLogger(out, False)`` /
    ``RunLogger(out, True)``, the older form, mean none / tensorboard). ``config``: the
    resolved config (nested dict), logged as flat ``a.b`` parameters. ``run_name``:
    default the run folder's name. ``project`` / ``tags``: W&B project and tags (tags also
    in MLflow). ``mlflow_uri``: default a SQLite store in ``<run>/mlruns``.

    ``close`` (the Trainer calls it after fit) flushes; the tracker runs stay open for
    pictures drawn after training (``log_image``) and end with ``finish`` or at exit.
    """

    def __init__(
        self,
        out_dir: str | Path,
        loggers: Sequence[str] | bool = ("tensorboard",),
        config: dict | None = None,
        run_name: str | None = None,
        project: str | None = None,
        tags: Sequence[str] = (),
        mlflow_uri: str | None = None,
        mlflow_experiment: str | None = None,
    ):
        self.enabled = dist.is_main()
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / "log.jsonl"
        if isinstance(loggers, bool):
            loggers = ["tensorboard"] if loggers else []
        names = T.select_loggers(loggers)  # on every rank: a typo fails everywhere alike
        self.trackers: dict[str, T.Tracker] = {}
        self.step = 0
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        options = dict(
            project=project,
            tags=list(tags),
            mlflow_uri=mlflow_uri,
            mlflow_experiment=mlflow_experiment,
        )
        for name in names:
            tracker = T.create(name, self.out_dir, run_name or self.out_dir.name, options)
            if tracker is not None:
                self.trackers[name] = tracker
        if self.trackers:
            atexit.register(self.finish)
        if config is not None:
            params = T.flatten(config)
            for tracker in self.trackers.values():
                tracker.log_params(params)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        try:
            with self.path.open("a") as f:
                f.write(json.dumps(record, default=_jsonable) + "\n")
        except OSError as e:  # full disk, quota: one line naming the log (earlier lines stay)
            raise WriteError(e.errno, f"cannot write {self.path}: {e.strerror}") from None
        if "step" in record:
            self.step = record["step"]
            for tracker in self.trackers.values():
                tracker.log_metrics(record)

    def log_image(self, path: str | Path, name: str | None = None, step: int | None = None):
        """A PNG (reconstructions, curves, confusion matrix) to the trackers that take
        pictures: TensorBoard images, W&B media, MLflow artifacts (``images/``)."""
        if not self.enabled or not self.trackers:
            return
        path = Path(path)
        if not path.is_file():
            log.warning("no picture to log at %s", path)
            return
        for tracker in self.trackers.values():
            tracker.log_image(path, name or path.stem, self.step if step is None else step)

    def truncate(self, step: int, epochs_done: int) -> int:
        """On resume: drop rows written after the checkpoint (steps redone after a kill),
        so the log holds each step once (the CSV files are rebuilt from it). Returns how
        many rows were dropped."""
        if not self.enabled or not self.path.is_file():
            return 0
        rows = read_log(self.path)
        keep = [r for r in rows if not _after(r, step, epochs_done)]
        if len(keep) != len(rows):
            text = "".join(json.dumps(r, default=_jsonable) + "\n" for r in keep)
            atomic_write_text(self.path, text)
            csv_tracker = self.trackers.get("csv")
            if csv_tracker is not None:
                csv_tracker.reset()
                for r in keep:
                    if "step" in r:
                        csv_tracker.log_metrics(r)
        return len(rows) - len(keep)

    def close(self) -> None:
        """Flush (end of training); pictures may still follow, see ``finish``."""
        for tracker in self.trackers.values():
            tracker.flush()

    def finish(self) -> None:
        """End the tracker runs (W&B finish, MLflow terminated, TensorBoard closed)."""
        trackers, self.trackers = self.trackers, {}
        atexit.unregister(self.finish)
        for name, tracker in trackers.items():
            try:
                tracker.finish()
            except Exception as e:  # a tracker failing at the end must not fail the run
                log.warning("could not close the %s run: %s", name, e)


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
