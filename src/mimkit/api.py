"""The jobs as Python functions: the same recipes, configs, run folders and errors as the
CLI (``mimkit pretrain ...`` and ``mimkit.pretrain(...)`` give the same run).

    run = mimkit.pretrain("mae_vit_tiny_cifar", data="images/", epochs=10, out="runs/a",
                          **{"optim.blr": 1e-3})
    run.checkpoint, run.metrics, run.history
    run.reconstructions(images=["a.jpg"])          # a PIL image
    m = mimkit.knn(run.checkpoint, data="cifar/")   # m['top1'], m['per_k']

Keyword arguments map to config keys: ``data``, ``epochs``, ``out``, ``batch_size``,
``device``, ``name``, ``checkpoint``, ``pool``, plus any dotted key as a ``**{...}``
entry (or a nested dict: ``optim={'blr': 1e-3}``). Bad input raises ``mimkit.UserError``
with one line; nothing calls ``sys.exit``. Under ``torchrun`` each process calls the
function and they train together, as the CLI does.
"""

from __future__ import annotations

from pathlib import Path

from .recipes.registry import get_recipe
from .recipes.results import (
    BenchmarkResult,
    ClassifyResult,
    DetectResult,
    PretrainResult,
    QscoreResult,
)
from .recipes.run import resolve

# keyword -> config key (the CLI flags' names)
SHORT_KEYS = {
    "data": "data.path",
    "epochs": "train.epochs",
    "batch_size": "data.batch_size",
    "device": "train.device",
    "checkpoint": "model.checkpoint",
    "model": "model.name",
    "pool": "eval.pool",
    "out": "out",
    "name": "name",
}


def _values(kwargs: dict) -> dict:
    out = {}
    for key, value in kwargs.items():
        if value is None:
            continue
        if isinstance(value, Path):
            value = str(value)
        if key == "model" and isinstance(value, dict):  # the section, e.g. {'args': {...}}
            out[key] = value
            continue
        out[SHORT_KEYS.get(key, key)] = value
    return out


def run_job(
    task: str,
    config: str | None = None,
    resume: str | Path | None = None,
    trust: bool = False,
    **kwargs,
):
    """Resolve the config for ``task`` and run its recipe (the CLI does the same).
    ``trust=True`` (the CLI's ``--trust-checkpoint``) loads checkpoints holding pickled
    objects beyond plain types: only for files you trust."""
    trust = trust or bool(kwargs.pop("trust_checkpoint", False))
    cfg, resume_path = resolve(task, config, values=_values(kwargs), resume=resume, trust=trust)
    return get_recipe(task).run(cfg, resume_path)


def pretrain(config: str | None = None, *, data=None, resume=None, **kwargs) -> PretrainResult:
    """Pretrain with masked image modeling (MAE, LoMaR, iBOT); ``config`` is a preset name
    or YAML path (default mae_vit_base_patch16). Returns checkpoint, metrics, history."""
    return run_job("pretrain", config, resume=resume, data=data, **kwargs)


def knn(checkpoint, *, data, config: str | None = None, **kwargs) -> ClassifyResult:
    """Weighted kNN top-1/top-5 of frozen features (k 10, 20, 200; T 0.07)."""
    return run_job("knn", config, checkpoint=checkpoint, data=data, **kwargs)


def linprobe(checkpoint, *, data, config: str | None = None, resume=None, **kwargs):
    """Linear probe (BN + linear on frozen features, MAE protocol) -> ClassifyResult."""
    return run_job("linprobe", config, resume=resume, checkpoint=checkpoint, data=data, **kwargs)


def finetune(checkpoint, *, data, config: str | None = None, resume=None, **kwargs):
    """Fine-tune a classifier from a backbone (layer decay, mixup/cutmix) -> ClassifyResult."""
    return run_job("finetune", config, resume=resume, checkpoint=checkpoint, data=data, **kwargs)


def train(config: str, *, data, resume=None, **kwargs) -> ClassifyResult:
    """Supervised training from scratch (e.g. ``train('convmixer_256_8_cifar', data=...)``)."""
    return run_job("train", config, resume=resume, data=data, **kwargs)


def qscore(checkpoint, *, data, config: str | None = None, **kwargs) -> QscoreResult:
    """Q-score of every image (lowest first) and, with labels, its ROC AUC vs kNN."""
    return run_job("qscore", config, checkpoint=checkpoint, data=data, **kwargs)


def benchmark(config: str = "mae_vit_base_patch16", **kwargs) -> BenchmarkResult:
    """Training-step throughput, memory and MFU of a preset on this device; ``bench.data``
    (or ``data=``) also times the data path and the two together."""
    if "data" in kwargs:
        kwargs["bench.data"] = kwargs.pop("data")
    return run_job("benchmark", config, **kwargs)


class _Detect:
    """``mimkit.detect.train(...)``, ``.evaluate(...)``, ``.predict(...)``: ViTDet."""

    @staticmethod
    def train(config: str | None = None, *, data=None, resume=None, **kwargs) -> DetectResult:
        return run_job("detect", config, resume=resume, data=data, **kwargs)

    @staticmethod
    def evaluate(checkpoint, *, images, ann, **kwargs) -> DetectResult:
        from .recipes.detect import evaluate

        return evaluate(checkpoint, images, ann, **kwargs)

    @staticmethod
    def predict(checkpoint, *, images, **kwargs) -> list[dict]:
        from .recipes.detect import predict

        return predict(
            checkpoint, [images] if isinstance(images, (str, Path)) else images, **kwargs
        )


detect = _Detect()
