"""Semantic segmentation on a plain ViT: train (UperNet fine-tuning, or the linear probe on
frozen patch tokens, as a task on the one loop), mIoU evaluation of a segmentation
checkpoint, and predicted masks.

    mimkit segment train --config upernet_vit_base_ade20k --checkpoint mae.pth \\
        --data ADEChallengeData2016
    mimkit segment evaluate --checkpoint runs/x/checkpoint-best.pth --data ADEChallengeData2016
    mimkit segment predict --checkpoint runs/x/checkpoint-best.pth --images photos/

Data (``segment`` keys): an ADE20K release folder as ``data.path``; an image folder with a
mask folder (``segment.masks``) and a class list (``segment.classes``); or COCO instance
annotations drawn as semantic masks (``segment.train_ann``). Every pair is checked before
training (rank 0; its error reaches every rank). The pieces live in ``mimkit.segmentation``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from .. import config as config_lib
from .. import segmentation as seg
from ..data.loader import eval_loader, train_loader
from ..engine.logging import read_log
from ..engine.optim import adamw
from ..errors import UserError
from ..models import create_model
from ..utils import distributed as dist
from ..utils.io import safe_torch_load, write_json
from .backbone import load_backbone
from .registry import Flag, Recipe, register
from .results import Result
from .run import RunContext, fit, start

log = logging.getLogger("mimkit")
SegHead = config_lib.Choice("SegHead", {v: v for v in ("upernet", "linear")})


@dataclass
class SegmentConfig:
    # upernet: the ViT fine-tuned under a 4-level pyramid, UperNet and an FCN auxiliary
    # head (BEiT / MAE); linear: BatchNorm + 1x1 conv on frozen patch tokens (DINOv2)
    head: SegHead = SegHead.upernet
    # data: data.path is an ADE20K release folder (ADEChallengeData2016), or an image
    # folder with `masks` (same relative paths, .png) and `classes`, or COCO images with
    # `train_ann` (instances json; class 0 = background)
    masks: str | None = None
    classes: str | None = None  # class list file, one name a line (mask folders)
    val_images: str | None = None  # validation images (default: data.path)
    val_masks: str | None = None  # validation masks for a mask folder
    train_ann: str | None = None  # COCO instances json for data.path's images
    val_ann: str | None = None  # COCO instances json for val_images
    val_split: int = 0  # hold out the last N items of the training set (no val data)
    ignore_index: int = 255  # mask value that is no class (not scored, no loss)
    reduce_zero_label: bool = False  # mask value 0 ignored, l -> class l - 1 (ADE20K's rule)
    scan: bool = True  # check every image/mask pair before training
    # mmseg's ADE20K pipeline: resize to ratio x scale (aspect kept), crop, flip, photometric
    crop: list[int] | None = None  # [h, w]; default: data.img_size square (512)
    scale: list[int] = field(default_factory=lambda: [2048, 512])
    ratio_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    cat_max_ratio: float = 0.75  # re-draw crops one class covers this much of
    photometric: bool = True
    # inference: sliding crop windows every `stride` at `test_scale`, optional flip / scales
    test_scale: list[int] | None = None  # default: scale
    stride: list[int] | None = None  # default: 2/3 of the crop (341 for 512, mmseg's)
    ratios: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False
    # UperNet
    channels: int | None = None  # default: the ViT's width (BEiT's configs: 768 for ViT-B)
    indices: list[int] | None = None  # 4 blocks for the pyramid; default 1/3, 1/2, 2/3, last
    aux: bool = True
    aux_weight: float = 0.4
    aux_channels: int = 256
    layer_decay: float = 0.65  # lr scale decay^(depth + 1 - layer)
    # linear probe
    last_blocks: int = 1  # 1: last block; 4: the last four concatenated
    pixels: bool = False  # the probe on raw pixel patches (no backbone): the floor
    pixel_patch: int = 16
    # schedule (mmseg's poly): linear warm-up from warmup_ratio x lr, then (1 - t/T)^power
    iters: int | None = None  # run length in optimizer steps (train.epochs follows)
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6
    power: float = 1.0
    pictures: int = 4  # validation images drawn with their prediction after training


SEGMENT_DEFAULTS = {
    "model": {"name": "vit_base_patch16", "drop_path": 0.1},
    "data": {"img_size": 512, "batch_size": 2},
    "optim": {"lr": 1e-4, "weight_decay": 0.05, "betas": [0.9, 0.999], "min_lr": 0.0},
    "train": {"epochs": 100, "save_every": 10},
}


@dataclass
class SegmentResult(Result):
    """A segmentation run or evaluation: ``result['mIoU']``, per-class ``IoU``, the
    checkpoint; a notebook shows its picture (validation images with predictions)."""

    checkpoint: Path | None = None
    class_iou: Path | None = None  # the per-class IoU bar plot

    def predict(self, images, out: str | Path | None = None, device: str = "cpu") -> list[dict]:
        """``segment.predict`` with this run's checkpoint (masks into ``out``)."""
        target = Path(out) if out else Path(self.out) / "predictions"
        return predict(self.checkpoint, images, target, device=device)


