"""SimMIM (Xie et al., CVPR 2022) as the official microsoft/SimMIM code defines it.

The encoder is a BEiT-style ViT (``models.beit``: q/v biases, layer scale, one shared
relative position bias, no absolute position embedding) whose masked patch embeddings
are replaced by a learned ``mask_token`` (the sequence keeps its length); a one-layer
head (1x1 conv to stride^2 x 3 channels + PixelShuffle) regresses the raw (normalised)
pixels, and the loss is L1 on masked pixels only:
``sum(|x - x_rec| * mask) / (sum(mask) + 1e-5) / 3``.

Masks come from the loader (the official ``MaskGenerator``: ``ceil(0.6 * cells)`` random
32 px cells). Optimisation as ``main_simmim.py``: AdamW on two groups (no decay for 1-D
tensors, biases, ``encoder.pos_embed`` and ``encoder.cls_token``; the mask token and the
relative position table *are* decayed), clipping 5.0, lr (and its warm-up start and
minimum: optim.warmup_lr, optim.min_lr) scaled per 512 images, timm's cosine or a
multistep schedule with warm-up, updated after each step
(``step_update(epoch * n_iter + idx)``: the warm-up start is used twice). Keys are the
official ones (``encoder.*``, ``decoder.0.*``), so an official checkpoint's ``model``
loads as it is.
"""

from __future__ import annotations

import bisect
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from ..data.transforms import denormalize
from ..masking import coarse_grid_mask
from ..models.beit import BEiT, infer_beit_args
from ..models.registry import register_model
from ..utils import distributed as dist
from ..viz.recon import save_grid
from .base import (
    ForwardTask,
    LoaderParts,
    PretrainMethod,
    Schedule,
    TrainingParts,
    register_method,
)

BEIT_KEYS = (
    "img_size",
    "patch_size",
    "in_chans",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "init_values",
    "use_abs_pos_emb",
    "use_rel_pos_bias",
    "use_shared_rel_pos_bias",
)


