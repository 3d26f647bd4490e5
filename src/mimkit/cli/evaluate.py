"""``mimkit knn | linprobe | finetune | qscore``: what a backbone learned.

All four read a backbone through the shared contract (mimkit or official MAE files,
or ``--checkpoint none`` for a random-init encoder) and write a run folder with the
resolved config, log.jsonl, metrics.json and pictures.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import torch
from torch import nn

from .. import config as C
from ..data import EpochSampler, ImageDataset, build_loader, collate, eval_transform, open_splits
from ..data.sources import FolderSource
from ..engine import distributed as dist
from ..engine import precision as P
from ..engine.checkpoint import seed_all
from ..engine.logging import RunLogger, setup_console
from ..engine.loop import Trainer
from ..engine.optim import adamw
from ..engine.schedule import effective_lr
from ..errors import UserError
from ..eval import classify as K
from ..eval.features import (
    cached_extract,
    checkpoint_identity,
    default_cache_dir,
    extract,
    set_pool,
    source_identity,
)
from ..eval.knn import knn_scores
from ..eval.metrics import classification_metrics, plot_confusion, roc_auc
from ..eval.qscore import qscore
from ..interop.checkpoint import model_from_checkpoint
from ..models import create_encoder, input_size, is_pretrainer
from ..models.vit import encoder_args
from .common import add_training_flags, loop_config, prepare_run_dir, resolve_config, save_config

log = logging.getLogger("mimkit")

_HELP = {
    "knn": "weighted kNN accuracy of frozen features (DINO protocol)",
    "linprobe": "linear probe on a frozen backbone (MAE protocol: BN + linear, LARS)",
    "finetune": "fine-tune a classifier (layer-wise lr decay, mixup/cutmix, RandAugment)",
    "qscore": "per-image representation quality (Q-score), lowest first",
    "train": "train a classifier from scratch, supervised (the finetune task without a "
    "checkpoint; e.g. --config convmixer_256_8_cifar)",
}


def add_parser(sub) -> None:
    for name, fn in (
        ("knn", cmd_knn),
        ("linprobe", cmd_linprobe),
        ("finetune", cmd_finetune),
        ("qscore", cmd_qscore),
        ("train", cmd_finetune),
    ):
        training = name in ("linprobe", "finetune", "train")
        p = sub.add_parser(
            name,
            help=_HELP[name],
            description=_HELP[name] + ". Data: ROOT with "
            "train/<class>/ and val/<class>/ (or test/), or file lists "
            "(data.file_list, data.val_list) of 'path label' lines.",
        )
        add_training_flags(p, default_preset=None, training=training)
        p.add_argument(
            "--checkpoint",
            default="none" if name == "train" else None,
            help="backbone: mimkit or official MAE file; 'none' = random init of model.name",
        )
        p.add_argument("--pool", choices=("cls", "avg"), help="features from cls token or average")
        p.set_defaults(func=fn)


# ---------------------------------------------------------------------------- shared


def _start(args, task: str):
    cfg, resume = resolve_config(args, None, task=task)
    if args.dry_run:
        print(C.to_yaml(cfg), end="")
        return None
    device = dist.resolve_device(cfg.train.device)
    dist.init(device, cfg.train.dist_timeout_min)
    setup_console()
    seed_all(cfg.train.seed)  # same head / random-init weights on every rank and every run
    return cfg, resume, device, P.resolve(cfg.train.precision, device)


def _backbone(cfg: C.Config, device, **overrides) -> tuple[nn.Module, object]:
    """The encoder to evaluate, from a checkpoint or random init (eval.checkpoint=none)."""
    ckpt = cfg.eval.checkpoint
    if not ckpt:
        raise UserError(
            "no backbone given: pass --checkpoint CKPT (mimkit or official MAE file), "
            "or --checkpoint none with model.name=... for a random-init encoder"
        )
    if cfg.data.img_size:
        overrides["img_size"] = cfg.data.img_size
    if ckpt == "none":
        args = dict(cfg.model.args)
        if is_pretrainer(cfg.model.name):  # MAE/LoMaR names: their encoder's arguments only
            args = encoder_args(args)
        model, report = create_encoder(cfg.model.name, **{**args, **overrides}), None
    else:
        model, report = model_from_checkpoint(
            ckpt, kind="encoder", trust=cfg.trust_checkpoint, **overrides
        )
    if getattr(model, "channels_last", False):
        model = model.to(memory_format=torch.channels_last)
    return model.to(device), report


def _split_features(cfg: C.Config, model, splits, device, precision, out: Path) -> tuple:
    """Train and val features, extracted once and cached by checkpoint + data + transform."""
    transform = eval_transform(input_size(model))
    cache = (
        None if cfg.eval.cache_dir == "none" else Path(cfg.eval.cache_dir or default_cache_dir())
    )
    results = []
    for name, source in (("train", splits.train), ("val", splits.val)):
        key = {
            **checkpoint_identity(cfg.eval.checkpoint),
            "model": model.arch_config() if hasattr(model, "arch_config") else type(model).__name__,
            "seed": cfg.train.seed if cfg.eval.checkpoint == "none" else None,
            "data": source_identity(source),
            "transform": repr(transform),
            "pool": cfg.eval.pool,
            "precision": precision,
        }
        results.append(
            cached_extract(
                cache,
                key,
                lambda s=source, n=name: extract(
                    model,
                    s,
                    transform,
                    cfg.eval.batch_size,
                    cfg.data.num_workers,
                    device,
                    precision,
                    desc=f"{n} features",
                ),
            )
        )
    skipped = sorted(set(results[0]["bad"]) | set(results[1]["bad"]))
    if skipped:
        why = {**results[0].get("reasons", {}), **results[1].get("reasons", {})}
        first = skipped[0]
        log.warning(
            "%d unreadable images left out (first: %s, %s)",
            len(skipped),
            first,
            why.get(first, "unreadable"),
        )
    return results[0], results[1], skipped


def _finish(out: Path, metrics: dict, classes: list[str], title: str) -> None:
    """metrics.json and confusion.png on rank 0."""
    if not dist.is_main():
        return
    cm = metrics.pop("confusion", None)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if cm is not None:
        plot_confusion(cm, classes, out / "confusion.png", title)
    log.info(
        "%s: top-1 %.2f%%  top-5 %.2f%%  (%d images) -> %s",
        title,
        metrics["top1"],
        metrics["top5"],
        metrics["num_images"],
        out / "metrics.json",
    )


def _eval_loader(source, transform, cfg: C.Config, device):
    sampler = EpochSampler(
        len(source), shuffle=False, rank=dist.rank(), world=dist.world_size(), pad=False
    )
    return build_loader(
        ImageDataset(source, transform),
        cfg.eval.batch_size,
        sampler,
        cfg.data.num_workers,
        False,
        device.type == "cuda",
        collate,
    )


def _train_loader(dataset, cfg: C.Config, device, workers: int):
    sampler = EpochSampler(
        len(dataset), shuffle=True, seed=cfg.train.seed, rank=dist.rank(), world=dist.world_size()
    )
    return build_loader(
        dataset, cfg.data.batch_size, sampler, workers, True, device.type == "cuda", collate
    )


def _fit_classifier(
    cfg,
    out,
    task,
    model,
    make_optimizer,
    loader,
    device,
    lr,
    precision,
    resume,
    meta: dict,
    title: str,
    classes,
) -> dict:
    wrapped = dist.wrap(model, device, cfg.train.fsdp, cfg.train.compile)
    trainer = Trainer(
        task,
        wrapped,
        make_optimizer(model),  # after wrapping: FSDP replaces the parameters
        loader,
        device,
        loop_config(cfg, lr, precision, monitor="val/acc1"),
        out,
        meta={"config": C.to_dict(cfg), **meta},
        logger=RunLogger(out, cfg.train.tensorboard),
    )
    seed_all(cfg.train.seed + 1 + dist.rank())  # mixup / drop path differ across ranks
    if resume:
        trainer.resume(resume, trust=cfg.trust_checkpoint)
        save_config(cfg)
    last = trainer.fit()
    metrics = {
        "protocol": cfg.task,
        "checkpoint": cfg.eval.checkpoint,
        **task.last_metrics,
        "best_top1": max(trainer.state.best, last.get("val/acc1", float("-inf"))),
        "epochs": trainer.state.epoch,
    }
    _finish(out, metrics, classes, title)
    if dist.is_main():
        from ..viz.curves import plot_curves

        plot_curves(out / "log.jsonl", out / "curves.png")
    return metrics


# ---------------------------------------------------------------------------- knn


def cmd_knn(args) -> int:
    started = _start(args, "knn")
    if started is None:
        return 0
    cfg, _, device, precision = started
    splits = open_splits(cfg.data.path, cfg.data.file_list, cfg.data.val_list)
    out = prepare_run_dir(cfg, resuming=False)
    model, _ = _backbone(cfg, device)
    set_pool(model, cfg.eval.pool)
    train, val, skipped = _split_features(cfg, model, splits, device, precision, out)
    too_big = [k for k in cfg.eval.knn_k if k > len(train["labels"])]
    if too_big:
        log.warning(
            "k=%s exceeds the %d training images: using k=%d",
            too_big,
            len(train["labels"]),
            len(train["labels"]),
        )
    scores = knn_scores(
        train["features"],
        train["labels"],
        val["features"],
        len(splits.classes),
        cfg.eval.knn_k,
        cfg.eval.knn_temperature,
    )
    per_k = {k: classification_metrics(s, val["labels"], splits.classes) for k, s in scores.items()}
    best = max(per_k, key=lambda k: per_k[k]["top1"])
    metrics = {
        "protocol": "knn",
        "checkpoint": cfg.eval.checkpoint,
        "pool": cfg.eval.pool,
        "temperature": cfg.eval.knn_temperature,
        "best_k": best,
        "k": {str(k): {"top1": m["top1"], "top5": m["top5"]} for k, m in per_k.items()},
        **per_k[best],
        "num_train": len(train["labels"]),
        "skipped_images": len(skipped),
    }
    RunLogger(out, False).write(
        {"kind": "eval", **{f"knn{k}/top1": m["top1"] for k, m in per_k.items()}}
    )
    if dist.is_main():
        for k, m in per_k.items():
            print(f"k={k:<4d} top-1 {m['top1']:6.2f}%  top-5 {m['top5']:6.2f}%")
    _finish(out, metrics, splits.classes, f"kNN (k={best})")
    return 0


# ---------------------------------------------------------------------------- linprobe


class _FeatureSet(torch.utils.data.Dataset):
    """Cached features as a dataset: items (feature, label, no bad paths)."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item):
        i = item[0] if isinstance(item, tuple) else item
        return self.features[i], int(self.labels[i]), []


