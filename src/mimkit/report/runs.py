"""The comparison page with pictures drawn from the runs' checkpoints: ``mimkit report``
and ``mimkit.report(...)``.

``report(run_dirs, out='report.html', images=None, ...) -> Path`` reads the run folders
(``collect``), attaches evaluation runs to the run they evaluated, draws for every run
on the SAME images the attention and feature maps of its encoder and its method's
picture (reconstructions, windows, prototypes; ``methods.draw_picture``), and writes the
page (``html``). The images: ``images`` (files or folders), else ``num_images`` spread
over the first run's training data.

Evaluations are found (1) in sub-folders of a run (``mimkit knn --out RUN/knn``: its
``metrics.json``) and (2) in evaluation run folders given beside the runs: a run whose
``config.yaml`` names a task other than ``pretrain`` and a ``model.checkpoint`` inside
another given run folder is that run's evaluation (its table row and confusion picture
join that run); one evaluating something else stays a row of its own.

Drawn pictures replace the run folder's picture of the same name (``attention.png`` of
``mimkit inspect --out RUN``, the training-time ``reconstructions.png``), so every run's
pictures on the page show the same images.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from ..data.sources import collect_images
from ..errors import UserError
from ..interop.checkpoint import is_pretrain_checkpoint, model_from_checkpoint, read_checkpoint
from ..methods import draw_picture
from ..utils import distributed as dist
from ..utils.io import atomic_write_text
from ..viz.backbone import backbone_pictures
from .collect import MAX_SCAN_DEPTH, Run, read_runs
from .html import Pictures, render_report

log = logging.getLogger("mimkit")

CHECKPOINT = "checkpoint-last.pth"


# ----------------------------------------------------------------------------- evaluations


def _task(run: Run) -> str | None:
    return run.config.get("task") if run.config else None


def _evaluated_checkpoint(run: Run) -> Path | None:
    model = run.config.get("model") if isinstance(run.config.get("model"), dict) else {}
    ckpt = model.get("checkpoint")
    if _task(run) in (None, "pretrain") or not ckpt or ckpt == "none":
        return None
    return Path(os.path.abspath(ckpt))


def _inside(path: Path, folder: Path) -> bool:
    return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder))


def _rename_repeats(run: Run) -> None:
    """Evaluation names as ``collect.read_evaluations`` gives them: the protocol, with the
    folder when two share one."""
    names = [
        str(e.raw.get("protocol") or (e.folder if e.folder != "." else "run"))
        for e in run.evaluations
    ]
    for e, name in zip(run.evaluations, names):
        e.name = f"{name} ({e.folder})" if names.count(name) > 1 else name


def attach_evaluation_runs(runs: Sequence[Run]) -> list[Run]:
    """Runs less the evaluation runs of other given runs, whose evaluations and pictures
    join the run they evaluated (see the module)."""
    kept = []
    for run in runs:
        ckpt = _evaluated_checkpoint(run)
        owner = next(
            (o for o in runs if o is not run and ckpt is not None and _inside(ckpt, o.path)),
            None,
        )
        if owner is None:
            kept.append(run)
            continue
        if _inside(run.path, owner.path):  # a sub-folder: its metrics.json is read already
            continue
        # read as if the folder sat in the run's folder, as deep as a sub-folder is read
        # (an evaluation's own sub-runs, e.g. its baselines/, stay out either way)
        for e in run.evaluations:
            folder = run.path.name if e.folder == "." else f"{run.path.name}/{e.folder}"
            if len(Path(folder).parts) < MAX_SCAN_DEPTH:
                e.folder = folder
                owner.evaluations.append(e)
        _rename_repeats(owner)
        for kind, path in run.pictures.items():
            key = f"{_task(run)}/{kind}"
            if len(Path(key).parts) <= MAX_SCAN_DEPTH:
                owner.pictures.setdefault(key, path)
        log.info("report: %s is an evaluation of %s", run.path, owner.path)
    return kept


# ----------------------------------------------------------------------------- pictures


def run_checkpoint(run: Run) -> Path | None:
    """The weights a run's pictures come from: its last checkpoint, else the checkpoint
    an evaluation run evaluated (when that file exists)."""
    if (run.path / CHECKPOINT).is_file():
        return run.path / CHECKPOINT
    ckpt = _evaluated_checkpoint(run)
    return ckpt if ckpt is not None and ckpt.exists() else None


def default_images(runs: Sequence[Run], n: int) -> list[str]:
    """``n`` images spread over the first run's training data that still exists."""
    for run in runs:
        data = run.config.get("data") if isinstance(run.config.get("data"), dict) else {}
        path = data.get("path")
        if path and Path(path).is_dir():
            return collect_images([str(path)], n)
    return []


def _method_picture(ckpt, images, seed: int, device) -> Image.Image | None:
    """The method's own picture of a pretraining checkpoint (None for other files)."""
    checkpoint = read_checkpoint(ckpt)
    if not is_pretrain_checkpoint(checkpoint):
        return None
    model, _ = model_from_checkpoint(checkpoint, kind="pretrain")
    with tempfile.TemporaryDirectory(prefix="mimkit-report-") as tmp:
        target = Path(tmp) / "picture.png"
        draw_picture(model.to(device), list(images), target, None, seed, device)
        with Image.open(target) as img:
            return img.convert("RGB")


def run_pictures(
    runs: Sequence[Run],
    images: Sequence[str],
    block: int = -1,
    clusters: int = 5,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Pictures:
    """{kind: {run name: PIL image}}: attention, features (of the encoder) and
    reconstructions (the method's picture) of every run with weights, on ``images``.
    A run whose checkpoint cannot be read or built is named in a warning and left out."""
    table: Pictures = {}
    for run in runs:
        ckpt = run_checkpoint(run)
        if ckpt is None:
            continue
        try:
            encoder, _ = model_from_checkpoint(ckpt, kind="encoder")
            drawn = backbone_pictures(encoder.to(device).eval(), images, block, clusters, seed)
            recon = _method_picture(ckpt, images, seed, device)
        except (UserError, OSError, RuntimeError, ValueError, KeyError) as e:
            # one unreadable or foreign checkpoint must not sink the whole page
            why = (str(e).splitlines() or [type(e).__name__])[0]
            log.warning("report: no pictures for %s: %s", run.name, why)
            continue
        if recon is not None:
            drawn["reconstructions"] = recon
        for kind, picture in drawn.items():
            table.setdefault(kind, {})[run.name] = picture
    return table


# ----------------------------------------------------------------------------- page


def report(
    run_dirs: Sequence[str | Path] | str | Path,
    out: str | Path = "report.html",
    images: Sequence[str | Path] | None = None,
    title: str | None = None,
    pictures: bool = True,
    num_images: int = 4,
    block: int = -1,
    clusters: int = 5,
    seed: int = 0,
    device: str = "auto",
) -> Path:
    """Run folders (pretraining runs, their evaluation runs) -> one self-contained HTML
    page at ``out`` (``out/report.html`` for a folder); returns its path. ``pictures=False``
    draws nothing (the folders' own pictures still show)."""
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    runs = attach_evaluation_runs(read_runs(list(run_dirs)))
    drawn: Pictures = {}
    if pictures:
        shown = collect_images([str(i) for i in images], num_images) if images else None
        shown = shown or default_images(runs, num_images)
        if shown:
            dev = dist.resolve_device(device)
            drawn = run_pictures(runs, shown, block, clusters, seed, dev)
        else:
            log.warning("report: no images to draw on (pass --images): folder pictures only")
    path = Path(out)
    if path.is_dir():
        path = path / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, render_report(runs, drawn, title))
