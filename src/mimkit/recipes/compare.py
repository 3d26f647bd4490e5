"""Compare pretraining methods on the same data: ``mimkit compare`` / ``mimkit.compare``.

    rows = mimkit.compare(data="cifar/", methods="mae,ibot", time_budget="10m")
    rows[0]["knn/top1"], rows.report            # plain dict rows; the HTML page

Each method pretrains its small CPU preset (``<method>_vit_tiny_cifar``, or
``config_for={'mae': PRESET}``) on the same images, for the same wall-clock
(``train.time_budget``: each method's own budget, not a share of one) or the same
``epochs``; then kNN and, with a labeled val split, a linear probe on cached features
evaluate each encoder; ``report.html`` puts the runs side by side (evaluations, curves,
attention / feature maps and reconstructions on the same images). The comparison's folder
holds its config.yaml, one run folder per method (``<out>/<method>/`` with ``knn/`` and
``linprobe/``), ``comparison.json`` (the rows) and ``report.html``.

A registered job rather than a tool: the comparison is itself a run, so its resolved
config (methods, presets, budget, overrides) is saved and can be a preset, ``--dry-run``
shows it, and the command and the Python function come from one entry with the same
keyword and error handling as every job.

``data``: ROOT with train/ and val/ (or test/) class folders (pretraining reads
ROOT/train; kNN and the probe use both splits), or a folder of images (pretraining only:
no labels to evaluate with).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import config as config_lib
from ..engine.checkpoint import LAST
from ..errors import UserError
from ..methods import get_method, list_methods, method_for
from ..report import comparison_rows, read_runs
from ..report.runs import attach_evaluation_runs
from ..report.runs import report as write_report
from ..utils import distributed as dist
from ..utils.io import write_json
from .registry import Flag, Recipe, get_recipe, register
from .run import execute, planned_run_dir, resolve, start

log = logging.getLogger("mimkit")

SMALL_PRESET = "{}_vit_tiny_cpu"  # each method's small-budget CPU preset, by name
# keywords of mimkit.compare(...) -> compare.<key>
API_KEYS = ("methods", "config_for", "time_budget", "epochs", "batch_size", "overrides")
API_KEYS += ("eval_overrides", "linear_probe", "pictures")


@dataclass
class CompareConfig:
    # comma-separated method names, or a list (default: every method with a small preset)
    methods: Any = None
    # a method's preset instead of its small one: {'mae': PRESET} or 'mae=PRESET' items
    config_for: Any = None
    # each method's pretraining wall-clock ('10m', '2h', seconds): train.time_budget
    time_budget: str | None = None
    epochs: int | None = None  # each method's pretraining epochs (train.epochs)
    batch_size: int | None = None  # pretraining data.batch_size (default: the presets')
    overrides: list[str] = field(default_factory=list)  # key=value for every pretraining
    eval_overrides: list[str] = field(default_factory=list)  # key=value for kNN and probe
    linear_probe: bool = True  # a linear probe too (labeled data only)
    pictures: bool = True  # the report draws attention / features / reconstructions


class CompareResult(list):
    """The comparison table: one plain dict per method (``run``, ``method``, ``preset``,
    ``pretrain/seconds``, ``pretrain/loss`` and every evaluation's headline numbers,
    ``knn/top1``, ...), with ``out``, ``report`` (the page) and ``runs`` (folders)."""

    def __init__(self, rows, out: Path, report: Path | None, runs: list[Path], config=None):
        super().__init__(rows)
        self.out, self.report, self.runs, self.config = out, report, runs, config


def _names(value) -> list[str]:
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(i).strip() for i in items if str(i).strip()]


def chosen_methods(value) -> list[str]:
    """The methods to compare, each known (default: those with a small preset)."""
    names = _names(value) or [
        m for m in list_methods() if SMALL_PRESET.format(m) in config_lib.list_presets()
    ]
    for name in names:
        get_method(name)  # a UserError naming the known methods
    if len(set(names)) != len(names):
        raise UserError(f"compare.methods names a method twice: {', '.join(names)}")
    return names


def presets_for(methods: list[str], config_for) -> dict[str, str]:
    """{method: preset}: ``config_for``'s, else the method's small preset."""
    given = dict(config_for or {}) if not isinstance(config_for, (str, list)) else {}
    for item in _names(config_for) if isinstance(config_for, (str, list)) else []:
        method, sep, preset = item.partition("=")
        if not sep or not preset:
            raise UserError(f"--config-for '{item}' is not METHOD=PRESET (e.g. mae=my.yaml)")
        given[method.strip()] = preset.strip()
    unknown = sorted(set(given) - set(methods))
    if unknown:
        raise UserError(
            f"--config-for names {', '.join(unknown)}, not among the compared methods "
            f"({', '.join(methods)})"
        )
    presets = {m: given.get(m, SMALL_PRESET.format(m)) for m in methods}
    for preset in presets.values():
        config_lib.preset_path(preset)  # a missing preset: one line naming it
    return presets


def data_layout(data: str | None) -> tuple[str, bool]:
    """(what pretraining reads, whether there are labeled splits to evaluate on)."""
    if not data:
        raise UserError("no data given: mimkit compare --data ROOT (train/ and val/ folders)")
    root = Path(data)
    if (root / "train").is_dir():
        return str(root / "train"), True
    if not root.exists():
        raise UserError(f"data folder not found: {root}")
    return str(root), False


def pretrain_config(method: str, preset: str, cfg: config_lib.Config, data: str, out: Path):
    """The resolved config of one method's pretraining run: its preset, the comparison's
    data, budget or epochs, batch size and device, then ``compare.overrides``."""
    c = cfg.compare
    values = {"data.path": data, "out": str(out), "name": method}
    if c.epochs is not None:
        values["train.epochs"] = c.epochs
    if c.time_budget is not None:
        values["train.time_budget"] = str(c.time_budget)
    if c.batch_size is not None:
        values["data.batch_size"] = c.batch_size
    if cfg.train.device != "auto":
        values["train.device"] = cfg.train.device
    run_cfg, _ = resolve("pretrain", preset, list(c.overrides), values=values)
    found = method_for(run_cfg.model.name)
    if found is None or found.name != method:
        raise UserError(
            f"preset {preset} pretrains {run_cfg.model.name}, not a {method} model: "
            f"--config-for {method}=PRESET takes a {method} preset"
        )
    return run_cfg


def _pretrain(method, preset, cfg, data: str, out: Path):
    run_cfg = pretrain_config(method, preset, cfg, data, out)
    start_time = time.perf_counter()
    result = execute(get_recipe("pretrain"), run_cfg)
    return result, time.perf_counter() - start_time


def _evaluate(job: str, checkpoint: Path, data: str, out: Path, cfg) -> None:
    values = {"model.checkpoint": str(checkpoint), "data.path": data, "out": str(out)}
    if cfg.train.device != "auto":
        values["train.device"] = cfg.train.device
    job_cfg, _ = resolve(job, None, list(cfg.compare.eval_overrides), values=values)
    execute(get_recipe(job), job_cfg)


def run(cfg: config_lib.Config, resume: Path | None = None) -> CompareResult:
    c = cfg.compare
    if c.time_budget is None and c.epochs is None:
        raise UserError(
            "compare needs --time-budget (each method's wall-clock, e.g. 10m) or --epochs N"
        )
    methods = chosen_methods(c.methods)
    presets = presets_for(methods, c.config_for)
    pretrain_data, labeled = data_layout(cfg.data.path)
    planned = planned_run_dir(cfg)
    taken = [m for m in methods if (planned / m / LAST).exists()]
    if taken:  # refused before any method trains, not after the first ones
        raise UserError(f"{planned / taken[0]} already holds a run: choose another --out")
    out = start(cfg).run_dir()  # the comparison's folder and its config.yaml
    if not labeled:
        log.warning("%s has no train/ and val/ class folders: pretraining only", cfg.data.path)
    rows, run_dirs = [], []
    for method in methods:
        log.info("compare: %s (%s) on %s", method, presets[method], pretrain_data)
        result, seconds = _pretrain(method, presets[method], cfg, pretrain_data, out / method)
        if labeled:
            _evaluate("knn", result.checkpoint, cfg.data.path, out / method / "knn", cfg)
            if c.linear_probe:
                probe_dir = out / method / "linprobe"
                _evaluate("linprobe", result.checkpoint, cfg.data.path, probe_dir, cfg)
        run_dirs.append(out / method)
        row = {"method": method, "preset": presets[method], "pretrain/seconds": seconds}
        loss = result.metrics.get("loss")
        if isinstance(loss, (int, float)):
            row["pretrain/loss"] = loss
        rows.append(row)
    table = comparison_rows(attach_evaluation_runs(read_runs(run_dirs)))
    rows = [{"run": t.pop("run"), **r, **t} for r, t in zip(rows, table)]
    page = None
    if dist.is_main():
        write_json(out / "comparison.json", {"rows": rows})
        page = write_report(
            run_dirs, out / "report.html", pictures=c.pictures, device=str(cfg.train.device)
        )
        log.info("compare: %s, %s", out / "comparison.json", page)
    return CompareResult(rows, out, page, run_dirs, cfg)


def format_rows(result: CompareResult) -> str:
    """The table as aligned text (what the command prints)."""
    rows = list(result)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[_cell(r.get(k)) for k in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    where = f"\nreport: {result.report}" if result.report else ""
    return "\n".join(lines) + where


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


RECIPE = register(
    Recipe(
        "compare",
        run,
        help="pretrain several methods on the same data and budget, evaluate, report",
        description="Pretrains each method's small preset (<method>_vit_tiny_cifar, or "
        "--config-for METHOD=PRESET) on the same images for the same wall-clock "
        "(--time-budget, each method's) or epochs, evaluates each encoder with kNN and, "
        "with a labeled val split, a linear probe, and writes comparison.json and "
        "report.html beside the runs.",
        trains=False,
        section=("compare", CompareConfig),
        flags=(
            Flag("--methods", "compare.methods", "comma-separated, e.g. mae,ibot"),
            Flag(
                "--config-for", "compare.config_for", "METHOD=PRESET (repeatable)", action="append"
            ),
            Flag("--time-budget", "compare.time_budget", "each method's wall-clock, e.g. 10m"),
            Flag("--epochs", "compare.epochs", "each method's pretraining epochs", type=int),
            Flag("--batch-size", "compare.batch_size", "pretraining batch size", type=int),
            Flag(
                "--set",
                "compare.overrides",
                "KEY=VALUE for every pretraining run (repeatable)",
                action="append",
            ),
            Flag("--no-linprobe", "compare.linear_probe", "kNN only", action="store_false"),
        ),
        api_keys={key: f"compare.{key}" for key in API_KEYS},
        report=format_rows,
        order=30,
    )
)