class SimMIMViT(BEiT):
    """The official ``VisionTransformerForSimMIM``: a BEiT encoder with a mask token,
    returning the patch tokens as a feature map. The relative position index is kept in
    the state dict (persistent), as the official files hold it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        trunc_normal_(self.mask_token, std=0.02)
        for module in self.modules():
            index = module._buffers.get("relative_position_index")
            if (
                index is not None
                and "relative_position_index" in module._non_persistent_buffers_set
            ):
                module._non_persistent_buffers_set.discard("relative_position_index")

    def forward_masked(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (N, 3, H, W), mask: (N, h, w), 1 = masked -> (N, D, h, w) patch features."""
        x = self.patch_embed(x)
        n, length, _ = x.shape
        w = mask.flatten(1).unsqueeze(-1).type_as(x)
        x = x * (1 - w) + self.mask_token.expand(n, length, -1).to(x.dtype) * w
        x = torch.cat([self.cls_token.expand(n, -1, -1).to(x.dtype), x], dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        x = self.pos_drop(x)
        rel_pos_bias = self.rel_pos_bias() if self.rel_pos_bias is not None else None
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint(
                    blk, x, shared_rel_pos_bias=rel_pos_bias, use_reentrant=False
                )
            else:
                x = blk(x, shared_rel_pos_bias=rel_pos_bias)
        x = self.norm(x)[:, 1:]
        h, w_ = self.grid_size
        return x.transpose(1, 2).reshape(n, -1, h, w_)


class SimMIM(nn.Module):
    """Encoder + one-layer pixel head + masked L1 loss. ``forward(imgs, mask)`` returns
    the loss as the official model; ``forward(batch)`` (the loop's call) a dict."""

    encoder_name = "beit"

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        init_values: float | None = 0.1,
        use_abs_pos_emb: bool = False,
        use_rel_pos_bias: bool = False,
        use_shared_rel_pos_bias: bool = True,
        drop_path_rate: float = 0.1,
        # the loader's masks (the official MaskGenerator)
        mask_patch_size: int = 32,
        mask_ratio: float = 0.6,
        # the schedule (read by the method's training parts): timm 'cosine' or 'multistep'
        # (milestones in epochs) with warm-up from optim.warmup_lr; optim.min_lr is the
        # cosine's floor; both are per 512 images when optim.blr sets the lr
        lr_schedule: str = "multistep",
        milestones: tuple[int, ...] | list[int] = (700,),
        gamma: float = 0.1,
    ):
        super().__init__()
        if lr_schedule not in ("cosine", "multistep"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'multistep', got {lr_schedule!r}")
        encoder = dict(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            init_values=init_values,
            use_abs_pos_emb=use_abs_pos_emb,
            use_rel_pos_bias=use_rel_pos_bias,
            use_shared_rel_pos_bias=use_shared_rel_pos_bias,
        )
        self.encoder = SimMIMViT(**encoder, drop_path_rate=drop_path_rate)
        self.decoder = nn.Sequential(
            nn.Conv2d(embed_dim, patch_size**2 * 3, kernel_size=1), nn.PixelShuffle(patch_size)
        )
        self.patch_size, self.in_chans = patch_size, in_chans
        self.mask_ratio = mask_ratio
        self._args = dict(
            encoder,
            drop_path_rate=drop_path_rate,
            mask_patch_size=mask_patch_size,
            mask_ratio=mask_ratio,
            lr_schedule=lr_schedule,
            milestones=[int(m) for m in milestones],
            gamma=gamma,
        )

    @property
    def patch_embed(self):
        return self.encoder.patch_embed

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.encoder.grid_size

    def arch_config(self) -> dict:
        return dict(self._args)

    def encoder_config(self) -> dict:
        """Arguments of the ``beit`` backbone that carries the encoder downstream."""
        return {k: self._args[k] for k in BEIT_KEYS}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)

    def no_weight_decay(self) -> set[str]:
        """The official skip list: ``encoder.`` + the encoder's own (pos_embed, cls_token)."""
        return {"encoder.pos_embed", "encoder.cls_token"}

    def param_groups(self, weight_decay: float) -> list[dict]:
        """``optimizer.get_pretrain_param_groups``: [decayed, not decayed]."""
        skip = self.no_weight_decay()
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            plain = p.ndim == 1 or name.endswith(".bias") or name in skip
            (no_decay if plain else decay).append(p)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]

    def reconstruct(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (N, 3, H, W), mask: (N, h, w) -> the predicted image (N, 3, H, W)."""
        return self.decoder(self.encoder.forward_masked(x, mask))

    def forward(self, x: torch.Tensor | dict, mask: torch.Tensor | None = None):
        """x: (N, 3, H, W) normalised, mask: (N, h, w) 1 = masked -> the scalar loss;
        a batch ``{'image', 'mask'}`` -> {'loss', 'mask_ratio'}."""
        if isinstance(x, dict):
            loss = self.forward(x["image"], x["mask"])
            return {"loss": loss, "mask_ratio": x["mask"].float().mean()}
        x_rec = self.reconstruct(x, mask)
        return masked_l1(x, x_rec, mask, self.patch_size, self.in_chans)


def masked_l1(
    x: torch.Tensor, x_rec: torch.Tensor, mask: torch.Tensor, patch: int, in_chans: int = 3
) -> torch.Tensor:
    """L1 over the masked pixels / (masked pixels + 1e-5) / channels, in fp32."""
    pixel = mask.repeat_interleave(patch, 1).repeat_interleave(patch, 2).unsqueeze(1)
    pixel = pixel.to(torch.float32)
    loss = F.l1_loss(x.float(), x_rec.float(), reduction="none")
    return (loss * pixel).sum() / (pixel.sum() + 1e-5) / in_chans


# ---------------------------------------------------------------------------- schedule


def lr_at(
    t: int,
    base: float,
    warmup_init: float,
    warmup_t: int,
    total_t: int,
    schedule: str,
    min_lr: float = 0.0,
    milestones: tuple[int, ...] = (),
    gamma: float = 0.1,
) -> float:
    """The lr timm's ``CosineLRScheduler`` (t_in_epochs=False, one cycle, no warm-up
    prefix) or SimMIM's ``MultiStepLRScheduler`` gives at update ``t``."""
    if t < warmup_t:
        return warmup_init + t * (base - warmup_init) / warmup_t
    if schedule == "multistep":
        return base * gamma ** bisect.bisect_right(list(milestones), t)
    if t >= total_t:
        return min_lr
    return min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * t / total_t))


