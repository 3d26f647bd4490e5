"""Classifiers on a backbone: the linear probe (MAE protocol), fine-tuning with layer-wise
lr decay (MAE's recipe), and supervised training from scratch (the fine-tune recipe
without a checkpoint, e.g. ConvMixer's CIFAR recipe)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import config as config_lib
from ..data import IMAGENET_MEAN, IMAGENET_STD, ImageDataset, eval_transform, open_splits
from ..data.loader import eval_loader, train_loader
from ..data.transforms import finetune_transform, linprobe_transform
from ..engine.optim import adamw
from ..errors import UserError
from ..eval import classify as heads
from ..eval.features import LastBlocks, set_pool
from ..models import preprocessing
from ..utils import distributed as dist
from ..viz.curves import plot_curves
from .backbone import load_backbone, split_features, write_metrics
from .baselines import probe_floors
from .registry import Recipe, register
from .results import ClassifyResult
from .run import RunContext, fit, save_config, start

log = logging.getLogger("mimkit")
GlobalPool, ProbeOptimizer = config_lib.GlobalPool, config_lib.ProbeOptimizer


@dataclass
class LinprobeConfig:
    optimizer: ProbeOptimizer = ProbeOptimizer.lars
    augment: bool = False  # random resized crop + flip; the frozen encoder then runs each step
    cache: bool = True  # without augmentation: train the head on features extracted once
    # DINO/iBOT probe: [CLS] of the last n blocks concatenated (official 4 for ViT-S/16)
    n_last_blocks: int = 1
    # MAE's BatchNorm (no affine) before the linear layer; false: DINO/iBOT's plain linear
    batchnorm: bool = True


@dataclass
class FinetuneConfig:
    layer_decay: float = 0.75  # lr scale decay^(depth + 1 - layer)
    trainable_blocks: int | None = None  # partial fine-tuning: train only the last k blocks
    global_pool: GlobalPool = GlobalPool.avg  # avg (fc_norm, as MAE) | token
    mixup: float = 0.8
    cutmix: float = 1.0
    smoothing: float = 0.1
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    reprob: float = 0.25  # random erasing probability
    head_init_std: float | None = 2e-5  # null: keep the layer's default init (from scratch)
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # RandomResizedCrop
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333])


# The official recipes (MAE main_linprobe.py and main_finetune.py).
LINPROBE_DEFAULTS = {
    "optim": {"blr": 0.1, "weight_decay": 0.0, "warmup_epochs": 10},
    "train": {"epochs": 90, "save_every": 10},
    "data": {"batch_size": 512},
}
FINETUNE_DEFAULTS = {
    "model": {"drop_path": 0.1},
    "optim": {
        "blr": 1e-3,
        "weight_decay": 0.05,
        "warmup_epochs": 5,
        "min_lr": 1e-6,
        "betas": [0.9, 0.999],
    },
    "train": {"epochs": 50, "save_every": 10},
}


class FeatureSet(torch.utils.data.Dataset):
    """Cached features as a dataset: items (feature, label, no unreadable images)."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item):
        i = item[0] if isinstance(item, tuple) else item
        return self.features[i], int(self.labels[i]), []


