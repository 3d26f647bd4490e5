"""Pretraining with any registered method (MAE, LoMaR, iBOT, SimMIM...): from a folder of
images to checkpoints and pictures. Everything method-specific comes from the method's
contract (``methods.PretrainMethod``); this recipe never names one."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .. import config as config_lib
from ..data import folder_source, open_splits
from ..data.pipelines import build_pretrain_loader, open_pretrain_data, resolve_pipeline
from ..data.transforms import eval_transform, pretrain_transform
from ..engine.optim import adamw
from ..errors import UserError
from ..eval.monitor import OnlineKNN, holdout, sample
from ..interop.checkpoint import init_pretraining
from ..methods import ForwardTask, Schedule, draw_picture, method_for
from ..models import create_model
from ..utils import distributed as dist
from .registry import Flag, Recipe, register
from .results import PretrainResult
from .run import RunContext, fit, start

log = logging.getLogger("mimkit")

# The task of every method whose model does all in forward(batch) (kept under this name
# for scripts that build a Trainer by hand).
PretrainTask = ForwardTask


def pretraining_method(name: str):
    """The method of a model name, or a one-line error for a backbone."""
    method = method_for(name)
    if method is None:
        raise UserError(
            f"model.name={name} is not a pretraining model: pretrain takes one of a "
            "method's models (see `mimkit models`)"
        )
    return method


def build_model(cfg: config_lib.Config) -> torch.nn.Module:
    """The pretraining model a config names (its mask ratio, loss, drop path, size)."""
    m = cfg.model
    method = pretraining_method(m.name)
    args = method.build_args(m.mask_ratio, m.norm_pix_loss, m.drop_path, cfg.data.img_size)
    return create_model(m.name, **{**args, **m.args})


def pretrain_loader(cfg: config_lib.Config, data, device, model) -> object:
    """The training loader for ``model``: what its method's loader parts make (single
    crops, multi-crop views, crops with masks) through the configured pipeline."""
    size = model.patch_embed.img_size[0]
    crop = pretrain_transform(size, cfg.data.crop_min_scale, cfg.data.hflip)
    method = method_for(model)
    parts = method.loader_parts(model, crop)
    why = resolve_pipeline(data, size, parts.pipelines)
    if data.pipeline not in parts.pipelines:
        raise UserError(
            f"{method.name}'s loader makes its views on the CPU: data.pipeline must be one "
            f"of {', '.join(parts.pipelines)}, not {data.pipeline}"
        )
    log.info("data pipeline: %s (%s)", data.pipeline, why)
    return build_pretrain_loader(
        data,
        size,
        cfg.data.batch_size,
        cfg.data.num_workers,
        (cfg.data.crop_min_scale, 1.0),
        cfg.data.hflip,
        cfg.train.seed,
        device,
        cfg.data.cache_dir,
        cfg.data.cache_size,
        transform=parts.transform,
        batch_extra=parts.batch_extra,
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
    ctx.lr_batch = pretraining_method(cfg.model.name).lr_batch
    model = build_model(cfg)
    if cfg.model.init and not resume:  # continued pretraining: fresh optimizer and schedule
        network = str(cfg.model.checkpoint_network)
        init_pretraining(model, cfg.model.init, cfg.trust_checkpoint, network)
    model = model.to(ctx.device)
    if cfg.train.grad_checkpointing:
        model.set_grad_checkpointing(True)
    monitor = _monitor(cfg, ctx, data, model) if cfg.eval.monitor else None
    loader = pretrain_loader(cfg, data, ctx.device, model)
    lr = ctx.lr()
    task, make_optimizer, loop = _training_parts(ctx, model, loader)
    if monitor is not None:
        loop.update(online_eval=monitor, online_evals=cfg.eval.monitor_evals)
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
    """(task, optimizer factory, loop changes) from the model's method."""
    cfg = ctx.cfg
    method = method_for(model)
    o = cfg.optim
    scale = ctx.effective_batch / method.lr_batch if o.lr is None else 1.0
    schedule = Schedule(
        epochs=cfg.train.epochs,
        steps_per_epoch=len(loader) // o.accum_iter,
        base_lr=ctx.lr(),
        batch_scale=scale,
        accum_iter=o.accum_iter,
        warmup_epochs=o.warmup_epochs,
        min_lr=o.min_lr * scale if o.scale_min_lr else o.min_lr,
        warmup_lr=o.warmup_lr * scale if o.scale_min_lr else o.warmup_lr,
    )
    parts = method.training_parts(model, schedule, cfg.optim.weight_decay, cfg.optim.clip_grad)
    groups = parts.param_groups

    def make(m):
        return adamw(groups(m, cfg.optim.weight_decay), ctx.lr(), cfg.optim.betas, ctx.device)

    return parts.task, make, parts.loop