def cmd_linprobe(args) -> int:
    started = _start(args, "linprobe")
    if started is None:
        return 0
    cfg, resume, device, precision = started
    splits = open_splits(cfg.data.path, cfg.data.file_list, cfg.data.val_list)
    out = prepare_run_dir(cfg, resuming=resume is not None)
    backbone, _ = _backbone(cfg, device)
    set_pool(backbone, cfg.eval.pool)
    cached = cfg.linprobe.cache and not cfg.linprobe.augment
    if cached:  # the encoder runs once; the head trains on stored features
        train, val, _ = _split_features(cfg, backbone, splits, device, precision, out)
        _clamp_batch(cfg, len(train["labels"]))
        loader = _train_loader(_FeatureSet(train["features"], train["labels"]), cfg, device, 0)
        val_loader = _eval_loader_features(val, cfg)
        encoder = None
    else:
        size = input_size(backbone)
        from ..data.transforms import linprobe_transform

        transform = linprobe_transform(size) if cfg.linprobe.augment else eval_transform(size)
        loader = _train_loader(
            ImageDataset(splits.train, transform), cfg, device, cfg.data.num_workers
        )
        val_loader = _eval_loader(splits.val, eval_transform(size), cfg, device)
        encoder = K.FrozenEncoder(backbone)
    head = K.LinearProbe(backbone.num_features, len(splits.classes)).to(device)
    lr = effective_lr(
        cfg.optim.blr, cfg.optim.lr, cfg.data.batch_size * cfg.optim.accum_iter * dist.world_size()
    )
    make_optimizer = lambda m: K.probe_optimizer(
        m, cfg.linprobe.optimizer, lr, cfg.optim.weight_decay
    )
    task = K.ClassifyTask(
        nn.CrossEntropyLoss(), val_loader, splits.classes, device, precision, encoder=encoder
    )
    log.info(
        "linear probe (%s, %s): %d classes, lr %.3g, %s",
        cfg.linprobe.optimizer,
        "cached features" if cached else "encoder each step",
        len(splits.classes),
        lr,
        out,
    )
    _fit_classifier(
        cfg,
        out,
        task,
        head,
        make_optimizer,
        loader,
        device,
        lr,
        precision,
        resume,
        {"task": "linprobe", "classes": splits.classes},
        "linear probe",
        splits.classes,
    )
    return 0