def linprobe(cfg: config_lib.Config, resume: Path | None = None) -> ClassifyResult:
    """BatchNorm (no affine) + linear head on the frozen backbone; with cached features
    when there is no augmentation (the encoder runs once)."""
    ctx = start(cfg, resume)
    splits = open_splits(
        cfg.data.path, cfg.data.file_list, cfg.data.val_list, cfg.data.image_key, cfg.data.label_key
    )
    ctx.run_dir()
    backbone, _ = load_backbone(cfg, ctx.device)
    plain = backbone
    set_pool(backbone, str(cfg.eval.pool))
    if cfg.linprobe.n_last_blocks > 1:
        avg = str(cfg.eval.pool) == "avg"
        backbone = LastBlocks(backbone, cfg.linprobe.n_last_blocks, avg).to(ctx.device)
    cached = cfg.linprobe.cache and not cfg.linprobe.augment
    if cached:
        train, val, _ = split_features(ctx, backbone, splits)
        _clamp_batch(cfg, len(train["labels"]))
        train_set = FeatureSet(train["features"], train["labels"])
        loader = train_loader(train_set, cfg.data.batch_size, cfg.train.seed, 0)
        val_loader = eval_loader(FeatureSet(val["features"], val["labels"]), cfg.eval.batch_size, 0)
        encoder = None
    else:
        prep = preprocessing(backbone)
        if cfg.linprobe.augment:
            transform = linprobe_transform(prep["img_size"], *_norm(prep))
        else:
            transform = eval_transform(**prep)
        loader, val_loader = _image_loaders(ctx, splits, transform, prep)
        encoder = heads.FrozenEncoder(backbone)
    head = heads.LinearProbe(
        backbone.num_features, len(splits.classes), batchnorm=cfg.linprobe.batchnorm
    ).to(ctx.device)
    lr = ctx.lr()
    optimizer = str(cfg.linprobe.optimizer)
    make_optimizer = lambda m: heads.probe_optimizer(m, optimizer, lr, cfg.optim.weight_decay)
    task = heads.ClassifyTask(
        nn.CrossEntropyLoss(),
        val_loader,
        splits.classes,
        ctx.device,
        ctx.precision,
        encoder=encoder,
    )
    log.info(
        "linear probe (%s, %s): %d classes, lr %.3g, %s",
        optimizer,
        "cached features" if cached else "encoder each step",
        len(splits.classes),
        lr,
        ctx.out,
    )
    meta = {"task": "linprobe", "classes": splits.classes}
    return _fit_classifier(
        ctx, task, head, make_optimizer, loader, lr, meta, "linear probe", splits,
        floors=lambda: probe_floors(ctx, splits, plain, "linprobe"),
    )  # fmt: skip


