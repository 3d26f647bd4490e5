"""Experiment trackers behind ``RunLogger``: TensorBoard, Weights & Biases, MLflow, CSV.

Each gets what ``log.jsonl`` gets (every record's numbers as ``<kind>/<name>`` at its
``step``), the resolved config as flat ``a.b.c`` parameters, and PNG pictures. They run
on rank 0 only (RunLogger creates them there). A resumed run continues the same W&B /
MLflow run: its id is kept in the run folder (``wandb-run-id``, ``mlflow-run-id``).

Each follows its ecosystem's environment variables where the config gives no value:
``MLFLOW_TRACKING_URI`` / ``MLFLOW_EXPERIMENT_NAME`` (a team server instead of the run
folder's SQLite store), ``WANDB_DIR`` / ``WANDB_PROJECT`` / ``WANDB_ENTITY``. A value
given in the config wins over the environment.
"""

from __future__ import annotations

import csv
import importlib
import logging
import numbers
import os
import time
from pathlib import Path

from ..errors import UserError

log = logging.getLogger("mimkit")

TRACKERS = ("tensorboard", "wandb", "mlflow", "csv")
_SKIP = ("step", "time", "epoch")  # axes, not metrics
DEFAULT_NAME = "mimkit"  # W&B project / MLflow experiment when neither config nor env names one


def select_loggers(loggers, tensorboard: bool = True) -> list[str]:
    """``train.loggers`` checked and deduplicated; ``train.tensorboard=false`` (the older
    key) removes tensorboard."""
    names = [str(n).strip().lower() for n in loggers]
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise UserError(
            f"config key 'train.loggers' has '{unknown[0]}': choose from {', '.join(TRACKERS)}"
        )
    return [n for n in dict.fromkeys(names) if tensorboard or n != "tensorboard"]