# --------------------------------------------------------------------------- settings


def crop_size(cfg: config_lib.Config) -> tuple[int, int]:
    """The training crop (h, w): ``segment.crop``, else ``data.img_size`` square."""
    crop, side = cfg.segment.crop, cfg.data.img_size
    if crop is None:
        return (side or 512, side or 512)
    if len(crop) != 2 or min(crop) < 1:
        raise UserError(f"config key 'segment.crop' must be [height, width], got {list(crop)}")
    if side and (side, side) != tuple(crop):
        raise UserError(
            f"data.img_size={side} and segment.crop={list(crop)} disagree: set one of them"
        )
    return int(crop[0]), int(crop[1])


def inference_settings(cfg: config_lib.Config, crop: tuple[int, int]) -> dict:
    """``predict_probs`` keyword arguments of a run (saved in its checkpoints)."""
    s = cfg.segment
    stride = s.stride or [max(1, c * 2 // 3) for c in crop]
    return {
        "scale": list(s.test_scale or s.scale),
        "crop": list(crop),
        "stride": list(stride),
        "ratios": list(s.ratios),
        "flip": bool(s.flip),
    }


# --------------------------------------------------------------------------- data


def _sources(cfg: config_lib.Config):
    """The (train, val) sources the config names, or one line saying what is missing."""
    s, path = cfg.segment, cfg.data.path
    if not path:
        raise UserError(
            "segment train needs --data: an ADE20K folder (ADEChallengeData2016), an image "
            "folder with segment.masks=MASKS segment.classes=classes.txt, or COCO images with "
            "segment.train_ann=instances.json"
        )
    if s.train_ann:
        return _coco_sources(cfg)
    if s.masks:
        return _folder_sources(cfg)
    return seg.ade20k(path, "training"), seg.ade20k(path, "validation")


def _coco_sources(cfg: config_lib.Config):
    s, path = cfg.segment, cfg.data.path
    full = seg.CocoSemantic(path, s.train_ann, ignore_index=s.ignore_index)
    if s.val_ann:
        val = seg.CocoSemantic(s.val_images or path, s.val_ann, ignore_index=s.ignore_index)
        if val.classes != full.classes:
            raise UserError(f"{s.val_ann} has other categories than {s.train_ann}")
        return full, val
    n = _holdout(s.val_split, len(full), "segment.val_ann=instances_val.json")
    train = seg.CocoSemantic(path, s.train_ann, full.ids[:-n], s.ignore_index)
    return train, seg.CocoSemantic(path, s.train_ann, full.ids[-n:], s.ignore_index)


def _folder_sources(cfg: config_lib.Config):
    s, path = cfg.segment, cfg.data.path
    if not s.classes:
        raise UserError("a mask folder needs segment.classes=FILE (one class name a line)")
    classes = seg.read_class_names(s.classes)
    rules = dict(ignore_index=s.ignore_index, reduce_zero_label=s.reduce_zero_label)
    full = seg.mask_folder(path, s.masks, classes, **rules)
    if s.val_images or s.val_masks:
        if not (s.val_images and s.val_masks):
            raise UserError("set both segment.val_images and segment.val_masks")
        return full, seg.mask_folder(s.val_images, s.val_masks, classes, **rules)
    n = _holdout(s.val_split, len(full), "segment.val_images=... segment.val_masks=...")
    return seg.MaskPairs(full.pairs[:-n], classes, **rules), seg.MaskPairs(
        full.pairs[-n:], classes, **rules
    )


def _holdout(n: int, total: int, other: str) -> int:
    if not 0 < n < total:
        raise UserError(
            f"no validation data: set {other}, or segment.val_split=N (0 < N < {total}) to "
            "hold out the last N training items"
        )
    return n


def scan_on_rank0(*sources, workers: int = 4) -> None:
    """``segmentation.scan`` of every pair on rank 0; its error (one line naming the file)
    is raised on every rank, so no rank waits in a collective for one that stopped."""
    problem = None
    if dist.is_main():
        try:
            for source in sources:
                seg.scan(source, workers=workers)
        except UserError as e:
            problem = str(e)
    problem = dist.broadcast_object(problem)
    if problem:
        raise UserError(problem)


# --------------------------------------------------------------------------- model


def fit_to_crop(vit: nn.Module, crop: tuple[int, int]) -> None:
    """Set the backbone's position table to the crop's token grid (bicubic, once), so
    training crops and sliding windows run at the table's own grid, square or not. A
    backbone built at the crop already is left as it is (BEiT-style relative position
    tables are resized when the weights load, for the grid the backbone was built for)."""
    if not hasattr(vit, "patch_embed") or not hasattr(vit, "blocks"):
        name = getattr(vit, "model_name", type(vit).__name__)
        raise UserError(f"{name} is not a ViT: segmentation needs a plain ViT backbone")
    pe = vit.patch_embed
    p = pe.patch_size[0] if isinstance(pe.patch_size, (tuple, list)) else pe.patch_size
    if crop[0] % p or crop[1] % p:
        raise UserError(f"segment.crop {list(crop)} is not a multiple of the patch size {p}")
    grid = (crop[0] // p, crop[1] // p)
    if tuple(pe.grid_size) == grid:
        return
    if not hasattr(vit, "dynamic_img_size"):
        raise UserError(
            f"{type(vit).__name__} takes square crops only (its relative position tables "
            "are built for one square grid): set segment.crop=[S, S]"
        )
    pos = getattr(vit, "pos_embed", None)
    if pos is not None:
        prefix = 0 if getattr(vit, "no_embed_class", False) else vit.num_prefix_tokens
        with torch.no_grad():
            table = resample_abs_pos_embed(
                pos.data, list(grid), old_size=list(pe.grid_size), num_prefix_tokens=prefix
            )
        vit.pos_embed = nn.Parameter(table, requires_grad=pos.requires_grad)
    pe.img_size, pe.grid_size, pe.num_patches = tuple(crop), grid, grid[0] * grid[1]


def load_vit(cfg: config_lib.Config, crop: tuple[int, int]):
    """The backbone at the crop size: a square crop builds it there (the checkpoint's
    position table, and relative position tables, resized as it loads); another crop
    resamples the table afterwards. Drop path only when the ViT is fine-tuned."""
    s = cfg.segment
    overrides = {}
    if s.head == SegHead.upernet:
        overrides["drop_path_rate"] = cfg.model.drop_path
    if crop[0] == crop[1]:
        overrides["img_size"] = crop[0]
    vit, report = load_backbone(cfg, torch.device("cpu"), **overrides)
    fit_to_crop(vit, crop)
    return vit, report


def model_spec(cfg: config_lib.Config, vit: nn.Module | None, classes, crop) -> dict:
    """What rebuilds the model without the pretrained file (saved in its checkpoints)."""
    s = cfg.segment
    backbone = None
    if vit is not None:
        backbone = {"name": getattr(vit, "model_name", "vit"), "args": vit.arch_config()}
    return {
        "head": str(s.head),
        "backbone": backbone,
        "crop": list(crop),
        "num_classes": len(classes),
        "classes": list(classes),
        "ignore_index": s.ignore_index,
        "reduce_zero_label": s.reduce_zero_label,
        "channels": s.channels,
        "indices": list(s.indices) if s.indices is not None else None,
        "aux": s.aux,
        "aux_weight": s.aux_weight,
        "aux_channels": s.aux_channels,
        "last_blocks": s.last_blocks,
        "pixel_patch": s.pixel_patch,
        "inference": inference_settings(cfg, crop),
    }


def make_segmenter(spec: dict, vit: nn.Module | None = None) -> seg.SegmentationModel:
    """The model a spec describes, around ``vit`` (default: a new one of the spec's shape)."""
    if vit is None and spec["backbone"] is not None:
        b = spec["backbone"]
        vit = create_model(b["name"], **b["args"])
        fit_to_crop(vit, tuple(spec["crop"]))
    k, ignore = spec["num_classes"], spec["ignore_index"]
    if spec["head"] == "upernet":
        if vit is None:
            raise UserError("the UperNet head needs a backbone: segment.pixels is for the probe")
        model = seg.upernet(
            vit,
            k,
            channels=spec["channels"],
            indices=spec["indices"],
            aux=spec["aux"],
            aux_channels=spec["aux_channels"],
            ignore_index=ignore,
        )
        model.aux_weight = spec["aux_weight"]
        return model
    return seg.linear_probe(
        vit, k, spec["last_blocks"], patch_size=spec["pixel_patch"], ignore_index=ignore
    )


def poly_lr(base: float, min_lr: float, total: int, warmup: int, ratio: float, power: float):
    """mmcv's ``PolyLrUpdaterHook`` with linear warm-up, per optimizer step ``it``:
    ``(base - min) (1 - it/total)^power + min``, times ``1 - (1 - it/warmup)(1 - ratio)``
    during the warm-up (BEiT / MAE / iBOT ADE20K configs: warm-up 1500, ratio 1e-6,
    power 1.0, min 0)."""

    def lr(it: int, planned: int) -> float:
        t = total or planned
        regular = (base - min_lr) * max(1.0 - it / t, 0.0) ** power + min_lr
        if it < warmup:
            return regular * (1.0 - (1.0 - it / warmup) * (1.0 - ratio))
        return regular

    return lr


# --------------------------------------------------------------------------- train


class _Task(seg.SegmentTask):
    """``SegmentTask`` that also writes each evaluation: metrics.json (rank 0) and a
    ``class_iou`` row in log.jsonl (per-class IoU / accuracy)."""

    def __init__(self, *args, out: Path, logger, **kwargs):
        super().__init__(*args, **kwargs)
        self.out, self.logger, self.best = out, logger, -math.inf

    def evaluate(self, model, epoch: int) -> dict[str, float]:
        same_buffers(model)
        row = super().evaluate(model, epoch)
        if not row or not dist.is_main():
            return row
        m = self.last_metrics
        self.best = max(self.best, m["mIoU"])
        per_class = {"IoU": _by_class(m, "IoU"), "Acc": _by_class(m, "Acc")}
        self.logger.write({"kind": "class_iou", "epoch": epoch + 1, **per_class})
        summary = {k: m[k] for k in ("mIoU", "mAcc", "aAcc")}
        write_json(
            self.out / "metrics.json",
            {"epoch": epoch + 1, **summary, "best_mIoU": self.best, **per_class},
        )
        return row


def same_buffers(model: nn.Module) -> None:
    """Rank 0's BatchNorm statistics on every rank before a validation split over ranks.
    Plain BatchNorm (no SyncBatchNorm on CPUs) updates each rank's running statistics from
    its own batches; DDP copies rank 0's at every training forward, but a validation
    between them would score a slightly different model on each rank. The one saved, and
    evaluated later, is rank 0's."""
    if dist.world_size() < 2:
        return
    net = dist.unwrap(model)
    mine = {k: v.detach().cpu() for k, v in net.named_buffers()} if dist.is_main() else None
    theirs = dist.broadcast_object(mine)
    with torch.no_grad():
        for k, v in net.named_buffers():
            v.copy_(theirs[k])


def _by_class(metrics: dict, key: str) -> dict:
    """{class: value in %}; null for a class in neither labels nor predictions (NaN)."""
    return {c: (v if v == v else None) for c, v in zip(metrics["classes"], metrics[key])}


def train(cfg: config_lib.Config, resume: Path | None = None) -> SegmentResult:
    ctx = start(cfg, resume)
    s, crop = cfg.segment, crop_size(cfg)
    train_src, val_src = _sources(cfg)
    if s.scan:
        scan_on_rank0(train_src, val_src, workers=max(cfg.data.num_workers, 1))
    classes = train_src.classes
    vit, report = (None, None) if s.pixels else load_vit(cfg, crop)
    spec = model_spec(cfg, vit, classes, crop)
    model = make_segmenter(spec, vit).to(ctx.device)
    if dist.world_size() > 1 and ctx.device.type == "cuda":  # mmseg's SyncBN (CUDA only)
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    out = ctx.run_dir()
    loader, val_loader = _loaders(cfg, train_src, val_src, crop)
    lr = ctx.lr()
    groups = lambda m: seg.param_groups(m, cfg.optim.weight_decay, s.layer_decay)
    make_optimizer = lambda m: adamw(groups(m), lr, cfg.optim.betas, ctx.device)
    inf = spec["inference"]
    task = _Task(
        val_loader,
        len(classes),
        ctx.device,
        classes,
        s.ignore_index,
        inf["scale"],
        tuple(crop),
        inf["stride"],
        ctx.precision,
        out=out,
        logger=ctx.logger(),
    )
    changes = _schedule(ctx, lr, len(loader))
    _log_start(ctx, model, spec, report, len(train_src), len(val_src), lr, out)
    meta = {"task": "segment", "segmenter": spec}
    fitted = fit(ctx, task, model, make_optimizer, loader, lr, meta, "val/mIoU", **changes)
    return _finish(ctx, task, model, spec, val_src, fitted)


def _loaders(cfg: config_lib.Config, train_src, val_src, crop):
    s = cfg.segment
    transform = seg.TrainTransform(
        crop=crop,
        scale=s.scale,
        ratio_range=s.ratio_range,
        cat_max_ratio=s.cat_max_ratio,
        photometric=s.photometric,
        ignore_index=s.ignore_index,
    )
    data = seg.SegmentationDataset(train_src, transform)
    w = cfg.data.num_workers
    loader = train_loader(
        data, cfg.data.batch_size, cfg.train.seed, w, collate_fn=seg.train_collate
    )
    val = eval_loader(seg.EvalDataset(val_src), 1, w, collate_fn=seg.eval_collate)
    return loader, val


def _schedule(ctx: RunContext, lr: float, batches: int) -> dict:
    """Loop changes: the poly lr rule and, with ``segment.iters``, the run's length."""
    cfg, s = ctx.cfg, ctx.cfg.segment
    changes = {}
    if s.iters:
        per_epoch = max(batches // cfg.optim.accum_iter, 1)
        cfg.train.epochs = math.ceil(s.iters / per_epoch)
        changes["max_steps"] = min(s.iters, cfg.train.max_steps or s.iters)
        log.info("segment: %d iterations = %d epochs of %d", s.iters, cfg.train.epochs, per_epoch)
    rule = (lr, cfg.optim.min_lr, s.iters or 0, s.warmup_iters, s.warmup_ratio, s.power)
    changes["lr_fn"] = poly_lr(*rule)
    return changes


def _log_start(ctx, model, spec, report, n_train, n_val, lr, out) -> None:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    backbone = "raw pixels" if spec["backbone"] is None else ctx.cfg.model.checkpoint
    log.info(
        "segment (%s): %d train / %d val images, %d classes, crop %s, backbone %s (%s), "
        "%.2fM trainable parameters, lr %.3g -> %s",
        spec["head"],
        n_train,
        n_val,
        spec["num_classes"],
        "x".join(map(str, spec["crop"])),
        backbone,
        report or ("no weights" if spec["backbone"] is None else "random init"),
        trainable / 1e6,
        lr,
        out,
    )


def _finish(ctx: RunContext, task: _Task, model, spec: dict, val_src, fitted) -> SegmentResult:
    out, cfg = ctx.out, ctx.cfg
    last = task.last_metrics
    metrics = {"checkpoint": cfg.model.checkpoint or "none", "head": spec["head"]}
    metrics.update({k: last[k] for k in ("mIoU", "mAcc", "aAcc")} if last else {})
    best_miou = dist.broadcast_object(fitted.best)  # rank 0 keeps it (a resumed run's too)
    best_miou = best_miou if math.isfinite(best_miou) else None
    metrics.update(best_mIoU=best_miou, epochs=fitted.trainer.state.epoch)
    pictures, iou_plot = [], None
    if dist.is_main():
        metrics["history"] = _history(out)
        if last:
            metrics.update(IoU=_by_class(last, "IoU"), Acc=_by_class(last, "Acc"))
            iou_plot = seg.plot_class_iou(last["IoU"], last["classes"], out / "class_iou.png")
        write_json(out / "metrics.json", metrics)
        pictures = draw_predictions(model, val_src, spec, ctx.device, out, cfg.segment.pictures)
    ctx.finish([iou_plot, *pictures[:1]])
    best = out / "checkpoint-best.pth"
    return SegmentResult(
        out=out,
        metrics=metrics,
        config=cfg,
        picture=pictures[0] if pictures else iou_plot,
        checkpoint=best if best.is_file() else out / "checkpoint-last.pth",
        class_iou=iou_plot,
    )


def _history(out: Path) -> list[dict]:
    keys = ("val/mIoU", "val/mAcc", "val/aAcc")
    rows = [r for r in read_log(out / "log.jsonl") if r.get("kind") == "epoch"]
    return [
        {
            "epoch": r["epoch"],
            "step": r.get("step"),
            "loss": r.get("loss"),
            **{k[4:]: r[k] for k in keys if k in r},
        }
        for r in rows
    ]


@torch.no_grad()
def draw_predictions(model, source, spec: dict, device, out: Path, n: int) -> list[Path]:
    """The first ``n`` items of ``source`` with ground truth and prediction side by side:
    ``pictures/<name>.png`` each and ``predictions.png``, all of them stacked."""
    if n <= 0 or len(source) == 0:
        return []
    from PIL import Image

    net = dist.unwrap(model).eval()
    colors = seg.palette(spec["num_classes"])
    inf = spec["inference"]
    folder = out / "pictures"
    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(min(n, len(source))):
        img, label = source.load(i)
        probs = seg.predict_probs(net, img.to(device), **_probs_args(inf))
        path = folder / f"{source.name(i)}.png"
        seg.prediction_figure(
            img,
            probs.argmax(0).cpu(),
            label,
            colors,
            path,
            spec["classes"],
            spec["ignore_index"],
            title=source.name(i),
        )
        paths.append(path)
    stacked = [Image.open(p).convert("RGB") for p in paths]
    width = max(im.width for im in stacked)
    canvas = Image.new("RGB", (width, sum(im.height for im in stacked)), "white")
    y = 0
    for im in stacked:
        canvas.paste(im, (0, y))
        y += im.height
    canvas.save(out / "predictions.png")
    return [out / "predictions.png", *paths]


def _probs_args(inf: dict, ratios=None, flip=None) -> dict:
    return {
        "scale": tuple(inf["scale"]),
        "crop": tuple(inf["crop"]),
        "stride": tuple(inf["stride"]),
        "ratios": tuple(ratios or inf["ratios"]),
        "flip": inf["flip"] if flip is None else flip,
    }


# --------------------------------------------------------------------------- evaluate, predict


def load_segmenter(path: str | Path, device, trust: bool = False):
    """(model in eval mode, its spec) from a ``segment train`` checkpoint."""
    state = safe_torch_load(path, trust=trust)
    if not isinstance(state, dict) or state.get("task") != "segment" or "segmenter" not in state:
        raise UserError(
            f"{path} is not a segmentation checkpoint (write one with `mimkit segment train`)"
        )
    spec = state["segmenter"]
    model = make_segmenter(spec)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), spec


def eval_source(spec: dict, data, masks=None, classes=None, ann=None, split="validation"):
    """Labelled images for a checkpoint: COCO images + ``ann``, images + ``masks`` (its
    class list, or the file ``classes``), else an ADE20K folder's ``split``."""
    if ann:
        source = seg.CocoSemantic(data, ann, ignore_index=spec["ignore_index"])
    elif masks:
        names = seg.read_class_names(classes) if classes else spec["classes"]
        rules = dict(ignore_index=spec["ignore_index"])
        rules["reduce_zero_label"] = spec.get("reduce_zero_label", False)
        source = seg.mask_folder(data, masks, names, **rules)
    else:
        source = seg.ade20k(data, split)
    if len(source.classes) != spec["num_classes"]:
        raise UserError(
            f"{data} has {len(source.classes)} classes, the checkpoint {spec['num_classes']}"
        )
    return source


def _first(source, n: int | None):
    if n:
        if hasattr(source, "ids"):
            source.ids = source.ids[:n]
        else:
            source.pairs = source.pairs[:n]
    return source


def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    masks: str | Path | None = None,
    classes: str | Path | None = None,
    ann: str | Path | None = None,
    split: str = "validation",
    out: str | Path = "runs/segment-eval",
    ratios: list[float] | None = None,
    flip: bool | None = None,
    max_images: int | None = None,
    device: str = "auto",
    trust: bool = False,
) -> SegmentResult:
    """mIoU, mAcc, aAcc and per-class IoU of a segmentation checkpoint on labelled images:
    an ADE20K folder (its ``split``), ``data`` images with ``masks`` (and a ``classes``
    file, default the checkpoint's), or ``data`` images with COCO ``ann``. Sliding windows
    as in training; ``ratios`` / ``flip`` for multi-scale + flip. Under torchrun every
    process takes its share of the images and the counts are summed."""
    dev = dist.resolve_device(device)
    dist.init(dev)
    model, spec = load_segmenter(checkpoint, dev, trust)
    source = _first(eval_source(spec, data, masks, classes, ann, split), max_images)
    scan_on_rank0(source)
    loader = eval_loader(seg.EvalDataset(source), 1, 0, collate_fn=seg.eval_collate)
    args = _probs_args(spec["inference"], ratios, flip)
    scores = seg.evaluate(
        model, loader, spec["num_classes"], dev, source.classes, spec["ignore_index"], **args
    )
    out = Path(out)
    metrics = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "images": len(source),
        **{k: scores[k] for k in ("mIoU", "mAcc", "aAcc", "num_pixels")},
        "IoU": _by_class(scores, "IoU"),
        "Acc": _by_class(scores, "Acc"),
        "ratios": list(args["ratios"]),
        "flip": args["flip"],
    }
    picture = None
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "metrics.json", metrics)
        picture = seg.plot_class_iou(scores["IoU"], scores["classes"], out / "class_iou.png")
        log.info(
            "segment evaluate: mIoU %.2f  mAcc %.2f  aAcc %.2f -> %s",
            scores["mIoU"],
            scores["mAcc"],
            scores["aAcc"],
            out / "metrics.json",
        )
    return SegmentResult(
        out=out, metrics=metrics, picture=picture, checkpoint=Path(checkpoint), class_iou=picture
    )