def finetune(cfg: config_lib.Config, resume: Path | None = None) -> ClassifyResult:
    """The whole backbone and a new head, MAE's recipe: layer-wise lr decay, RandAugment,
    mixup/cutmix, label smoothing, random erasing, drop path; partial fine-tuning with
    ``finetune.trainable_blocks``."""
    ctx = start(cfg, resume)
    ft = cfg.finetune
    splits = open_splits(
        cfg.data.path, cfg.data.file_list, cfg.data.val_list, cfg.data.image_key, cfg.data.label_key
    )
    ctx.run_dir()
    model, report = load_backbone(
        cfg,
        ctx.device,
        num_classes=len(splits.classes),
        global_pool=str(ft.global_pool),
        drop_path_rate=cfg.model.drop_path,
    )
    new_head = report is None or "head.weight" in report.missing + report.dropped
    if new_head and ft.head_init_std is not None:
        heads.init_head(model, ft.head_init_std)
    if ft.trainable_blocks is not None:
        heads.freeze_all_but_last(model, ft.trainable_blocks)
    if cfg.train.grad_checkpointing:
        model.set_grad_checkpointing(True)
    prep = preprocessing(model)
    transform = finetune_transform(
        prep["img_size"], ft.auto_augment, ft.reprob, ft.crop_scale, ft.crop_ratio, *_norm(prep)
    )
    loader, val_loader = _image_loaders(ctx, splits, transform, prep)
    mixup, criterion = mixup_and_loss(ft, len(splits.classes), cfg.data.batch_size)
    lr = ctx.lr()
    groups = lambda m: heads.layer_decay_groups(m, cfg.optim.weight_decay, ft.layer_decay)
    make_optimizer = lambda m: adamw(groups(m), lr, cfg.optim.betas, ctx.device)
    task = heads.ClassifyTask(
        criterion, val_loader, splits.classes, ctx.device, ctx.precision, mixup=mixup
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(
        "fine-tune %s: %d classes, %.2fM trainable parameters, lr %.3g, layer decay %.2f, %s",
        cfg.model.checkpoint,
        len(splits.classes),
        trainable / 1e6,
        lr,
        ft.layer_decay,
        ctx.out,
    )
    meta = {
        "task": "finetune",
        "classes": splits.classes,
        "model_name": getattr(model, "model_name", "vit"),
        "model_args": model.arch_config(),
    }
    return _fit_classifier(ctx, task, model, make_optimizer, loader, lr, meta, "fine-tune", splits)


def _norm(prep: dict) -> tuple:
    """(mean, std) of a model's preprocessing (ImageNet's unless a timm backbone says)."""
    return prep.get("mean", IMAGENET_MEAN), prep.get("std", IMAGENET_STD)


def _image_loaders(ctx: RunContext, splits, transform, prep: dict) -> tuple:
    """Training images through ``transform`` (shuffled, full batches) and validation images
    through the eval transform (every image once over all ranks)."""
    cfg, pin = ctx.cfg, ctx.device.type == "cuda"
    train = ImageDataset(splits.train, transform)
    val = ImageDataset(splits.val, eval_transform(**prep))
    return (
        train_loader(train, cfg.data.batch_size, cfg.train.seed, cfg.data.num_workers, pin),
        eval_loader(val, cfg.eval.batch_size, cfg.data.num_workers, pin),
    )


def mixup_and_loss(ft: FinetuneConfig, num_classes: int, batch_size: int):
    """timm's Mixup with soft-target cross-entropy, or label smoothing, or plain CE."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if ft.mixup > 0 or ft.cutmix > 0:
        if batch_size % 2:
            raise UserError(f"mixup/cutmix need an even data.batch_size, got {batch_size}")
        mixup = Mixup(
            mixup_alpha=ft.mixup,
            cutmix_alpha=ft.cutmix,
            label_smoothing=ft.smoothing,
            num_classes=num_classes,
        )
        return mixup, SoftTargetCrossEntropy()
    if ft.smoothing > 0:
        return None, LabelSmoothingCrossEntropy(ft.smoothing)
    return None, nn.CrossEntropyLoss()


def _clamp_batch(cfg: config_lib.Config, n: int) -> None:
    """Cached features: a batch larger than the data is clamped to it (with a note, and in
    the run folder's config.yaml), so a small labeled set works with the ImageNet-sized
    default batch."""
    per_rank = -(-n // dist.world_size())
    if cfg.data.batch_size > per_rank:
        log.info(
            "batch size %d is more than the %d training images per process: using %d",
            cfg.data.batch_size,
            per_rank,
            per_rank,
        )
        cfg.data.batch_size = per_rank
        if cfg.out and (Path(cfg.out) / "config.yaml").is_file():  # the batch that runs
            save_config(cfg)


def _fit_classifier(
    ctx: RunContext,
    task,
    model,
    make_optimizer,
    loader,
    lr,
    meta: dict,
    title: str,
    splits,
    floors=None,
) -> ClassifyResult:
    """Fit, then write metrics.json (with ``floors()``: the same protocol on raw pixels
    and a random-init encoder, as ``baselines``)."""
    cfg = ctx.cfg
    fitted = fit(ctx, task, model, make_optimizer, loader, lr, meta, monitor="val/acc1")
    metrics = {
        "protocol": cfg.task,
        "checkpoint": cfg.model.checkpoint,
        **task.last_metrics,
        "best_top1": max(fitted.best, fitted.last.get("val/acc1", float("-inf"))),
        "epochs": fitted.trainer.state.epoch,
    }
    if floors is not None:
        metrics["baselines"] = floors()
    out = ctx.run_dir()
    picture = write_metrics(out, metrics, splits.classes, title)
    curves = plot_curves(out / "log.jsonl", out / "curves.png") if dist.is_main() else None
    ctx.finish([picture, curves])
    best = out / "checkpoint-best.pth"
    return ClassifyResult(
        out=out,
        metrics=metrics,
        config=cfg,
        picture=picture,
        checkpoint=best if best.is_file() else out / "checkpoint-last.pth",
    )


LINPROBE = register(
    Recipe(
        "linprobe",
        linprobe,
        help="linear probe on a frozen backbone (MAE protocol: BN + linear, LARS)",
        defaults=LINPROBE_DEFAULTS,
        section=("linprobe", LinprobeConfig),
        backbone=True,
        api_args=("checkpoint",),
        order=11,
    )
)
FINETUNE = register(
    Recipe(
        "finetune",
        finetune,
        help="fine-tune a classifier (layer-wise lr decay, mixup/cutmix, RandAugment)",
        defaults=FINETUNE_DEFAULTS,
        section=("finetune", FinetuneConfig),
        backbone=True,
        api_args=("checkpoint",),
        order=12,
    )
)
TRAIN = register(
    Recipe(
        "train",
        finetune,
        help="train a classifier from scratch, supervised (the finetune recipe without a "
        "checkpoint; e.g. --config convmixer_256_8_cifar)",
        defaults={
            **FINETUNE_DEFAULTS,
            "model": {**FINETUNE_DEFAULTS["model"], "checkpoint": "none"},
        },
        section=("finetune", FinetuneConfig),
        backbone=True,
        order=13,
    )
)