def _clamp_batch(cfg: C.Config, n: int) -> None:
    """Cached features: a batch larger than the data is clamped to it (with a note), so
    a small labeled set works with the ImageNet-sized default batch."""
    per_rank = -(-n // dist.world_size())
    if cfg.data.batch_size > per_rank:
        log.info(
            "batch size %d is more than the %d training images per process: using %d",
            cfg.data.batch_size,
            per_rank,
            per_rank,
        )
        cfg.data.batch_size = per_rank


def _eval_loader_features(val: dict, cfg: C.Config):
    ds = _FeatureSet(val["features"], val["labels"])
    sampler = EpochSampler(
        len(ds), shuffle=False, rank=dist.rank(), world=dist.world_size(), pad=False
    )
    return build_loader(ds, cfg.eval.batch_size, sampler, 0, False, False, collate)


# ---------------------------------------------------------------------------- finetune


def cmd_finetune(args) -> int:
    started = _start(args, "finetune")
    if started is None:
        return 0
    cfg, resume, device, precision = started
    ft = cfg.finetune
    splits = open_splits(cfg.data.path, cfg.data.file_list, cfg.data.val_list)
    out = prepare_run_dir(cfg, resuming=resume is not None)
    model, report = _backbone(
        cfg,
        device,
        num_classes=len(splits.classes),
        global_pool=ft.global_pool,
        drop_path_rate=cfg.model.drop_path,
    )
    new_head = report is None or "head.weight" in report.missing + report.dropped
    if new_head and ft.head_init_std is not None:
        K.init_head(model, ft.head_init_std)
    if ft.trainable_blocks is not None:
        K.freeze_all_but_last(model, ft.trainable_blocks)
    if cfg.train.grad_checkpointing:
        model.set_grad_checkpointing(True)
    size = input_size(model)
    from ..data.transforms import finetune_transform

    transform = finetune_transform(size, ft.auto_augment, ft.reprob, ft.crop_scale, ft.crop_ratio)
    loader = _train_loader(ImageDataset(splits.train, transform), cfg, device, cfg.data.num_workers)
    val_loader = _eval_loader(splits.val, eval_transform(size), cfg, device)
    mixup, criterion = _mixup_and_loss(ft, len(splits.classes), cfg.data.batch_size)
    lr = effective_lr(
        cfg.optim.blr, cfg.optim.lr, cfg.data.batch_size * cfg.optim.accum_iter * dist.world_size()
    )
    make_optimizer = lambda m: adamw(
        K.layer_decay_groups(m, cfg.optim.weight_decay, ft.layer_decay), lr, cfg.optim.betas, device
    )
    task = K.ClassifyTask(criterion, val_loader, splits.classes, device, precision, mixup=mixup)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(
        "fine-tune %s: %d classes, %.2fM trainable parameters, lr %.3g, layer decay %.2f, %s",
        cfg.eval.checkpoint,
        len(splits.classes),
        trainable / 1e6,
        lr,
        ft.layer_decay,
        out,
    )
    meta = {
        "task": "finetune",
        "classes": splits.classes,
        "model_name": getattr(model, "model_name", "vit"),
        "model_args": model.arch_config(),
    }
    _fit_classifier(
        cfg,
        out,
        task,
        model,
        make_optimizer,
        loader,
        device,
        lr,
        precision,
        resume,
        meta,
        "fine-tune",
        splits.classes,
    )
    return 0


def _mixup_and_loss(ft: C.FinetuneConfig, num_classes: int, batch_size: int):
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


# ---------------------------------------------------------------------------- qscore


def cmd_qscore(args) -> int:
    started = _start(args, "qscore")
    if started is None:
        return 0
    cfg, _, device, precision = started
    out = prepare_run_dir(cfg, resuming=False)
    model, _ = _backbone(cfg, device)
    set_pool(model, cfg.eval.pool)
    root = Path(cfg.data.path or "")
    labeled = cfg.data.val_list or (root / "train").is_dir()
    if labeled:
        splits = open_splits(cfg.data.path, cfg.data.file_list, cfg.data.val_list)
        train, val, _ = _split_features(cfg, model, splits, device, precision, out)
        k = 20 if 20 in cfg.eval.knn_k else cfg.eval.knn_k[0]
        votes = knn_scores(
            train["features"],
            train["labels"],
            val["features"],
            len(splits.classes),
            [k],
            cfg.eval.knn_temperature,
        )
        pred = next(iter(votes.values())).argmax(1)
        target, classes = val, splits.classes
    else:
        source = FolderSource(cfg.data.path) if cfg.data.path else None
        if source is None:
            raise UserError("no data given: pass --data PATH (a folder, or ROOT with train/ val/)")
        target = extract(
            model,
            source,
            eval_transform(input_size(model)),
            cfg.eval.batch_size,
            cfg.data.num_workers,
            device,
            precision,
        )
        pred, classes, k = None, source.classes, None
    q = qscore(target["features"])
    if dist.is_main():
        _write_qscore(out, q, target, pred, classes, k)
    return 0


def _write_qscore(out: Path, q, target: dict, pred, classes, k) -> None:
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
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _plot_qscore(q, correct, out / "qscore_hist.png")
    auc = metrics.get("auc_correct_vs_wrong")
    print(
        f"Q-score of {len(q)} images -> {out / 'qscore.csv'} (lowest first)"
        + (f"; ROC AUC correct vs wrong kNN: {auc:.3f}" if auc is not None else "")
    )


def _plot_qscore(q, correct, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if correct is None:
        ax.hist(q.numpy(), bins=50, color="tab:blue")
    else:
        ax.hist(q[correct].numpy(), bins=50, alpha=0.6, label="kNN correct", density=True)
        ax.hist(q[~correct].numpy(), bins=50, alpha=0.6, label="kNN wrong", density=True)
        ax.legend()
    ax.set_xlabel("Q-score")
    ax.set_ylabel("density" if correct is not None else "images")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
