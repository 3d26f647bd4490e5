"""ViTDet-style Mask R-CNN on a plain ViT: train (a recipe on the one loop), COCO
evaluation of a detector checkpoint, and drawn predictions."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import config as config_lib
from ..data.loader import eval_loader, train_loader
from ..detection.coco import CocoDetection
from ..detection.maskrcnn import build_detector
from ..detection.task import (
    DetectTask,
    Transformed,
    coco_evaluate,
    detection_collate,
    lsj_transform,
    predict_coco,
)
from ..detection.vitdet import ViTDetBackbone
from ..engine.optim import adamw
from ..errors import UserError
from ..eval.classify import layer_decay_groups
from ..interop.checkpoint import (
    Checkpoint,
    infer_vit_args,
    load_checkpoint,
    network_checkpoint,
    read_checkpoint,
)
from ..models import create_encoder
from ..utils import distributed as dist
from ..utils.io import safe_torch_load, write_json
from .registry import Recipe, register
from .results import DetectResult
from .run import fit, start

log = logging.getLogger("mimkit")


# ViTDet's COCO recipe (detectron2 projects/ViTDet): AdamW (0.9, 0.999), lr 1e-4 at
@dataclass
class DetectConfig:
    train_ann: str | None = None  # COCO instances_*.json for data.path (the image folder)
    val_ann: str | None = None  # default: the last val_split images of train_ann
    val_images: str | None = None  # default: data.path
    val_split: int = 0  # hold out this many images of train_ann for validation (COCO128)
    masks: bool = True  # Mask R-CNN (true) or Faster R-CNN (false)
    window_size: int = 14
    global_blocks: list[int] | None = None  # default: the published ones for the depth
    residual_blocks: list[int] = field(default_factory=list)  # conv propagation after these
    rel_pos: bool = True
    layer_decay: float = 0.7  # ViT-B 0.7, L 0.8, H 0.9; pyramid and heads at full lr
    scale_range: list[float] = field(default_factory=lambda: [0.1, 2.0])  # large-scale jitter
    out_channels: int = 256
    score_threshold: float = 0.5  # predict: draw detections above this score


# batch 64 (blr 4e-4 = 1e-4 x 256 / 64), wd 0.1, drop path 0.1, 1024 px, large-scale jitter.
DETECT_DEFAULTS = {
    "model": {"name": "vit_base_patch16", "drop_path": 0.1},
    "data": {"img_size": 1024, "batch_size": 2},
    "optim": {"blr": 4e-4, "weight_decay": 0.1, "betas": [0.9, 0.999], "warmup_epochs": 0.25},
    "train": {"epochs": 100, "save_every": 10},
}


def backbone_args(cfg: config_lib.Config) -> tuple[dict, Checkpoint | None]:
    """ViTDet backbone arguments from the checkpoint (its ViT shape) or model.name."""
    ckpt = None
    if cfg.model.checkpoint and cfg.model.checkpoint != "none":
        ckpt = read_checkpoint(cfg.model.checkpoint, trust=cfg.trust_checkpoint)
        ckpt = network_checkpoint(ckpt, str(cfg.model.checkpoint_network))  # iBOT: one net
        vit = infer_vit_args(ckpt.state_dict)
        # the head count is not in the shapes: model.args, else the file's own record
        # (mimkit checkpoints), else the usual one for the width (official files)
        saved = ckpt.meta.get("model_args") or {}
        heads = (cfg.model.args or {}).get("num_heads") or saved.get("num_heads")
        if heads:
            vit["num_heads"] = int(heads)
        pre = vit.get("img_size", 224)
    else:
        with torch.device("meta"):
            enc = create_encoder(cfg.model.name, **cfg.model.args)
        vit, pre = enc.arch_config(), enc.patch_embed.img_size[0]
    d = cfg.detect
    args = dict(
        img_size=cfg.data.img_size or 1024,
        patch_size=vit["patch_size"],
        embed_dim=vit["embed_dim"],
        depth=vit["depth"],
        num_heads=vit["num_heads"],
        mlp_ratio=vit.get("mlp_ratio", 4.0),
        drop_path_rate=cfg.model.drop_path,
        window_size=d.window_size,
        global_blocks=tuple(d.global_blocks) if d.global_blocks is not None else None,
        residual_blocks=tuple(d.residual_blocks),
        rel_pos=d.rel_pos,
        pretrain_img_size=pre,
    )
    return args, ckpt


def make_detector(spec: dict) -> torch.nn.Module:
    """The detector a checkpoint's ``detector`` entry describes."""
    return build_detector(
        ViTDetBackbone(**spec["backbone"]),
        spec["num_classes"],
        masks=spec["masks"],
        img_size=spec["backbone"]["img_size"],
        out_channels=spec["out_channels"],
    )