def predict(
    checkpoint: str | Path,
    images,
    out: str | Path = "segmentations",
    overlays: bool = True,
    device: str = "auto",
    trust: bool = False,
) -> list[dict]:
    """Segment image files or folders: ``<out>/<stem>.png`` (a palette PNG whose pixel is
    the class id) and ``<stem>_overlay.png`` (image beside its coloured prediction). Returns
    one row per image: its files and the classes found."""
    import numpy as np

    from ..data.sources import collect_images
    from ..segmentation.data import image_size

    if isinstance(images, (str, Path)):
        images = [images]
    dev = dist.resolve_device(device)
    model, spec = load_segmenter(checkpoint, dev, trust)
    paths = []
    for path in collect_images([str(p) for p in images]):
        try:
            image_size(Path(path))
        except UserError as e:  # named, and the other images still segmented
            log.warning("skipped %s", e)
            continue
        paths.append(path)
    k, names = spec["num_classes"], spec["classes"]
    written = seg.predict_files(
        model, paths, out, dev, seg.palette(k), names, overlays, **_probs_args(spec["inference"])
    )
    rows = []
    for path, mask in zip(paths, written):
        ids = [int(i) for i in np.unique(seg.read_mask(mask)) if 0 <= i < k]
        overlay = mask.with_name(mask.stem + "_overlay.png") if overlays else None
        rows.append(
            {
                "image": str(path),
                "mask": str(mask),
                "overlay": str(overlay) if overlay else None,
                "classes": [names[i] for i in ids],
            }
        )
    return rows


