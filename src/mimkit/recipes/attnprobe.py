"""The attentive probe: a cross-attention pooling head (a few learnable queries over the
frozen patch tokens) and a linear classifier, trained on tokens extracted once
(``eval.attentive``). The probe that fits MIM features, where [CLS] + linear does not."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from .. import config as config_lib
from ..data import open_splits
from ..data.loader import eval_loader, train_loader
from ..engine.optim import adamw, weight_decay_groups
from ..eval import classify as heads
from ..eval.attentive import AttentiveHead, Tokens
from .backbone import load_backbone, split_features
from .baselines import probe_floors
from .classify import FeatureSet, _clamp_batch, _fit_classifier
from .registry import Recipe, register
from .results import ClassifyResult
from .run import start

log = logging.getLogger("mimkit")


@dataclass
class AttnprobeConfig:
    queries: int = 1  # learnable queries (efficient probing uses a few; AIM / V-JEPA one)
    heads: int | None = None  # attention heads; default width / 64
    patches_only: bool = False  # attend over the patch tokens only (no [CLS])


# Recorded defaults (AdamW on cached tokens, cosine with warm-up): an attentive head
# learns in a few epochs on cached tokens, unlike LARS on a linear layer.
ATTNPROBE_DEFAULTS = {
    "optim": {"blr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 2, "betas": [0.9, 0.999]},
    "train": {"epochs": 30, "save_every": 10},
    "data": {"batch_size": 256},
}


def run(cfg: config_lib.Config, resume: Path | None = None) -> ClassifyResult:
    ctx = start(cfg, resume)
    a = cfg.attnprobe
    splits = open_splits(
        cfg.data.path, cfg.data.file_list, cfg.data.val_list, cfg.data.image_key, cfg.data.label_key
    )
    ctx.run_dir()
    backbone, _ = load_backbone(cfg, ctx.device)
    tokens = Tokens(backbone, a.patches_only).to(ctx.device)
    train, val, _ = split_features(ctx, tokens, splits)
    _clamp_batch(cfg, len(train["labels"]))
    loader = train_loader(FeatureSet(train["features"], train["labels"]), cfg.data.batch_size,
                          cfg.train.seed, 0)  # fmt: skip
    val_loader = eval_loader(FeatureSet(val["features"], val["labels"]), cfg.eval.batch_size, 0)
    head = AttentiveHead(train["features"].shape[-1], len(splits.classes), a.queries, a.heads)
    lr = ctx.lr()

    def make_optimizer(m: nn.Module):
        groups = weight_decay_groups(m, cfg.optim.weight_decay)
        return adamw(groups, lr, cfg.optim.betas, ctx.device)

    task = heads.ClassifyTask(
        nn.CrossEntropyLoss(), val_loader, splits.classes, ctx.device, ctx.precision
    )
    log.info(
        "attentive probe: %d queries over %d tokens of width %d, %d classes, lr %.3g, %s",
        a.queries,
        train["features"].shape[1],
        train["features"].shape[-1],
        len(splits.classes),
        lr,
        ctx.out,
    )
    meta = {"task": "attnprobe", "classes": splits.classes}
    result = _fit_classifier(
        ctx, task, head.to(ctx.device), make_optimizer, loader, lr, meta, "attentive probe",
        splits, floors=lambda: probe_floors(ctx, splits, backbone, "attnprobe"),
    )  # fmt: skip
    return result


RECIPE = register(
    Recipe(
        "attnprobe",
        run,
        help="attentive probe on frozen patch tokens (cross-attention pooling + linear)",
        defaults=ATTNPROBE_DEFAULTS,
        section=("attnprobe", AttnprobeConfig),
        backbone=True,
        api_args=("checkpoint",),
        order=12,
    )
)
