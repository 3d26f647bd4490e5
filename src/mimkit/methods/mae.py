"""Masked Autoencoder (He et al., 2021) as the official ``models_mae.MaskedAutoencoderViT``.

The encoder *is* the ViT (subclass), so parameter names are the official ones and an
official checkpoint loads with ``model.load_state_dict(ckpt['model'])``.
forward = encoder on visible patches -> light decoder with mask tokens -> loss on removed patches.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import torch
from timm.models.vision_transformer import Block
from torch import nn

from .. import masking
from ..data.transforms import denormalize
from ..layers import Attention, get_2d_sincos_pos_embed
from ..models.registry import register_model
from ..models.vit import (
    ENCODER_KEYS,
    VIT_SIZES,
    LayerNorm6,
    VisionTransformer,
    count_blocks,
    infer_vit_args,
)
from ..viz.recon import save_grid
from .base import PretrainMethod, register_method


class MAEOutput(NamedTuple):
    loss: torch.Tensor  # scalar
    pred: torch.Tensor  # (N, L, p*p*3), normalised-pixel space when norm_pix_loss
    mask: torch.Tensor  # (N, L), 0 keep, 1 remove


class MaskedAutoencoder(VisionTransformer):
    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_pix_loss: bool = False,
        mask_ratio: float = 0.75,
        drop_path_rate: float = 0.0,
    ):
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            num_classes=0,
            global_pool="token",
            pos_embed="sincos",
            drop_path_rate=drop_path_rate,
            weight_init="skip",  # official MAE init below
        )
        self.norm_pix_loss = norm_pix_loss
        self.mask_ratio = mask_ratio
        num_patches = self.patch_embed.num_patches
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False
        )
        self.decoder_blocks = nn.ModuleList(
            Block(
                decoder_embed_dim,
                decoder_num_heads,
                mlp_ratio,
                qkv_bias=True,
                norm_layer=LayerNorm6,
                attn_layer=Attention,
            )
            for _ in range(decoder_depth)
        )
        self.decoder_norm = LayerNorm6(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans)
        self.decoder_num_heads = decoder_num_heads
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """As the official code: sin-cos tables, xavier for linears and the patch
        projection (viewed as a linear), normal(0.02) for cls and mask tokens."""
        self.reset_pos_embed()
        table = get_2d_sincos_pos_embed(self.decoder_pos_embed.shape[-1], self.grid_size, True)
        self.decoder_pos_embed.data.copy_(table.unsqueeze(0))
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(_init_linear_and_norm)

    def arch_config(self) -> dict:
        cfg = {k: v for k, v in super().arch_config().items() if k in ENCODER_KEYS}
        cfg.pop("rel_pos")
        return cfg | dict(
            decoder_embed_dim=self.decoder_embed.out_features,
            decoder_depth=len(self.decoder_blocks),
            decoder_num_heads=self.decoder_num_heads,
            norm_pix_loss=self.norm_pix_loss,
            mask_ratio=self.mask_ratio,
        )

    def encoder_config(self) -> dict:
        """Arguments of the plain ViT that carries this encoder downstream (learnable
        ``pos_embed`` initialised from the sin-cos table, as the official fine-tuning)."""
        return {k: v for k, v in self.arch_config().items() if k in ENCODER_KEYS}

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Nothing beyond 1-D tensors and biases: the official pretraining (timm's
        ``add_weight_decay`` without a skip list) decays ``cls_token`` and ``mask_token``.
        The sin-cos tables are frozen, so they are never optimised at all."""
        return set()

    def forward_encoder(
        self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, masking.Masking]:
        """imgs: (N, 3, H, W) -> latent (N, 1 + L_keep, D), masking."""
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        if noise is None:
            noise = torch.rand(x.shape[0], x.shape[1], device=x.device)
        m = masking.random_masking(noise, mask_ratio)
        x = masking.gather_tokens(x, m.ids_keep)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = self.norm(self.run_blocks(x))
        return x, m

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent: (N, 1 + L_keep, D), ids_restore: (N, L) -> pred (N, L, p*p*3)."""
        x = self.decoder_embed(latent)
        tokens = masking.restore_with_tokens(x[:, 1:], self.mask_token, ids_restore)
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
        x = self.decoder_norm(self.run_blocks(x, self.decoder_blocks))
        return self.decoder_pred(x)[:, 1:, :]

    def target(self, imgs: torch.Tensor) -> torch.Tensor:
        """Pixel targets (N, L, p*p*3), per-patch normalised when ``norm_pix_loss``."""
        target = masking.patchify(imgs, self.patch_size)
        return masking.normalize_patches(target) if self.norm_pix_loss else target

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor):
        return masking.masked_mse(pred, self.target(imgs), mask)

    def forward(
        self,
        imgs: torch.Tensor | dict,
        mask_ratio: float | None = None,
        noise: torch.Tensor | None = None,
    ) -> MAEOutput | dict:
        """imgs: (N, 3, H, W) -> MAEOutput(loss, pred, mask), as the official
        ``model(imgs, mask_ratio)``; noise: (N, L) decides the mask as in the official
        code. A batch ``{'image': ..., 'noise'?: ...}`` (the loop's call) -> the same as
        a dict."""
        if isinstance(imgs, dict):
            out = self.forward(imgs["image"], mask_ratio, imgs.get("noise", noise))
            return out._asdict()
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        latent, m = self.forward_encoder(imgs, ratio, noise)
        pred = self.forward_decoder(latent, m.ids_restore)
        return MAEOutput(self.forward_loss(imgs, pred, m.mask), pred, m.mask)


def _init_linear_and_norm(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _mae(size: str, patch: int, decoder=(512, 8, 16), **overrides) -> MaskedAutoencoder:
    dim, depth, heads = VIT_SIZES[size]
    ddim, ddepth, dheads = decoder
    args = dict(
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        patch_size=patch,
        decoder_embed_dim=ddim,
        decoder_depth=ddepth,
        decoder_num_heads=dheads,
    )
    args.update(overrides)
    return MaskedAutoencoder(**args)


@register_model(model_cls=MaskedAutoencoder)
def mae_vit(**kw):
    """Any MAE by explicit arguments."""
    return MaskedAutoencoder(**kw)


@register_model(model_cls=MaskedAutoencoder)
def mae_vit_tiny_patch16(**kw):
    return _mae("tiny", 16, **kw)


@register_model(model_cls=MaskedAutoencoder)
def mae_vit_small_patch16(**kw):
    return _mae("small", 16, **kw)


@register_model(model_cls=MaskedAutoencoder)
def mae_vit_base_patch16(**kw):
    return _mae("base", 16, **kw)


@register_model(model_cls=MaskedAutoencoder)
def mae_vit_large_patch16(**kw):
    return _mae("large", 16, **kw)


@register_model(model_cls=MaskedAutoencoder)
def mae_vit_huge_patch14(**kw):
    return _mae("huge", 14, **kw)


@register_model(model_cls=MaskedAutoencoder)
def mae_vit_tiny_cifar(**kw):
    """ViT-Tiny encoder on 32 px / 4 px patches with a 192-wide, 4-block decoder."""
    return _mae("tiny", 4, decoder=(192, 4, 3), **{"img_size": 32, **kw})


# ---------------------------------------------------------------------------- the method


@register_method
class MAE(PretrainMethod):
    name = "mae"
    model_cls = MaskedAutoencoder
    summary = "masked autoencoder: encoder on visible patches, light decoder, pixel MSE"
    pretraining_only = re.compile(r"^(decoder_|mask_token)")
    hf_pretraining = "ViTMAEForPreTraining"

    def recognizes(self, sd) -> bool:
        return "decoder_embed.weight" in sd and "patch_embed.proj.weight" in sd

    def infer_args(self, sd) -> tuple[str, dict]:
        args = {k: v for k, v in infer_vit_args(sd).items() if k in ENCODER_KEYS}
        args.pop("rel_pos", None)
        return "mae_vit", args | dict(
            decoder_embed_dim=sd["decoder_embed.weight"].shape[0],
            decoder_depth=count_blocks(sd, "decoder_blocks."),
            decoder_num_heads=16,  # not in the shapes: the official decoders' value
        )

    def picture(
        self, model, imgs, out: Path, generator, mask_ratio=None, stats: str = "visible"
    ) -> str:
        """The official demo's grid; ``stats`` as ``reconstruct`` (the title says which)."""
        noise = torch.rand(len(imgs), model.patch_embed.num_patches, generator=generator)
        ratio = model.mask_ratio if mask_ratio is None else mask_ratio
        result = reconstruct(model, imgs, ratio, noise.to(imgs.device), stats=stats)
        loss = float(result["loss"])
        how = STATS_LABELS[stats] if model.norm_pix_loss else "raw pixel prediction"
        title = f"mask ratio {ratio:.2f}, masked-patch loss {loss:.4f}\n{how}"
        save_grid(result, out, title=title)
        return f"masked-patch loss {loss:.4f}"

    def flops_formula(self, model) -> tuple[float, str]:
        c = model.arch_config()
        flops = mae_step_flops(
            c["img_size"],
            c["patch_size"],
            c["embed_dim"],
            c["depth"],
            c["decoder_embed_dim"],
            c["decoder_depth"],
            c["mask_ratio"],
            c["in_chans"],
            c["mlp_ratio"],
        )
        return flops, FORMULA


STATS_LABELS = {
    "visible": "masked patches un-normalised with the visible patches' mean/variance (honest)",
    "true": "masked patches un-normalised with their own true mean/variance (official demo; "
    "leaks their statistics)",
}


FORMULA = (
    "forward = 2 x [P*patch_dim*d_e + L_e*M(N_v,d_e) + N_v*d_e*d_d + L_d*M(N,d_d) "
    "+ N*d_d*patch_dim], M(n,d) = 12*n*d^2 + 2*n^2*d, step = 3 x forward"
)


def mae_step_flops(
    img_size: int,
    patch: int,
    d_e: int,
    depth: int,
    d_d: int,
    d_depth: int,
    mask_ratio: float,
    in_chans: int = 3,
    mlp_ratio: float = 4.0,
) -> float:
    """Training FLOPs per image of an MAE step (encoder on visible tokens + cls)."""
    from ..flops import block_macs

    p = (img_size // patch) ** 2
    patch_dim = patch * patch * in_chans
    n_v = int(p * (1 - mask_ratio)) + 1
    n = p + 1
    macs = (
        p * patch_dim * d_e
        + depth * block_macs(n_v, d_e, mlp_ratio)
        + n_v * d_e * d_d
        + d_depth * block_macs(n, d_d, mlp_ratio)
        + n * d_d * patch_dim
    )
    return 3 * 2 * macs


# ---------------------------------------------------------------------------- pictures


@torch.no_grad()
def reconstruct(
    model: MaskedAutoencoder,
    imgs: torch.Tensor,
    mask_ratio: float | None = None,
    noise: torch.Tensor | None = None,
    stats: str = "visible",
) -> dict[str, torch.Tensor]:
    """imgs: (N, 3, H, W) normalised -> dict of (N, 3, H, W) images in [0, 1]:
    original, masked, recon, pasted; plus the loss and mask (N, L).

    With ``norm_pix_loss`` the model predicts each patch's pixels normalised by that
    patch's own mean and variance, which a masked patch does not reveal. ``stats``
    says what maps the prediction back to pixels: 'visible' (default, honest) uses the
    mean of the per-patch means and variances over the image's visible patches, so no
    pixel of a masked patch reaches the picture; 'true' uses each masked patch's own
    statistics, as the official demo does (it leaks their brightness and contrast).
    Without ``norm_pix_loss`` the prediction is in pixel space and shown as it is.
    """
    model.eval()
    out = model(imgs, mask_ratio=mask_ratio, noise=noise)
    p, grid = model.patch_size, model.grid_size
    pred = out.pred.float()
    if model.norm_pix_loss:
        pred = _unnormalize(pred, masking.patchify(imgs, p), out.mask, stats)
    recon = masking.unpatchify(pred, p, grid)
    pixel_mask = masking.unpatchify(
        out.mask.unsqueeze(-1).expand(-1, -1, p * p * 3).float(), p, grid
    )
    masked = imgs * (1 - pixel_mask)
    pasted = imgs * (1 - pixel_mask) + recon * pixel_mask
    return {
        "original": denormalize(imgs),
        "masked": denormalize(masked) * (1 - pixel_mask) + 0.5 * pixel_mask,  # grey holes
        "recon": denormalize(recon),
        "pasted": denormalize(pasted),
        "loss": out.loss,
        "mask": out.mask,
    }


def _unnormalize(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, stats: str
) -> torch.Tensor:
    """pred, target: (N, L, p*p*3), mask: (N, L) 1 = removed -> pred in pixel space."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    if stats == "visible":  # masked patches get the visible patches' average statistics
        keep = (1 - mask).unsqueeze(-1)
        count = keep.sum(1, keepdim=True).clamp(min=1)
        vis_mean = (mean * keep).sum(1, keepdim=True) / count
        vis_var = (var * keep).sum(1, keepdim=True) / count
        m = mask.unsqueeze(-1).bool()
        mean, var = torch.where(m, vis_mean, mean), torch.where(m, vis_var, var)
    elif stats != "true":
        raise ValueError(f"stats must be 'visible' or 'true', got {stats!r}")
    return pred * (var + 1e-6) ** 0.5 + mean