def official_lr_fn(args: dict, schedule: Schedule):
    """The lr the official loop uses at each optimizer step: the scheduler steps in
    micro-batches (``n_iter_per_epoch = len(loader)``) and is updated after each optimizer
    step with the index of its last micro-batch, so step s uses t = s * accum - 1 (and
    step 0 the warm-up start: it is used twice)."""
    k = schedule.accum_iter
    per_epoch = schedule.steps_per_epoch * k  # micro-batches

    def lr(step: int, total_steps: int) -> float:
        epochs = total_steps / max(schedule.steps_per_epoch, 1)
        t = max(step * k - 1, 0)
        return lr_at(
            t,
            schedule.base_lr,
            schedule.warmup_lr,
            int(schedule.warmup_epochs * per_epoch),
            int(epochs * per_epoch),
            args["lr_schedule"],
            schedule.min_lr,
            tuple(int(m * per_epoch) for m in args["milestones"]),
            args["gamma"],
        )

    return lr


# ---------------------------------------------------------------------------- the method


class MaskedImage:
    """Loader transform: the crop of ``crop`` and an official SimMIM mask beside it."""

    def __init__(self, crop, img_size: int, mask_patch_size: int, patch_size: int, ratio: float):
        self.crop, self.args = crop, (img_size, mask_patch_size, patch_size, ratio)

    def __call__(self, img) -> dict[str, torch.Tensor]:
        return {"image": self.crop(img), "mask": coarse_grid_mask(*self.args)}


class BatchMasks:
    """The device pipelines' masks: one official mask per image of a batch."""

    def __init__(self, img_size: int, mask_patch_size: int, patch_size: int, ratio: float):
        self.args = (img_size, mask_patch_size, patch_size, ratio)

    def __call__(self, n: int, generator: torch.Generator, device) -> dict[str, torch.Tensor]:
        masks = [coarse_grid_mask(*self.args, generator=generator) for _ in range(n)]
        return {"mask": torch.stack(masks).to(device)}