def _splits(cfg: config_lib.Config):
    d = cfg.detect
    if not cfg.data.path or not d.train_ann:
        raise UserError("detect train needs --data IMAGES and detect.train_ann=instances.json")
    train = CocoDetection(cfg.data.path, d.train_ann)
    if d.val_ann:
        return train, CocoDetection(d.val_images or cfg.data.path, d.val_ann), d.val_ann
    if not 0 < d.val_split < len(train):
        raise UserError(
            f"no validation data: set detect.val_ann=..., or detect.val_split=N "
            f"(0 < N < {len(train)}) to hold out the last N images of detect.train_ann"
        )
    ids = train.ids
    val = CocoDetection(cfg.data.path, d.train_ann, ids=ids[-d.val_split :])
    train = CocoDetection(cfg.data.path, d.train_ann, ids=ids[: -d.val_split])
    return train, val, d.train_ann


def train(cfg: config_lib.Config, resume: Path | None = None) -> DetectResult:
    ctx = start(cfg, resume)
    train_ds, val_ds, val_ann = _splits(cfg)
    out = ctx.run_dir()
    bargs, ckpt = backbone_args(cfg)
    spec = dict(
        backbone=bargs,
        num_classes=len(train_ds.categories) + 1,
        masks=cfg.detect.masks,
        out_channels=cfg.detect.out_channels,
    )
    model = make_detector(spec)
    report = load_checkpoint(model.backbone.vit, ckpt) if ckpt is not None else None
    model.to(ctx.device)
    label_to_cat = [0, *train_ds.categories]
    names = {str(k): v for k, v in train_ds.names.items()}
    train_ds = Transformed(
        train_ds, lsj_transform(bargs["img_size"], tuple(cfg.detect.scale_range))
    )
    loader = train_loader(
        train_ds,
        cfg.data.batch_size,
        cfg.train.seed,
        cfg.data.num_workers,
        collate_fn=detection_collate,
    )
    val_loader = eval_loader(val_ds, 1, cfg.data.num_workers, collate_fn=detection_collate)
    lr = ctx.lr()
    groups = lambda m: layer_decay_groups(m, cfg.optim.weight_decay, cfg.detect.layer_decay)
    make_optimizer = lambda m: adamw(groups(m), lr, cfg.optim.betas, ctx.device)
    task = DetectTask(
        val_loader, val_ann, label_to_cat, ctx.device, ctx.precision, cfg.detect.masks
    )
    log.info(
        "detect: %d train / %d val images, %d classes, backbone %s (%s), lr %.3g -> %s",
        len(train_ds),
        len(val_ds),
        spec["num_classes"] - 1,
        cfg.model.checkpoint or "none",
        report or "random init",
        lr,
        out,
    )
    meta = {"task": "detect", "detector": spec, "label_to_cat": label_to_cat, "names": names}
    fitted = fit(ctx, task, model, make_optimizer, loader, lr, meta, monitor="val/bbox_AP")
    metrics = {"checkpoint": cfg.model.checkpoint or "none", **task.last_metrics}
    write_metrics(out, metrics)
    ctx.finish()
    best = out / "checkpoint-best.pth"
    return DetectResult(
        out=out,
        metrics={**metrics, "epochs": fitted.trainer.state.epoch},
        config=cfg,
        checkpoint=best if best.is_file() else out / "checkpoint-last.pth",
    )


def write_metrics(out: Path, metrics: dict) -> None:
    if dist.is_main():
        write_json(Path(out) / "metrics.json", metrics)
        log.info(
            "detect: box AP %s, mask AP %s -> %s",
            metrics.get("bbox_AP"),
            metrics.get("segm_AP"),
            out,
        )


def load_detector(path: str | Path, device, trust: bool = False) -> tuple[torch.nn.Module, dict]:
    state = safe_torch_load(path, trust=trust)
    if not isinstance(state, dict) or state.get("task") != "detect" or "detector" not in state:
        raise UserError(
            f"{path} is not a detector checkpoint (write one with `mimkit detect train`)"
        )
    model = make_detector(state["detector"])
    model.load_state_dict(state["model"])
    return model.to(device).eval(), state


