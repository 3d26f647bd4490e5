"""What the evaluation recipes share: the backbone a config names (a checkpoint or random
init), its cached train/val features, and writing metrics.json + confusion.png."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from .. import config as config_lib
from ..data import Splits, eval_transform
from ..errors import UserError
from ..eval.attentive import BlockFeatures
from ..eval.features import cached_extract, checkpoint_identity, extract, source_identity
from ..eval.metrics import plot_confusion
from ..interop.checkpoint import LoadReport, model_from_checkpoint
from ..models import create_encoder, is_pretrainer, preprocessing
from ..models.timm_backbone import create_timm, is_timm_name
from ..models.vit import encoder_args
from ..utils import distributed as dist
from ..utils.cache import cache_root
from ..utils.io import write_json
from .run import RunContext

log = logging.getLogger("mimkit")


def load_backbone(cfg: config_lib.Config, device, **overrides) -> tuple[nn.Module, LoadReport]:
    """The encoder to evaluate, from ``model.checkpoint`` or random init ('none');
    ``model.name=timm:NAME`` builds that timm model (its weights from the checkpoint file)."""
    ckpt = cfg.model.checkpoint
    if not ckpt:
        raise UserError(
            "no backbone given: pass --checkpoint CKPT (mimkit or official MAE file), "
            "or --checkpoint none with model.name=... for a random-init encoder"
        )
    if cfg.data.img_size:
        overrides["img_size"] = cfg.data.img_size
    if is_timm_name(cfg.model.name):  # a timm model, random or from a local weights file
        args = {"num_classes": 0, **cfg.model.args, **overrides}  # features, unless a head
        model = create_timm(cfg.model.name, ckpt, **args)
        return model.to(device), None
    if ckpt == "none":
        args = dict(cfg.model.args)
        if is_pretrainer(cfg.model.name):  # MAE/LoMaR/iBOT names: their encoder's arguments
            args = encoder_args(args)
        model, report = create_encoder(cfg.model.name, **{**args, **overrides}), None
    else:
        network = str(cfg.model.checkpoint_network)
        model, report = model_from_checkpoint(
            ckpt, kind="encoder", trust=cfg.trust_checkpoint, network=network, **overrides
        )
    if getattr(model, "channels_last", False):
        model = model.to(memory_format=torch.channels_last)
    if cfg.eval.block is not None and cfg.task not in ("finetune", "train"):
        model = BlockFeatures(model, cfg.eval.block)  # a frozen-feature protocol's block
    return model.to(device), report


def feature_cache_dir(cfg: config_lib.Config) -> Path | None:
    if cfg.eval.cache_dir == "none":
        return None
    return Path(cfg.eval.cache_dir) if cfg.eval.cache_dir else cache_root() / "features"


def split_features(ctx: RunContext, model, splits: Splits) -> tuple[dict, dict, list[str]]:
    """Train and val features, extracted once and cached by checkpoint + data + transform."""
    cfg = ctx.cfg
    transform = eval_transform(**preprocessing(model))
    # a student/teacher file (iBOT) holds two encoders under one file identity
    network = str(cfg.model.checkpoint_network) if cfg.model.checkpoint != "none" else "teacher"
    results = []
    for name, source in (("train", splits.train), ("val", splits.val)):
        key = {
            **checkpoint_identity(cfg.model.checkpoint),
            "model": model.arch_config() if hasattr(model, "arch_config") else type(model).__name__,
            "seed": cfg.train.seed if cfg.model.checkpoint == "none" else None,
            "data": source_identity(source),
            "transform": repr(transform),
            "pool": str(cfg.eval.pool),
            "precision": ctx.precision,
            **({"network": network} if network != "teacher" else {}),
        }

        def compute(s=source, n=name):
            return extract(
                model,
                s,
                transform,
                cfg.eval.batch_size,
                cfg.data.num_workers,
                ctx.device,
                ctx.precision,
                desc=f"{n} features",
            )

        results.append(cached_extract(feature_cache_dir(cfg), key, compute))
    train, val = results
    skipped = sorted(set(train["bad"]) | set(val["bad"]))
    if skipped:
        why = {**train.get("reasons", {}), **val.get("reasons", {})}
        log.warning(
            "%d unreadable images left out (first: %s, %s)",
            len(skipped),
            skipped[0],
            why.get(skipped[0], "unreadable"),
        )
    return train, val, skipped


def write_metrics(out: Path, metrics: dict, classes: list[str], title: str) -> Path | None:
    """metrics.json and confusion.png on rank 0; returns the picture's path."""
    if not dist.is_main():
        return None
    metrics = dict(metrics)
    cm = metrics.pop("confusion", None)
    write_json(out / "metrics.json", metrics)
    picture = None
    if cm is not None:
        picture = plot_confusion(cm, classes, out / "confusion.png", title)
    log.info(
        "%s: top-1 %.2f%%  top-5 %.2f%%  (%d images) -> %s",
        title,
        metrics["top1"],
        metrics["top5"],
        metrics["num_images"],
        out / "metrics.json",
    )
    return picture
