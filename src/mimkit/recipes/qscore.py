"""Per-image representation quality (Q-score, Kalibhat et al.), lowest first, and how
well it separates images kNN gets right from those it gets wrong."""

from __future__ import annotations

import csv
from pathlib import Path

from .. import config as config_lib
from ..data import eval_transform, open_source, open_splits
from ..data.sources import scheme_for
from ..errors import UserError
from ..eval.features import extract, set_pool
from ..eval.knn import knn_scores
from ..eval.metrics import roc_auc
from ..eval.qscore import qscore
from ..models import preprocessing
from ..utils import distributed as dist
from ..utils.io import write_json
from ..viz.curves import plot_qscore
from .backbone import load_backbone, split_features
from .registry import Recipe, register
from .results import QscoreResult
from .run import RunContext, start


def run(cfg: config_lib.Config, resume: Path | None = None) -> QscoreResult:
    ctx = start(cfg)
    out = ctx.run_dir()
    model, _ = load_backbone(cfg, ctx.device)
    set_pool(model, str(cfg.eval.pool))
    labeled = cfg.data.val_list or (Path(cfg.data.path or "") / "train").is_dir()
    scheme = scheme_for(cfg.data.path)
    labeled = labeled or (scheme is not None and scheme.kind == "table" and cfg.data.label_key)
    if labeled:
        target, pred, classes, k = _with_knn(ctx, model)
    else:
        if not cfg.data.path:
            raise UserError(
                "no data given: pass --data PATH (data= in Python; a folder, or ROOT with "
                "train/ val/)"
            )
        source = open_source(cfg.data.path, image_key=cfg.data.image_key)
        transform = eval_transform(**preprocessing(model))
        target = extract(
            model,
            source,
            transform,
            cfg.eval.batch_size,
            cfg.data.num_workers,
            ctx.device,
            ctx.precision,
        )
        pred, classes, k = None, source.classes, None
    q = qscore(target["features"])
    metrics = {"protocol": "qscore", "num_images": len(q)}
    if dist.is_main():
        metrics = _write(out, q, target, pred, classes, k)
    return QscoreResult(
        out=out,
        metrics=metrics,
        config=cfg,
        picture=out / "qscore_hist.png",
        csv=out / "qscore.csv",
    )


def _with_knn(ctx: RunContext, model) -> tuple:
    cfg = ctx.cfg
    d = cfg.data
    splits = open_splits(d.path, d.file_list, d.val_list, d.image_key, d.label_key)
    train, val, _ = split_features(ctx, model, splits)
    k = 20 if 20 in cfg.eval.knn_k else cfg.eval.knn_k[0]
    votes = knn_scores(
        train["features"],
        train["labels"],
        val["features"],
        len(splits.classes),
        [k],
        cfg.eval.knn_temperature,
    )
    return val, next(iter(votes.values())).argmax(1), splits.classes, k


def _write(out: Path, q, target: dict, pred, classes, k) -> dict:
    order = q.argsort().tolist()
    labels = target["labels"].tolist()
    with (out / "qscore.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", "path", "qscore", "label", "knn_prediction", "correct"])
        for rank, i in enumerate(order, 1):
            label = classes[labels[i]] if labels[i] >= 0 and classes else ""
            p = classes[int(pred[i])] if pred is not None else ""
            ok = int(pred[i] == labels[i]) if pred is not None else ""
            w.writerow([rank, target["paths"][i], f"{q[i].item():.6g}", label, p, ok])
    metrics = {
        "protocol": "qscore",
        "num_images": len(q),
        "mean": q.mean().item(),
        "median": q.median().item(),
        "csv": str(out / "qscore.csv"),
    }
    correct = None
    if pred is not None:
        correct = pred.eq(target["labels"])
        metrics.update(
            knn_k=k,
            knn_top1=100 * correct.float().mean().item(),
            auc_correct_vs_wrong=roc_auc(q, correct),
            mean_correct=q[correct].mean().item() if correct.any() else None,
            mean_wrong=q[~correct].mean().item() if (~correct).any() else None,
        )
    write_json(out / "metrics.json", metrics)
    plot_qscore(q, correct, out / "qscore_hist.png")
    auc = metrics.get("auc_correct_vs_wrong")
    print(
        f"Q-score of {len(q)} images -> {out / 'qscore.csv'} (lowest first)"
        + (f"; ROC AUC correct vs wrong kNN: {auc:.3f}" if auc is not None else "")
    )
    return metrics


RECIPE = register(
    Recipe(
        "qscore",
        run,
        help="per-image representation quality (Q-score), lowest first",
        trains=False,
        backbone=True,
        api_args=("checkpoint",),
        order=14,
    )
)