# --------------------------------------------------------------------------- benchmark


class SegmentStep:
    """A segmentation training step on a benchmark's synthetic images: the model's loss on
    labels of the image size (the loss costs the same whatever the labels hold)."""

    def training_step(self, model, batch: dict) -> dict[str, torch.Tensor]:
        imgs = batch["image"]
        labels = torch.zeros(imgs.shape[0], *imgs.shape[-2:], dtype=torch.long, device=imgs.device)
        return model(imgs, labels)


def bench_model(cfg: config_lib.Config, num_classes: int = 150) -> seg.SegmentationModel:
    """A segment preset's model, random init (``mimkit benchmark``), ``num_classes``
    classes (ADE20K's 150 by default); ``img_size`` is its crop side, which the benchmark's
    synthetic batch reads."""
    import copy

    cfg = copy.deepcopy(cfg)
    cfg.model.checkpoint = "none"
    crop = crop_size(cfg)
    vit = None if cfg.segment.pixels else load_vit(cfg, crop)[0]
    spec = model_spec(cfg, vit, [str(i) for i in range(num_classes)], crop)
    model = make_segmenter(spec, vit)
    model.img_size = crop[0]
    return model


def _report(result: SegmentResult) -> str:
    if "mIoU" not in result.metrics:
        return f"no validation ran -> {result.out}"
    m = result.metrics
    best = f"  (best mIoU {m['best_mIoU']:.2f})" if m.get("best_mIoU") is not None else ""
    return f"mIoU {m['mIoU']:.2f}  mAcc {m['mAcc']:.2f}  aAcc {m['aAcc']:.2f}{best} -> {result.out}"


RECIPE = register(
    Recipe(
        "segment",
        train,
        help="train semantic segmentation on a backbone (mIoU each epoch)",
        description="UperNet on a fine-tuned plain ViT (4-level pyramid, FCN auxiliary head, "
        "layer-wise lr decay, poly schedule, drop path) or a linear head on frozen patch "
        "tokens, from a pretrained checkpoint, timm:NAME or random init; ADE20K, image + "
        "mask folders or COCO instance annotations.",
        defaults=SEGMENT_DEFAULTS,
        preset="upernet_vit_base_ade20k",
        section=("segment", SegmentConfig),
        command=("segment", "train"),
        backbone=True,
        flags=(
            Flag(
                "--data",
                "data.path",
                "ADE20K folder (ADEChallengeData2016), or the image folder of segment.masks "
                "/ segment.train_ann",
            ),
            Flag("--head", "segment.head", "upernet | linear", choices=("upernet", "linear")),
            Flag("--masks", "segment.masks", "mask folder for the images of --data"),
            Flag("--classes", "segment.classes", "class list file, one name a line"),
            Flag("--ann", "segment.train_ann", "COCO instances json for the images of --data"),
        ),
        report=_report,
        tools={"evaluate": evaluate, "predict": predict},
        order=35,
    )
)
