"""Read run folders into plain data for the comparison page.

A run folder (what ``mimkit pretrain``/``knn``/``linprobe``/... write) may hold:

- ``config.yaml``: the resolved config (nested mapping);
- ``log.jsonl``: one JSON object per line. Every finite number becomes a series against
  ``step`` (else ``epoch``, else the line number). Its name is the key for ``train``
  records (and records without a kind) and for keys that already hold a ``/``
  (``val/acc1``, ``monitor/knn_top1``); other records prefix their kind
  (``{"kind": "epoch", "loss": ..}`` -> ``epoch/loss``, ``{"kind": "monitor",
  "knn_top1": ..}`` -> ``monitor/knn_top1``). A series whose name adds a baseline word
  (``raw_pixels``, ``random_init``, ``baseline``, ...) to another series' name
  (``monitor/knn_top1_raw_pixels``, ``monitor/knn_top1/random_init``) is that series'
  baseline. Unreadable lines (a run killed mid-write) are skipped and counted.
- ``metrics.json`` files, in the folder or in sub-folders (``knn/``, ``linprobe/``, ...):
  one evaluation each, named by its ``protocol`` (else its folder). Its headline numbers
  (top-level numbers and nested ones, less bookkeeping such as ``num_images`` and per-k /
  per-class detail) are columns of the comparison table.
- pictures: ``*.png`` / ``*.jpg`` in the folder and in evaluation sub-folders
  (``reconstructions``, ``knn/confusion``; ``loss.png``, ``curves.png`` and
  ``monitor.png`` are left out, the page draws the curves itself).

Public functions (explicit arguments): ``read_run(run_dir, name=None) -> Run``,
``read_runs(run_dirs) -> list[Run]`` (unique display names), ``comparison_rows(runs) ->
list[dict]`` (one plain dict per run: ``{"run": name, "<evaluation>/<metric>": value}``),
``best_per_column(rows) -> dict[column, set[run]]``, ``config_differences(runs) ->
list[key]``, ``lower_is_better(column) -> bool``.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import UserError

# keys of a log record that are coordinates or labels, not series
COORDS = ("time", "step", "epoch", "kind")
# series names that mark a baseline of the series their name extends
BASELINE_WORDS = ("baseline", "raw_pixel", "pixels", "random_init", "random")
# metrics.json numbers that describe the evaluation rather than score it
BOOKKEEPING = {
    "num_images",
    "num_train",
    "num_classes",
    "skipped_images",
    "epochs",
    "temperature",
    "best_k",
    "k_shown",
    "knn_k",
    "seed",
    "batch_size",
    "step",
    "epoch",
    "time",
}
# nested metrics.json detail left out of the table (per-k, per-class, matrices)
DETAIL = {"k", "per_k", "per_class", "confusion", "classes"}
# column names where lower is better (everything else: higher is better)
LOWER_BETTER = ("loss", "error", "err_", "_err", "nll", "fid", "latency", "seconds", "time")
# records whose keys describe the machine and the run rather than training progress
INFO_KINDS = {"run", "system", "hardware", "env", "meta", "start"}
INFO_KEYS = ("device", "gpu", "gpus", "cpu", "hostname", "world_size", "torch", "cuda")
LEFT_OUT_PICTURES = {"loss", "curves", "monitor"}  # the page draws these curves itself
MAX_SCAN_DEPTH = 3  # metrics.json / pictures this deep below the run folder


@dataclass
class Series:
    """One logged number against ``x_name`` (step, epoch or line); x ascending."""

    x: list[float]
    y: list[float]
    x_name: str = "step"


@dataclass
class Evaluation:
    """One metrics.json: ``name`` (protocol or folder), ``folder`` (relative, '.' for the
    run folder), ``metrics`` (the table's numbers, flat keys) and ``raw`` (the file)."""

    name: str
    folder: str
    metrics: dict[str, float]
    raw: dict


@dataclass
class Run:
    """Everything the page shows about one run folder."""

    name: str
    path: Path
    config: dict = field(default_factory=dict)
    series: dict[str, Series] = field(default_factory=dict)
    evaluations: list[Evaluation] = field(default_factory=list)
    info: dict[str, str] = field(default_factory=dict)
    pictures: dict[str, Path] = field(default_factory=dict)
    bad_log_lines: int = 0

    @property
    def flat_config(self) -> dict[str, str]:
        return flatten(self.config)


# ----------------------------------------------------------------------------- config


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """Nested mapping -> {'a.b.c': value as JSON text} (lists stay one value)."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = json.dumps(value, default=str)
    return out


def read_config(path: Path) -> dict:
    """config.yaml -> nested dict ({} when absent; a clear error when not a mapping)."""
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text())
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a YAML mapping (a resolved mimkit config)")
    return data


def config_differences(runs: Sequence[Run], ignore: Iterable[str] = ("out",)) -> list[str]:
    """Keys whose value differs between the runs (or is missing in some), sorted.
    ``out`` (each run's own folder) is ignored by default: it always differs."""
    flats = [r.flat_config for r in runs]
    keys = sorted(set().union(*flats) - set(ignore)) if flats else []
    return [k for k in keys if len({f.get(k) for f in flats}) > 1]


# ----------------------------------------------------------------------------- log


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def read_records(path: Path) -> tuple[list[dict], int]:
    """log.jsonl -> (records, number of unreadable lines)."""
    if not path.is_file():
        return [], 0
    records, bad = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad += 1
    return records, bad


def series_name(kind: str | None, key: str) -> str:
    """The series a record's key feeds (see the module)."""
    if "/" in key or kind in (None, "train"):
        return key
    return f"{kind}/{key}"


def read_series(records: Sequence[dict]) -> dict[str, Series]:
    """records -> every numeric series, x ascending (a resumed run's repeated steps are
    kept in log order; the engine truncates redone steps on resume)."""
    out: dict[str, Series] = {}
    for i, record in enumerate(records):
        kind = record.get("kind")
        if kind in INFO_KINDS:
            continue
        for x_name in ("step", "epoch", None):
            x = _number(record.get(x_name)) if x_name else float(i)
            if x is not None:
                break
        for key, value in record.items():
            y = _number(value)
            if key in COORDS or y is None:
                continue
            name = series_name(kind, key)
            s = out.setdefault(name, Series([], [], x_name or "line"))
            s.x.append(x)
            s.y.append(y)
    for s in out.values():
        order = sorted(range(len(s.x)), key=s.x.__getitem__)
        s.x, s.y = [s.x[i] for i in order], [s.y[i] for i in order]
    return out


def _baseline_word(text: str) -> bool:
    return any(w in text.lower() for w in BASELINE_WORDS)


def baseline_of(name: str, names: Iterable[str]) -> str | None:
    """The series ``name`` is a baseline of: the longest other (non-baseline) name that
    it extends by a separator and a baseline word; None when it is no baseline."""
    parents = [
        other
        for other in names
        if other != name
        and name.startswith(other)
        and name[len(other)] in "/_-."
        and _baseline_word(name[len(other) :])
        and not _baseline_word(other)
    ]
    return max(parents, key=len, default=None)


# ----------------------------------------------------------------------------- info


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def run_info(config: dict, records: Sequence[dict]) -> dict[str, str]:
    """What is recorded about how the run ran: task, model, precision, device, the
    machine (records of kind run/system/...), wall-clock, steps, epochs, images/s."""
    flat = {k: json.loads(v) for k, v in flatten(config).items()}
    info: dict[str, str] = {}
    for label, key in (("task", "task"), ("model", "model.name")):
        if flat.get(key) not in (None, ""):
            info[label] = str(flat[key])
    precision = flat.get("train.precision_resolved") or flat.get("train.precision")
    if precision:
        info["precision"] = str(precision)
    if flat.get("train.device") not in (None, "", "auto"):
        info["device"] = str(flat["train.device"])
    for r in records:
        source = r if r.get("kind") in INFO_KINDS else {k: r[k] for k in INFO_KEYS if k in r}
        for k, v in source.items():
            if k not in COORDS and v is not None and not isinstance(v, (dict, list)):
                info.setdefault(k, str(v))
    times = [t for r in records if (t := _number(r.get("time"))) is not None]
    if len(times) > 1:
        info["wall-clock"] = _duration(max(times) - min(times))
    for label, key in (("steps", "step"), ("epochs", "epoch")):
        values = [v for r in records if (v := _number(r.get(key))) is not None]
        if values:
            info[label] = f"{max(values):g}"
    speeds = [v for r in records if r.get("kind") == "train" and (v := _number(r.get("img_s")))]
    if speeds:
        info["images/s (median)"] = f"{statistics.median(speeds):.0f}"
    return info


# ----------------------------------------------------------------------------- metrics


def table_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """metrics.json -> the numbers the table shows (flat 'a.b' keys; see the module)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if key in BOOKKEEPING or key in DETAIL:
            continue
        if isinstance(value, dict):
            out.update(table_metrics(value, f"{prefix}{key}."))
        elif (v := _number(value)) is not None:
            out[f"{prefix}{key}"] = v
    return out


def _scan(root: Path, pattern: str) -> list[Path]:
    """Files matching ``pattern`` at most MAX_SCAN_DEPTH below root (TensorBoard and
    MLflow folders skipped), sorted."""
    found = []
    for path in root.rglob(pattern):
        rel = path.relative_to(root).parts
        if len(rel) <= MAX_SCAN_DEPTH and not {"tb", "mlruns", "wandb"} & set(rel[:-1]):
            found.append(path)
    return sorted(found)


def read_evaluations(run_dir: Path) -> list[Evaluation]:
    """Every metrics.json in the run folder, named by protocol (folder when repeated)."""
    evals = []
    for path in _scan(run_dir, "metrics.json"):
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(raw, dict):
            continue
        folder = path.parent.relative_to(run_dir).as_posix()
        name = str(raw.get("protocol") or (folder if folder != "." else "run"))
        evals.append(Evaluation(name, folder, table_metrics(raw), raw))
    names = [e.name for e in evals]
    for e in evals:
        if names.count(e.name) > 1:
            e.name = f"{e.name} ({e.folder})"
    return evals


def read_pictures(run_dir: Path) -> dict[str, Path]:
    """Pictures in the run folder and its evaluation folders, keyed by relative path less
    the suffix ('reconstructions', 'knn/confusion')."""
    out = {}
    for pattern in ("*.png", "*.jpg", "*.jpeg"):
        for path in _scan(run_dir, pattern):
            key = path.relative_to(run_dir).with_suffix("").as_posix()
            if key not in LEFT_OUT_PICTURES:
                out[key] = path
    # the run's own pictures first, then those of its evaluations
    return dict(sorted(out.items(), key=lambda kv: (kv[0].count("/"), kv[0])))


# ----------------------------------------------------------------------------- runs


def read_run(run_dir: str | Path, name: str | None = None) -> Run:
    """One run folder -> Run (a UserError when it holds nothing a run writes)."""
    path = Path(run_dir)
    if not path.is_dir():
        raise UserError(f"run folder {path} does not exist")
    records, bad = read_records(path / "log.jsonl")
    config = read_config(path / "config.yaml")
    evaluations = read_evaluations(path)
    if not (records or config or evaluations):
        raise UserError(f"{path} holds no config.yaml, log.jsonl or metrics.json: not a run")
    return Run(
        name=name or path.resolve().name,
        path=path,
        config=config,
        series=read_series(records),
        evaluations=evaluations,
        info=run_info(config, records),
        pictures=read_pictures(path),
        bad_log_lines=bad,
    )


def read_runs(run_dirs: Sequence[str | Path]) -> list[Run]:
    """Run folders -> Runs with distinct names (parent/name when two folders share one)."""
    if not run_dirs:
        raise UserError("no run folders given")
    paths = [Path(p).resolve() for p in run_dirs]
    names = [p.name for p in paths]
    names = [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]
    names = [n if names.count(n) == 1 else f"{n} #{i + 1}" for i, n in enumerate(names)]
    return [read_run(d, n) for d, n in zip(run_dirs, names)]


def comparison_rows(runs: Sequence[Run | str | Path]) -> list[dict]:
    """One plain dict per run: ``{"run": name, "<evaluation>/<metric>": value, ...}``;
    a run without that evaluation has no key for it."""
    if runs and not isinstance(runs[0], Run):
        runs = read_runs(runs)
    rows = []
    for run in runs:
        row: dict = {"run": run.name}
        for e in run.evaluations:
            row.update({f"{e.name}/{k}": v for k, v in e.metrics.items()})
        rows.append(row)
    return rows


def table_groups(runs: Sequence[Run]) -> list[tuple[str, list[str]]]:
    """[(evaluation, [metric, ...])] in first-seen order: the table's two header rows
    (a metric name may hold '/', so the group is not read back from the column key)."""
    groups: dict[str, dict[str, None]] = {}
    for run in runs:
        for e in run.evaluations:
            groups.setdefault(e.name, {}).update(dict.fromkeys(e.metrics))
    return [(name, list(metrics)) for name, metrics in groups.items()]


def table_columns(rows: Sequence[dict]) -> list[str]:
    """The metric columns of ``rows`` in first-seen order."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update({k: None for k in row if k != "run"})
    return list(seen)


def lower_is_better(column: str) -> bool:
    metric = column.rsplit("/", 1)[-1].lower()
    return any(w in metric for w in LOWER_BETTER)


def best_per_column(rows: Sequence[dict]) -> dict[str, set[str]]:
    """column -> the runs holding its best value (ties all), for columns that at least
    two runs report (a lone value is not 'best' of anything)."""
    best = {}
    for col in table_columns(rows):
        values = {r["run"]: r[col] for r in rows if col in r}
        if len(values) < 2:
            continue
        target = (min if lower_is_better(col) else max)(values.values())
        best[col] = {run for run, v in values.items() if v == target}
    return best
