"""Pretraining (MAE, LoMaR, iBOT): from a folder of images to checkpoints and pictures."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .. import config as config_lib
from ..data.multicrop import MultiCropTransform, multicrop_collate
from ..data.pipelines import build_pretrain_loader, open_pretrain_data
from ..engine import distributed as dist
from ..engine.optim import adamw, weight_decay_groups
from ..errors import UserError
from ..models import create_model
from ..models.ibot import IBOT, IBOTTask
from .registry import Recipe, register
from .results import PretrainResult
from .run import RunContext, fit, start

log = logging.getLogger("mimkit")


class PretrainTask:
    """Masked reconstruction (MAE, LoMaR): the model's forward returns (loss, pred, mask).
    A batch may carry the masking ``noise`` (N, L), as the official code takes it."""

    def training_step(self, model, batch: dict) -> dict[str, torch.Tensor]:
        if "noise" in batch:
            return {"loss": model(batch["image"], noise=batch["noise"])[0]}
        return {"loss": model(batch["image"])[0]}


def build_model(cfg: config_lib.Config) -> torch.nn.Module:
    """The pretraining model a config names (its mask ratio, loss, drop path, size)."""
    is_ibot = cfg.model.name.startswith("ibot")
    args = {} if is_ibot else dict(mask_ratio=cfg.model.mask_ratio)
    if not is_ibot:
        args["norm_pix_loss"] = cfg.model.norm_pix_loss
    if cfg.model.drop_path or not is_ibot:  # iBOT keeps its recipe's student drop path
        args["drop_path_rate"] = cfg.model.drop_path
    if cfg.data.img_size:
        args["img_size"] = cfg.data.img_size
    args.update(cfg.model.args)
    return create_model(cfg.model.name, **args)


def pretrain_loader(cfg: config_lib.Config, data, device, model) -> object:
    """The training loader for ``model``: single crops for MAE / LoMaR, multi-crop views
    with block masks for iBOT."""
    transform = collate_fn = None
    if isinstance(model, IBOT):
        if cfg.data.pipeline not in ("files", "shards"):
            raise UserError(
                f"iBOT's multi-crop views need data.pipeline=files or shards, "
                f"not {cfg.data.pipeline}"
            )
        transform = MultiCropTransform(**model.multicrop_args())
        collate_fn = multicrop_collate
    return build_pretrain_loader(
        data,
        model.patch_embed.img_size[0],
        cfg.data.batch_size,
        cfg.data.num_workers,
        (cfg.data.crop_min_scale, 1.0),
        cfg.data.hflip,
        cfg.train.seed,
        device,
        cfg.data.cache_dir,
        cfg.data.cache_size,
        transform=transform,
        collate_fn=collate_fn,
    )


def run(cfg: config_lib.Config, resume: Path | None = None) -> PretrainResult:
    """Everything a pretraining run does, from config to checkpoints and pictures."""
    ctx = start(cfg, resume)
    # fails before any model is built or folder made when the data is missing or empty
    data = open_pretrain_data(
        str(cfg.data.pipeline),
        cfg.data.path,
        cfg.data.file_list,
        cfg.data.num_samples,
        cfg.data.image_key,
        cfg.data.label_key,
    )
    per_rank = -(-data.num_images // dist.world_size())
    if per_rank < cfg.data.batch_size:
        raise UserError(
            f"{data.num_images} images give {per_rank} per process, fewer than the batch "
            f"size {cfg.data.batch_size}: lower data.batch_size (--batch-size)"
        )
    out = ctx.run_dir()
    model = build_model(cfg).to(ctx.device)
    if cfg.train.grad_checkpointing:
        model.set_grad_checkpointing(True)
    loader = pretrain_loader(cfg, data, ctx.device, model)
    lr = ctx.lr()
    task, make_optimizer, loop = _training_parts(ctx, model, loader)
    log.info(
        "%s: %d images, %.1fM parameters, %s %s, effective batch %d, lr %.3g -> %s",
        cfg.model.name,
        data.num_images,
        sum(p.numel() for p in model.parameters()) / 1e6,
        ctx.device,
        ctx.precision,
        ctx.effective_batch,
        lr,
        out,
    )
    meta = {"model_name": cfg.model.name, "model_args": model.arch_config(), "task": "pretrain"}
    fitted = fit(ctx, task, model, make_optimizer, loader, lr, meta, **loop)
    pictures = []
    if dist.is_main():
        if cfg.train.fsdp:  # the sharded model cannot run on one rank: reload the weights
            model = _reload(out, ctx.device)
        pictures = _pictures(model, data.source or data.hf, out, cfg, ctx.device)
    ctx.finish(pictures)
    return PretrainResult(
        out=out,
        metrics=fitted.last,
        config=cfg,
        picture=pictures[0] if pictures else None,
        checkpoint=out / "checkpoint-last.pth",
    )


def _training_parts(ctx: RunContext, model, loader) -> tuple:
    """(task, optimizer factory, loop changes) for the model's method."""
    cfg = ctx.cfg
    if isinstance(model, IBOT):
        # iBOT as the official main_ibot: per-iteration schedules, per-parameter clipping
        steps = len(loader) // cfg.optim.accum_iter
        task = IBOTTask.from_model(
            model, cfg.train.epochs, steps, cfg.optim.weight_decay, cfg.optim.clip_grad
        )
        groups = lambda m: m.param_groups(cfg.optim.weight_decay)
        make = lambda m: adamw(groups(m), ctx.lr(), cfg.optim.betas, ctx.device)
        return task, make, {"schedule": "cosine_iter", "clip_grad": None}
    make = lambda m: adamw(
        weight_decay_groups(m, cfg.optim.weight_decay), ctx.lr(), cfg.optim.betas, ctx.device
    )
    return PretrainTask(), make, {}


def _reload(out: Path, device):
    from ..interop.checkpoint import model_from_checkpoint

    return model_from_checkpoint(out / "checkpoint-last.pth", kind="pretrain")[0].to(device)


def _pictures(model, source, out: Path, cfg: config_lib.Config, device) -> list[Path]:
    """loss.png from the log; reconstructions.png of a few images spread over the data."""
    from ..viz.curves import plot_curves
    from ..viz.recon import reconstruction_grid

    written = [plot_curves(out / "log.jsonl", out / "loss.png")]
    if source is not None:  # shards: no random access to draw from
        step = max(1, len(source) // 8)
        reconstruction_grid(
            model,
            [source.read(i) for i in range(0, len(source), step)[:8]],
            out / "reconstructions.png",
            cfg.model.mask_ratio,
            seed=cfg.train.seed,
            device=device,
        )
        written.append(out / "reconstructions.png")
    written = [Path(p) for p in written if p is not None]
    log.info(
        "pictures: %s", ", ".join(map(str, written)) if written else "none (nothing was trained)"
    )
    return written


RECIPE = register(
    Recipe(
        "pretrain",
        run,
        help="pretrain a backbone with masked image modeling (MAE, LoMaR, iBOT)",
        preset="mae_vit_base_patch16",
    )
)