def flatten(tree: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists and other leaves stay as they are."""
    flat = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            flat.update(flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def scalars(record: dict) -> dict[str, float]:
    """The record's numbers named ``<kind>/<name>`` (as TensorBoard always had them)."""
    kind = record.get("kind", "train")
    return {
        f"{kind}/{k}": float(v)
        for k, v in record.items()
        if isinstance(v, numbers.Real) and not isinstance(v, bool) and k not in _SKIP
    }


def from_config_or_env(value: str | None, env: str) -> str:
    """The config's value, else the environment variable ``env``, else 'mimkit'."""
    if value:
        return value
    return os.environ.get(env) or DEFAULT_NAME


def _require(module: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"train.loggers has {extra} but the {module.split('.')[0]} package is not "
            f"installed: pip install 'mimkit[{extra}]'"
        ) from None


class Tracker:
    """What RunLogger asks of a tracker; every method may be a no-op."""

    def log_params(self, params: dict) -> None:
        pass

    def log_metrics(self, record: dict) -> None:
        pass

    def log_image(self, path: Path, name: str, step: int) -> None:
        pass

    def flush(self) -> None:
        pass

    def finish(self) -> None:
        pass


def create(name: str, out_dir: Path, run_name: str, options: dict) -> Tracker | None:
    """One tracker by name; None when tensorboard is not installed (it is on by default)."""
    if name == "tensorboard":
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            log.info(
                "tensorboard is not installed: no tb/ logs (pip install 'mimkit[tensorboard]')"
            )
            return None
        return TensorBoardTracker(out_dir)
    if name == "wandb":
        return WandbTracker(out_dir, run_name, **options)
    if name == "mlflow":
        return MlflowTracker(out_dir, run_name, **options)
    return CsvTracker(out_dir)


# ---------------------------------------------------------------------------- TensorBoard


class TensorBoardTracker(Tracker):
    def __init__(self, out_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out_dir / "tb"))

    def log_params(self, params: dict) -> None:
        rows = "\n".join(f"| {k} | {v} |" for k, v in params.items())
        self.writer.add_text("config", "| key | value |\n|---|---|\n" + rows)

    def log_metrics(self, record: dict) -> None:
        for k, v in scalars(record).items():
            self.writer.add_scalar(k, v, record["step"])

    def log_image(self, path: Path, name: str, step: int) -> None:
        import numpy as np
        from PIL import Image

        with Image.open(path) as img:
            pixels = np.asarray(img.convert("RGB"))
        self.writer.add_image(name, pixels, step, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def finish(self) -> None:
        self.writer.close()


# ---------------------------------------------------------------------------- W&B


class WandbTracker(Tracker):
    """A W&B run in ``<run>/wandb`` (``$WANDB_DIR/wandb`` when set); ``WANDB_MODE=offline``
    keeps it local (``wandb sync`` uploads it later). The project is ``train.wandb_project``,
    else ``WANDB_PROJECT``; W&B reads ``WANDB_ENTITY`` itself. Metrics use ``step`` as their
    x axis (``define_metric``), so steps redone after a resume are logged again instead of
    dropped as out of order."""

    def __init__(
        self, out_dir: Path, run_name: str, project: str | None = None, tags=(), **_unused
    ):
        wandb = _require("wandb", "wandb")
        id_file = out_dir / "wandb-run-id"
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        self.run = wandb.init(
            project=from_config_or_env(project, "WANDB_PROJECT"),
            name=run_name,
            tags=list(tags) or None,
            dir=os.environ.get("WANDB_DIR") or str(out_dir),
            id=run_id,
            resume="allow",
            reinit="create_new",  # this logger's own run; never touches wandb.run of others
        )
        id_file.write_text(self.run.id + "\n")
        self.run.define_metric("*", step_metric="step")

    def log_params(self, params: dict) -> None:
        self.run.config.update(params, allow_val_change=True)

    def log_metrics(self, record: dict) -> None:
        self.run.log({"step": record["step"], **scalars(record)})

    def log_image(self, path: Path, name: str, step: int) -> None:
        import wandb

        self.run.log({"step": step, f"images/{name}": wandb.Image(str(path))})

    def finish(self) -> None:
        self.run.finish()


# ---------------------------------------------------------------------------- MLflow


class MlflowTracker(Tracker):
    """An MLflow run at ``train.mlflow_uri``, else ``MLFLOW_TRACKING_URI``, else in a
    SQLite store ``<run>/mlruns/mlflow.db`` with artifacts beside it (MLflow 3 retired the
    plain-folder store; look at it with ``mlflow ui --backend-store-uri
    sqlite:///<run>/mlruns/mlflow.db``). The experiment is ``train.mlflow_experiment``,
    else ``MLFLOW_EXPERIMENT_NAME``, else 'mimkit'."""

    def __init__(
        self,
        out_dir: Path,
        run_name: str,
        tags=(),
        mlflow_uri: str | None = None,
        mlflow_experiment: str | None = None,
        **_unused,
    ):
        tracking = _require("mlflow.tracking", "mlflow")
        for name in ("mlflow", "alembic"):  # database set-up chatter
            logging.getLogger(name).setLevel(logging.WARNING)
        mlflow_uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
        mlflow_experiment = from_config_or_env(mlflow_experiment, "MLFLOW_EXPERIMENT_NAME")
        artifacts = None
        if mlflow_uri is None:
            store = (out_dir / "mlruns").resolve()
            store.mkdir(parents=True, exist_ok=True)
            mlflow_uri, artifacts = f"sqlite:///{store / 'mlflow.db'}", (store / "artifacts")
        self.client = tracking.MlflowClient(tracking_uri=mlflow_uri)
        exp = self.client.get_experiment_by_name(mlflow_experiment)
        exp_id = (
            exp.experiment_id
            if exp
            else self.client.create_experiment(
                mlflow_experiment, artifact_location=artifacts.as_uri() if artifacts else None
            )
        )
        id_file = out_dir / "mlflow-run-id"
        if id_file.is_file():
            self.run_id = id_file.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            run = self.client.create_run(exp_id, run_name=run_name, tags={t: "true" for t in tags})
            self.run_id = run.info.run_id
            id_file.write_text(self.run_id + "\n")

    def log_params(self, params: dict) -> None:
        """Parameters are write-once in MLflow: on resume only new keys are added."""
        from mlflow.entities import Param

        old = self.client.get_run(self.run_id).data.params
        new = {k: str(v)[:6000] for k, v in params.items()}
        changed = sorted(k for k in new if k in old and old[k] != new[k])
        if changed:
            log.warning("mlflow keeps the first value of changed parameters: %s", changed[:5])
        todo = [Param(k, v) for k, v in new.items() if k not in old]
        for i in range(0, len(todo), 100):  # MLflow takes at most 100 per batch
            self.client.log_batch(self.run_id, params=todo[i : i + 100])

    def log_metrics(self, record: dict) -> None:
        from mlflow.entities import Metric

        ts = int(record.get("time", time.time()) * 1000)
        step = int(record["step"])
        metrics = [Metric(k, v, ts, step) for k, v in scalars(record).items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def log_image(self, path: Path, name: str, step: int) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path="images")

    def finish(self) -> None:
        self.client.set_terminated(self.run_id)


# ---------------------------------------------------------------------------- CSV


class CsvTracker(Tracker):
    """``<run>/csv/<kind>.csv`` (train.csv, epoch.csv, ...): one row per record, a column
    per number; a new column rewrites the file with the wider header. ``params.csv``
    holds the flat config."""

    def __init__(self, out_dir: Path):
        self.dir = out_dir / "csv"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.headers: dict[str, list[str]] = {}  # kind -> columns of its file

    def log_params(self, params: dict) -> None:
        with (self.dir / "params.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["key", "value"])
            w.writerows(params.items())

    def log_metrics(self, record: dict) -> None:
        kind = record.get("kind", "train")
        row = {"step": record.get("step"), "epoch": record.get("epoch")}
        row.update({k.split("/", 1)[1]: v for k, v in scalars(record).items()})
        path = self.dir / f"{kind}.csv"
        if kind not in self.headers:
            self.headers[kind] = _header(path)
        header = self.headers[kind]
        if header and all(k in header for k in row):
            with path.open("a", newline="") as f:
                csv.DictWriter(f, header).writerow(row)
            return
        rows = read_csv(path)
        header += [k for k in row if k not in header]
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, header)
            w.writeheader()
            w.writerows([*rows, row])

    def reset(self) -> None:
        """Before replaying the kept log rows (resume)."""
        for p in self.dir.glob("*.csv"):
            if p.name != "params.csv":
                p.unlink()
        self.headers = {}


def read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _header(path: Path) -> list[str]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return next(csv.reader(f), [])