def _monitor(cfg: config_lib.Config, ctx: RunContext, data, model) -> OnlineKNN:
    """The online kNN of ``eval.monitor``: on ``eval.monitor_data`` (train/ + val/, or
    class folders split in two), else on a seeded share of the labeled --data that is
    taken out of ``data`` here, so no training loader ever sees it."""
    e, seed = cfg.eval, cfg.train.seed
    if e.monitor_data:
        root = Path(e.monitor_data)
        if (root / "train").is_dir():
            splits = open_splits(e.monitor_data)
            reference, queries = splits.train, splits.val
        else:
            reference, queries = holdout(folder_source(root), 0.2, seed)
    else:
        source = data.source or data.hf
        if source is None:
            raise UserError(
                "eval.monitor on streamed shards needs a labeled --monitor-data ROOT "
                "(eval.monitor_data): shards have no random access to hold images out of"
            )
        kept, queries = holdout(source, e.monitor_holdout, seed)
        if data.source is not None:
            data.source = kept
        else:
            data.hf = kept
        log.info(
            "monitor: %d of %d images held out of --data (never trained on)",
            len(queries),
            data.num_images,
        )
        data.num_images, reference = len(kept), kept
    reference = sample(reference, e.monitor_references, seed)
    queries = sample(queries, e.monitor_queries, seed + 1)
    size = model.patch_embed.img_size[0]
    monitor = OnlineKNN(
        reference,
        queries,
        eval_transform(size),
        method_for(model).encoder,
        ctx.device,
        ctx.precision,
        k=20,
        temperature=e.knn_temperature,
        pool=str(e.pool),
        batch_size=e.batch_size,
        num_workers=cfg.data.num_workers,
    )
    monitor.baselines(model, size)
    return monitor


def _reload(out: Path, device):
    from ..interop.checkpoint import model_from_checkpoint

    return model_from_checkpoint(out / "checkpoint-last.pth", kind="pretrain")[0].to(device)


def _pictures(model, source, out: Path, cfg: config_lib.Config, device) -> list[Path]:
    """loss.png from the log; the method's picture of a few images spread over the data."""
    from ..viz.curves import plot_curves, plot_monitor

    written = [plot_curves(out / "log.jsonl", out / "loss.png")]
    written.append(plot_monitor(out / "log.jsonl", out / "monitor.png"))
    if source is not None:  # shards: no random access to draw from
        step = max(1, len(source) // 8)
        picks = [source.read(i) for i in range(0, len(source), step)[:8]]
        target = out / "reconstructions.png"
        draw_picture(model, picks, target, cfg.model.mask_ratio, cfg.train.seed, device)
        written.append(target)
    written = [Path(p) for p in written if p is not None]
    log.info(
        "pictures: %s", ", ".join(map(str, written)) if written else "none (nothing was trained)"
    )
    return written


RECIPE = register(
    Recipe(
        "pretrain",
        run,
        help="pretrain a backbone with masked image modeling (MAE, LoMaR, iBOT, SimMIM)",
        description="Pretrain with any registered method (`mimkit methods`) on a folder of "
        "images. Writes the resolved config, log.jsonl, checkpoints, loss.png and the "
        "method's picture to the run folder. Multi-GPU / multi-node: torchrun "
        "--nproc_per_node=N -m mimkit pretrain ...",
        preset="mae_vit_base_patch16",
        flags=(
            Flag(
                "--monitor-data",
                "eval.monitor_data",
                "labeled ROOT for the online kNN (eval.monitor=true); default: a held-out "
                "share of a labeled --data",
            ),
            Flag(
                "--init",
                "model.init",
                "continued pretraining: start from these weights (official MAE / iBOT / "
                "SimMIM file, HF folder, mimkit run) with a fresh optimizer and schedule",
            ),
        ),
        order=0,
    )
)
