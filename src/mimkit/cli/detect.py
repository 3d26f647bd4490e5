"""``mimkit detect train | eval | predict``: ViTDet-style Mask R-CNN on a plain ViT."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from .. import config as C
from ..detection.coco import CocoDetection
from ..detection.maskrcnn import build_detector
from ..detection.task import DetectTask, Transformed, detection_collate, lsj_transform
from ..detection.vitdet import ViTDetBackbone
from ..engine import distributed as dist
from ..engine import precision as P
from ..engine.checkpoint import seed_all
from ..engine.logging import RunLogger, setup_console
from ..engine.loop import Trainer
from ..engine.optim import adamw
from ..engine.schedule import effective_lr
from ..errors import UserError
from ..interop.checkpoint import Checkpoint, load_checkpoint, read_checkpoint
from .common import (
    add_training_flags,
    add_trust_flag,
    loop_config,
    prepare_run_dir,
    resolve_config,
    save_config,
)

log = logging.getLogger("mimkit")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "detect",
        help="ViTDet detection / instance segmentation (train, eval, predict)",
        description="Mask R-CNN (torchvision) on a plain ViT with window attention, relative "
        "positions and a simple feature pyramid, from an MAE checkpoint or random init.",
    )
    actions = p.add_subparsers(dest="action", metavar="<action>", required=True)
    t = actions.add_parser("train", help="train on COCO-format data (evaluates each epoch)")
    add_training_flags(t, default_preset="vitdet_vit_base_maskrcnn")
    t.add_argument("--checkpoint", help="backbone: mimkit/official MAE or ViT file; 'none'")
    t.set_defaults(func=cmd_train)
    e = actions.add_parser("eval", help="COCO bbox/segm AP of a detector checkpoint")
    e.add_argument("--checkpoint", required=True, help="a `mimkit detect train` checkpoint")
    e.add_argument("--images", required=True, help="image folder")
    e.add_argument("--ann", required=True, help="COCO instances_*.json")
    e.add_argument("--out", default="runs/detect-eval", help="folder for metrics.json")
    e.add_argument("--max-images", type=int, default=None, help="evaluate the first N images")
    e.add_argument("--device", default="auto")
    add_trust_flag(e)
    e.set_defaults(func=cmd_eval)
    r = actions.add_parser("predict", help="draw boxes, masks and labels on images (PNG)")
    r.add_argument("--checkpoint", required=True, help="a `mimkit detect train` checkpoint")
    r.add_argument("--images", nargs="+", required=True, help="image files")
    r.add_argument("--out", default="detections", help="folder for the PNGs")
    r.add_argument("--score-threshold", type=float, default=0.5)
    r.add_argument("--device", default="auto")
    add_trust_flag(r)
    r.set_defaults(func=cmd_predict)


# ---------------------------------------------------------------------------- building


def backbone_args(cfg: C.Config) -> tuple[dict, Checkpoint | None]:
    """ViTDet backbone arguments from the checkpoint (its ViT shape) or model.name."""
    from ..interop.checkpoint import infer_vit_args
    from ..models import create_encoder

    ckpt = None
    if cfg.eval.checkpoint and cfg.eval.checkpoint != "none":
        ckpt = read_checkpoint(cfg.eval.checkpoint, trust=cfg.trust_checkpoint)
        vit = infer_vit_args(ckpt.state_dict)
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


def layer_decay_groups(model, weight_decay: float, decay: float) -> list[dict]:
    """ViTDet's layer-wise lr decay: block i gets decay^(depth - i), patch embedding and
    position embedding decay^(depth + 1); pyramid and heads full lr. No weight decay on
    1-D parameters (norms, biases) and the position embedding."""
    vit = model.backbone.vit
    depth = vit.depth
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("backbone.vit.blocks."):
            layer = int(name.split(".")[3]) + 1
        elif name.startswith(("backbone.vit.patch_embed", "backbone.vit.pos_embed")):
            layer = 0
        else:
            layer = depth + 1
        wd = 0.0 if p.ndim == 1 or name.endswith("pos_embed") else weight_decay
        key = (layer, wd)
        if key not in groups:
            groups[key] = {
                "params": [],
                "weight_decay": wd,
                "lr_scale": decay ** (depth + 1 - layer),
            }
        groups[key]["params"].append(p)
    return list(groups.values())


# ---------------------------------------------------------------------------- train


def _splits(cfg: C.Config):
    d = cfg.detect
    if not cfg.data.path or not d.train_ann:
        raise UserError("detect train needs --data IMAGES and detect.train_ann=instances.json")
    train = CocoDetection(cfg.data.path, d.train_ann)
    if d.val_ann:
        val = CocoDetection(d.val_images or cfg.data.path, d.val_ann)
        return train, val, d.val_ann
    if not 0 < d.val_split < len(train):
        raise UserError(
            f"no validation data: set detect.val_ann=..., or detect.val_split=N "
            f"(0 < N < {len(train)}) to hold out the last N images of detect.train_ann"
        )
    ids = train.ids
    val = CocoDetection(cfg.data.path, d.train_ann, ids=ids[-d.val_split :])
    train = CocoDetection(cfg.data.path, d.train_ann, ids=ids[: -d.val_split])
    return train, val, d.train_ann


def _loader(dataset, cfg, shuffle: bool, batch_size: int):
    from ..data.loader import EpochSampler, build_loader

    sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=cfg.train.seed, rank=dist.rank(),
                           world=dist.world_size(), pad=shuffle)  # fmt: skip
    return build_loader(dataset, batch_size, sampler, cfg.data.num_workers, shuffle, False,
                        detection_collate)  # fmt: skip


def cmd_train(args) -> int:
    cfg, resume = resolve_config(args, "vitdet_vit_base_maskrcnn", task="detect")
    if args.dry_run:
        print(C.to_yaml(cfg), end="")
        return 0
    device = dist.resolve_device(cfg.train.device)
    dist.init(device, cfg.train.dist_timeout_min)
    setup_console()
    precision = P.resolve(cfg.train.precision, device)
    train_ds, val_ds, val_ann = _splits(cfg)
    out = prepare_run_dir(cfg, resuming=resume is not None)
    seed_all(cfg.train.seed)
    bargs, ckpt = backbone_args(cfg)
    spec = dict(backbone=bargs, num_classes=len(train_ds.categories) + 1, masks=cfg.detect.masks,
                out_channels=cfg.detect.out_channels)  # fmt: skip
    model = make_detector(spec)
    report = load_checkpoint(model.backbone.vit, ckpt) if ckpt is not None else None
    model.to(device)
    size = bargs["img_size"]
    train_ds = Transformed(train_ds, lsj_transform(size, tuple(cfg.detect.scale_range)))
    loader = _loader(train_ds, cfg, True, cfg.data.batch_size)
    val_loader = _loader(val_ds, cfg, False, 1)
    eff = cfg.data.batch_size * cfg.optim.accum_iter * dist.world_size()
    lr = effective_lr(cfg.optim.blr, cfg.optim.lr, eff)
    optimizer = adamw(layer_decay_groups(model, cfg.optim.weight_decay, cfg.detect.layer_decay),
                      lr, cfg.optim.betas, device)  # fmt: skip
    task = DetectTask(val_loader, val_ann, [0, *train_ds.dataset.categories], device, precision,
                      cfg.detect.masks)  # fmt: skip
    log.info(
        "detect: %d train / %d val images, %d classes, backbone %s (%s), lr %.3g -> %s",
        len(train_ds), len(val_ds), spec["num_classes"] - 1, cfg.eval.checkpoint or "none",
        report or "random init", lr, out,
    )  # fmt: skip
    loop = loop_config(cfg, lr, precision, monitor="val/bbox_AP")
    meta = {
        "config": C.to_dict(cfg),
        "task": "detect",
        "detector": spec,
        "label_to_cat": [0, *train_ds.dataset.categories],
        "names": {str(k): v for k, v in train_ds.dataset.names.items()},
    }
    wrapped = dist.wrap(model, device, False, cfg.train.compile)
    trainer = Trainer(task, wrapped, optimizer, loader, device, loop, out, meta=meta,
                      logger=RunLogger(out, cfg.train.tensorboard))  # fmt: skip
    seed_all(cfg.train.seed + 1 + dist.rank())
    if resume:
        trainer.resume(resume, trust=cfg.trust_checkpoint)
        save_config(cfg)
    trainer.fit()
    _write_metrics(out, {"checkpoint": cfg.eval.checkpoint or "none", **task.last_metrics})
    return 0


def _write_metrics(out: Path, metrics: dict) -> None:
    if dist.is_main():
        (Path(out) / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        ap = metrics.get("bbox_AP")
        log.info("detect: box AP %s, mask AP %s -> %s", ap, metrics.get("segm_AP"), out)


# ---------------------------------------------------------------------------- eval / predict


def load_detector(path: str, device, trust: bool = False) -> tuple[torch.nn.Module, dict]:
    from ..utils.io import safe_torch_load

    state = safe_torch_load(path, trust=trust)
    if not isinstance(state, dict) or state.get("task") != "detect" or "detector" not in state:
        raise UserError(
            f"{path} is not a detector checkpoint (write one with `mimkit detect train`)"
        )
    model = make_detector(state["detector"])
    model.load_state_dict(state["model"])
    return model.to(device).eval(), state


def cmd_eval(args) -> int:
    from ..detection.task import coco_evaluate, predict_coco

    setup_console()
    device = dist.resolve_device(args.device)
    model, state = load_detector(args.checkpoint, device, args.trust_checkpoint)
    ds = CocoDetection(args.images, args.ann)
    if args.max_images:
        ds.ids = ds.ids[: args.max_images]
    loader = torch.utils.data.DataLoader(ds, batch_size=1, collate_fn=detection_collate)
    results, ids = predict_coco(model, loader, state["label_to_cat"], device, "fp32")
    metrics = coco_evaluate(args.ann, ids, results, state["detector"]["masks"])
    Path(args.out).mkdir(parents=True, exist_ok=True)
    _write_metrics(Path(args.out), {"checkpoint": args.checkpoint, **metrics})
    print(json.dumps(metrics))
    return 0


@torch.no_grad()
def cmd_predict(args) -> int:
    from torchvision.io import ImageReadMode, decode_image, read_file, write_png
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    setup_console()
    device = dist.resolve_device(args.device)
    model, state = load_detector(args.checkpoint, device, args.trust_checkpoint)
    names = state.get("names", {})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in args.images:
        if not Path(path).is_file():
            raise UserError(f"image not found: {path}")
        img = decode_image(read_file(path), ImageReadMode.RGB)
        pred = model([img.float().div(255).to(device)])[0]
        keep = pred["scores"] >= args.score_threshold
        canvas = img
        if "masks" in pred and keep.any():
            canvas = draw_segmentation_masks(canvas, pred["masks"][keep, 0].cpu() > 0.5, alpha=0.4)
        labels = [f"{names.get(str(state['label_to_cat'][int(c)]), c)} {s:.2f}"
                  for c, s in zip(pred["labels"][keep], pred["scores"][keep])]  # fmt: skip
        canvas = draw_bounding_boxes(canvas, pred["boxes"][keep].cpu(), labels, width=2)
        target = out / (Path(path).stem + ".png")
        write_png(canvas, str(target))
        print(f"{target}: {int(keep.sum())} detections >= {args.score_threshold}")
    return 0
