"""``mimkit pretrain``: masked image modeling from a folder of images to a checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .. import config as C
from ..data.pipelines import build_pretrain_loader, open_pretrain_data
from ..engine import distributed as dist
from ..engine import precision as P
from ..engine.checkpoint import seed_all
from ..engine.logging import RunLogger, setup_console
from ..engine.loop import Trainer
from ..engine.optim import adamw, weight_decay_groups
from ..engine.schedule import effective_lr
from ..errors import UserError
from ..models import create_model
from .common import add_training_flags, loop_config, prepare_run_dir, resolve_config, save_config

log = logging.getLogger("mimkit")


class PretrainTask:
    """Masked reconstruction: the model's forward returns (loss, pred, mask).

    A batch may carry ``'noise'`` (N, L), passed on to the model's forward: it fixes the
    MAE mask (tests replaying an official run); without it the model draws its own.
    """

    def training_step(self, model, batch: dict) -> dict[str, torch.Tensor]:
        fixed = {"noise": batch["noise"]} if "noise" in batch else {}
        return {"loss": model(batch["image"], **fixed)[0]}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain a backbone with masked image modeling (MAE)",
        description="Pretrain with masked image modeling on a folder of images. Writes the "
        "resolved config, log.jsonl, checkpoints, loss.png and reconstructions.png to the run "
        "folder. Multi-GPU / multi-node: torchrun --nproc_per_node=N -m mimkit pretrain ...",
    )
    add_training_flags(p, default_preset="mae_vit_base_patch16")
    p.set_defaults(func=cmd_pretrain)


def cmd_pretrain(args) -> int:
    cfg, resume = resolve_config(args, "mae_vit_base_patch16", task="pretrain")
    if args.dry_run:
        print(C.to_yaml(cfg), end="")
        return 0
    run(cfg, resume)
    return 0


def build_model(cfg: C.Config):
    args = dict(
        mask_ratio=cfg.model.mask_ratio,
        norm_pix_loss=cfg.model.norm_pix_loss,
        drop_path_rate=cfg.model.drop_path,
    )
    if cfg.data.img_size:
        args["img_size"] = cfg.data.img_size
    args.update(cfg.model.args)
    return create_model(cfg.model.name, **args)


def run(cfg: C.Config, resume: Path | None = None) -> Path:
    """Everything a pretraining run does, from config to checkpoints and pictures."""
    device = dist.resolve_device(cfg.train.device)
    dist.init(device, cfg.train.dist_timeout_min)
    setup_console()
    precision = P.resolve(cfg.train.precision, device)
    # fails before any model is built when the data is missing or empty
    data = open_pretrain_data(cfg.data.pipeline, cfg.data.path, cfg.data.file_list)
    per_rank = -(-data.num_images // dist.world_size())
    if per_rank < cfg.data.batch_size:
        raise UserError(
            f"{data.num_images} images give {per_rank} per process, fewer than the batch "
            f"size {cfg.data.batch_size}: lower --batch-size"
        )
    out = prepare_run_dir(cfg, resuming=resume is not None)
    seed_all(cfg.train.seed)  # same initial weights on every rank
    model = build_model(cfg).to(device)
    if cfg.train.grad_checkpointing:
        model.set_grad_checkpointing(True)
    loader = pretrain_loader(cfg, data, device, img_size=model.patch_embed.img_size[0])
    eff_batch = cfg.data.batch_size * cfg.optim.accum_iter * dist.world_size()
    lr = effective_lr(cfg.optim.blr, cfg.optim.lr, eff_batch)
    n_params = sum(p.numel() for p in model.parameters())
    wrapped = dist.wrap(model, device, cfg.train.fsdp, cfg.train.compile)
    # after wrapping: FSDP replaces the parameters with sharded ones
    optimizer = adamw(
        weight_decay_groups(model, cfg.optim.weight_decay), lr, cfg.optim.betas, device
    )
    log.info(
        "%s: %d images, %.1fM parameters, %s %s, effective batch %d, lr %.3g -> %s",
        cfg.model.name,
        data.num_images,
        n_params / 1e6,
        device,
        precision,
        eff_batch,
        lr,
        out,
    )
    trainer = Trainer(
        PretrainTask(),
        wrapped,
        optimizer,
        loader,
        device,
        loop_config(cfg, lr, precision),
        out,
        meta=_meta(cfg, model),
        logger=RunLogger(out, cfg.train.tensorboard),
    )
    seed_all(cfg.train.seed + 1 + dist.rank())  # masking noise differs across ranks
    if resume:
        trainer.resume(resume, trust=cfg.trust_checkpoint)
        save_config(cfg)
    trainer.fit()
    if dist.is_main():
        if cfg.train.fsdp:  # the sharded model cannot run on one rank: reload the weights
            model = _reload(out, device)
        _pictures(model, data.source, out, cfg, device)
    return out


def pretrain_loader(cfg: C.Config, data, device, img_size: int):
    return build_pretrain_loader(
        data,
        img_size,
        cfg.data.batch_size,
        cfg.data.num_workers,
        (cfg.data.crop_min_scale, 1.0),
        cfg.data.hflip,
        cfg.train.seed,
        device,
        cfg.data.cache_dir,
        cfg.data.cache_size,
    )


def _meta(cfg: C.Config, model) -> dict:
    return {
        "config": C.to_dict(cfg),
        "model_name": cfg.model.name,
        "model_args": model.arch_config(),
        "task": "pretrain",
    }


def _reload(out: Path, device):
    from ..interop.checkpoint import model_from_checkpoint

    return model_from_checkpoint(out / "checkpoint-last.pth", kind="mae")[0].to(device)


def _pictures(model, source, out: Path, cfg: C.Config, device) -> None:
    """loss.png from the log; reconstructions.png of a few images spread over the data."""
    from ..viz.curves import plot_curves
    from .visualize import reconstruction_grid

    written = [plot_curves(out / "log.jsonl", out / "loss.png")]
    if source is not None:  # shards: no file paths to draw from
        step = max(1, len(source) // 8)
        reconstruction_grid(
            model,
            source.paths[::step][:8],
            out / "reconstructions.png",
            cfg.model.mask_ratio,
            seed=cfg.train.seed,
            device=device,
        )
        written.append(out / "reconstructions.png")
    written = [str(p) for p in written if p is not None]
    log.info("pictures: %s", ", ".join(written) if written else "none (nothing was trained)")