@register_method
class SimMIMMethod(PretrainMethod):
    name = "simmim"
    model_cls = SimMIM
    summary = "masked patches replaced by a token, one-layer pixel head, L1 on masked pixels"
    lr_batch = 512
    pretraining_only = re.compile(r"^(decoder\.|encoder\.mask_token)")
    backbone = "beit"

    def build_args(self, mask_ratio, norm_pix_loss, drop_path, img_size) -> dict:
        # the target is the raw (normalised) image: norm_pix_loss does not apply; drop
        # path stays the recipe's (0.1) unless model.drop_path sets one
        args = {"mask_ratio": mask_ratio} if mask_ratio is not None else {}
        args |= {"drop_path_rate": drop_path} if drop_path else {}
        return args | ({"img_size": img_size} if img_size else {})

    def encoder(self, model):
        return dist.unwrap(model).encoder

    def loader_parts(self, model, crop) -> LoaderParts:
        a = model.arch_config()
        size = a["img_size"]
        rule = (size, a["mask_patch_size"], a["patch_size"], a["mask_ratio"])
        return LoaderParts(MaskedImage(crop, *rule), batch_extra=BatchMasks(*rule))

    def synthetic_batch(self, model, batch_size, device, generator) -> dict:
        a = model.arch_config()
        size, grid = a["img_size"], a["img_size"] // a["patch_size"]
        mask = (torch.rand(batch_size, grid, grid, generator=generator) < a["mask_ratio"]).long()
        image = torch.randn(batch_size, 3, size, size, generator=generator)
        return {"image": image.to(device), "mask": mask.to(device)}

    def training_parts(self, model, schedule, weight_decay, clip_grad) -> TrainingParts:
        args = model.arch_config()
        return TrainingParts(
            task=ForwardTask(),
            param_groups=lambda m, wd: _with_decay(m.param_groups(wd), wd),
            loop={"lr_fn": official_lr_fn(args, schedule)},
        )

    # ------------------------------------------------------------------ checkpoints
    def recognizes(self, sd) -> bool:
        return "encoder.mask_token" in sd and "decoder.0.weight" in sd

    def read_official(self, obj: dict):
        """``main_simmim.py``'s file: model, optimizer, lr_scheduler, max_accuracy, epoch
        and its yacs ``config`` (read as a plain mapping by the safe loader)."""
        config = obj.get("config")
        if not (isinstance(obj.get("model"), dict) and "lr_scheduler" in obj):
            return None
        if not (isinstance(config, dict) and "MODEL" in config and self.recognizes(obj["model"])):
            return None
        return dict(obj["model"]), {"epoch": obj.get("epoch"), "source": "official SimMIM"}

    def from_backbone(self, sd: dict) -> dict:
        return {f"encoder.{k}": v for k, v in sd.items()}

    def infer_args(self, sd) -> tuple[str, dict]:
        args = infer_beit_args(self.encoder_state_dict(sd))
        return "simmim_vit", {k: v for k, v in args.items() if k in BEIT_KEYS}

    def encoder_state_dict(self, sd: dict, network: str = "teacher") -> dict:
        """``encoder.*`` without the mask token: timm's Beit keys (the index buffers,
        which timm recomputes, left out)."""
        return {
            k.removeprefix("encoder."): v
            for k, v in sd.items()
            if k.startswith("encoder.")
            and not self.pretraining_only.match(k)
            and not k.endswith("relative_position_index")
        }

    # ------------------------------------------------------------------ picture
    @torch.no_grad()
    def picture(self, model, imgs, out: Path, generator, mask_ratio=None, **_) -> str:
        """original | masked | prediction | prediction at masked + visible pixels."""
        model.eval()
        a = model.arch_config()
        ratio = a["mask_ratio"] if mask_ratio is None else mask_ratio
        args = (a["img_size"], a["mask_patch_size"], a["patch_size"], ratio, generator)
        mask = torch.stack([coarse_grid_mask(*args) for _ in imgs]).to(imgs.device)
        rec = model.reconstruct(imgs, mask)
        loss = float(masked_l1(imgs, rec, mask, a["patch_size"]))
        p = a["patch_size"]
        pixel = mask.repeat_interleave(p, 1).repeat_interleave(p, 2).unsqueeze(1).float()
        shown = {
            "original": denormalize(imgs),
            "masked": denormalize(imgs) * (1 - pixel) + 0.5 * pixel,
            "recon": denormalize(rec),
            "pasted": denormalize(imgs * (1 - pixel) + rec * pixel),
        }
        save_grid(shown, out, title=f"mask ratio {ratio:.2f}, masked-pixel L1 {loss:.4f}")
        return f"masked-pixel L1 {loss:.4f}"


def _with_decay(groups: list[dict], weight_decay: float) -> list[dict]:
    groups[0]["weight_decay"] = weight_decay
    return groups


# ---------------------------------------------------------------------------- variants


@register_model(model_cls=SimMIM)
def simmim_vit(**kw) -> SimMIM:
    """Any SimMIM ViT by explicit arguments."""
    return SimMIM(**kw)


@register_model(model_cls=SimMIM)
def simmim_vit_base_patch16(**kw) -> SimMIM:
    """The official ViT-B/16 recipe (800 epochs): shared relative position bias, layer
    scale 0.1, drop path 0.1, 32 px mask cells at ratio 0.6, multistep at 700."""
    return SimMIM(**({"embed_dim": 768, "depth": 12, "num_heads": 12} | kw))


@register_model(model_cls=SimMIM)
def simmim_vit_tiny_cifar(**kw) -> SimMIM:
    """ViT-Tiny width on 32 px / 4 px patches (8x8 grid); 8 px mask cells (2x2 patches)
    at ratio 0.6, cosine schedule."""
    recipe = dict(
        img_size=32,
        patch_size=4,
        embed_dim=192,
        depth=12,
        num_heads=3,
        mask_patch_size=8,
        drop_path_rate=0.1,
        lr_schedule="cosine",
    )
    return SimMIM(**(recipe | kw))