def evaluate(
    checkpoint: str | Path,
    images: str | Path,
    ann: str | Path,
    out: str | Path = "runs/detect-eval",
    max_images: int | None = None,
    device: str = "auto",
    trust: bool = False,
) -> DetectResult:
    """COCO bbox (and segm) AP of a detector checkpoint on an annotated image folder."""
    dev = dist.resolve_device(device)
    model, state = load_detector(checkpoint, dev, trust)
    ds = CocoDetection(images, ann)
    if max_images:
        ds.ids = ds.ids[:max_images]
    loader = torch.utils.data.DataLoader(ds, batch_size=1, collate_fn=detection_collate)
    results, ids = predict_coco(model, loader, state["label_to_cat"], dev, "fp32")
    metrics = coco_evaluate(str(ann), ids, results, state["detector"]["masks"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_metrics(out, {"checkpoint": str(checkpoint), **metrics})
    return DetectResult(out=out, metrics=metrics, checkpoint=Path(checkpoint))


@torch.no_grad()
def predict(
    checkpoint: str | Path,
    images: list,
    out: str | Path = "detections",
    score_threshold: float | None = None,
    device: str = "auto",
    trust: bool = False,
) -> list[dict]:
    """Draw boxes, masks and labels on images (PNG per image); the threshold defaults to
    the training config's ``detect.score_threshold``. Returns one row per image: its PNG,
    and the kept detections' boxes (x1, y1, x2, y2 in pixels), class names and scores."""
    from torchvision.io import write_png
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    from ..data.images import failure_reason, read_rgb_tensor
    from ..data.sources import collect_images

    if isinstance(images, (str, Path)):  # one file or folder
        images = [images]
    dev = dist.resolve_device(device)
    model, state = load_detector(checkpoint, dev, trust)
    if score_threshold is None:
        score_threshold = (state.get("config") or {}).get("detect", {}).get("score_threshold", 0.5)
    names, cats = state.get("names", {}), state["label_to_cat"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, taken = [], set()
    # a folder gives its images, as for predict and visualize; a missing path is an error
    for path in collect_images([str(p) for p in images]):
        try:
            img = read_rgb_tensor(path)
        except Exception as e:  # any decode failure: named, and the others still drawn
            log.warning("skipped unreadable image %s (%s)", path, failure_reason(e))
            continue
        pred = model([img.float().div(255).to(dev)])[0]
        keep = pred["scores"] >= score_threshold
        canvas = img
        if "masks" in pred and keep.any():
            canvas = draw_segmentation_masks(canvas, pred["masks"][keep, 0].cpu() > 0.5, alpha=0.4)
        classes = [str(names.get(str(cats[int(c)]), c)) for c in pred["labels"][keep]]
        scores = [round(float(s), 4) for s in pred["scores"][keep]]
        boxes = pred["boxes"][keep].cpu()
        labels = [f"{c} {s:.2f}" for c, s in zip(classes, scores)]
        canvas = draw_bounding_boxes(canvas, boxes, labels, width=2)
        target = out / _unique_png(Path(path).stem, taken)  # a/0001.jpg, b/0001.jpg: two
        write_png(canvas, str(target))
        rows.append(
            {
                "image": str(path),
                "png": str(target),
                "detections": int(keep.sum()),
                "threshold": score_threshold,
                "boxes": [[round(v, 2) for v in b] for b in boxes.tolist()],  # x1 y1 x2 y2 px
                "labels": classes,
                "scores": scores,
            }
        )
    return rows


RECIPE = register(
    Recipe(
        "detect",
        train,
        help="train on COCO-format data (evaluates each epoch)",
        description="Mask R-CNN (torchvision) on a plain ViT with window attention, relative "
        "positions and a simple feature pyramid, from a pretrained checkpoint or random init.",
        defaults=DETECT_DEFAULTS,
        preset="vitdet_vit_base_maskrcnn",
        section=("detect", DetectConfig),
        command=("detect", "train"),
        backbone=True,
        tools={"evaluate": evaluate, "predict": predict},
        order=30,
    )
)


def _unique_png(stem: str, taken: set) -> str:
    """``stem.png``, or ``stem-2.png``, ``stem-3.png``... when an earlier image had it."""
    name, n = f"{stem}.png", 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}.png"
    taken.add(name)
    return name
