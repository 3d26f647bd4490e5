"""LoMaR: local masked reconstruction (Chen et al., arXiv 2206.00790), as the official
``junchen14/LoMaR`` code defines it.

The whole image is patch-embedded; ``num_window`` random windows of ``window_size`` x
``window_size`` patches are cut out; in each, ``int(K * mask_ratio)`` patches are
replaced (not dropped) by a learnable mask token; every window plus a cls token is one
sequence through a plain ViT whose attention carries iRPE relative positions (no
absolute position embedding); a final LayerNorm and one linear layer predict the pixels
of every window patch; the loss is MSE on the masked ones. Cost grows with the number
of windows, not with the image size.

Parameter names equal the official ones (``encoder_pred``, ``mask_token``,
``blocks.N.attn.rpe_k.lookup_table_weight``), so official LoMaR files load (their unused
``pos_embed`` is ignored).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from .. import masking
from ..data.transforms import denormalize
from ..models.registry import register_model
from ..models.vit import ENCODER_KEYS, VIT_SIZES, VisionTransformer, infer_vit_args
from ..viz.recon import save_grid
from .base import PretrainMethod, register_method
from .mae import _init_linear_and_norm


class LoMaROutput(NamedTuple):
    loss: torch.Tensor  # scalar
    pred: torch.Tensor  # (S, K, p*p*3) for S = N * num_window sequences of K patches
    mask: torch.Tensor  # (S, K), 0 visible, 1 masked
    windows: masking.Windows  # image index, corner, patch indices of each sequence


class LocalMaskedReconstruction(VisionTransformer):
    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        window_size: int = 7,
        num_window: int = 4,
        mask_ratio: float = 0.8,
        norm_pix_loss: bool = True,
        window_pairing: str = "per_image",
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
            pos_embed="none",
            rel_pos="irpe",
            drop_path_rate=drop_path_rate,
            weight_init="skip",  # official init below
        )
        gh, gw = self.grid_size
        if window_size > min(gh, gw):
            raise ValueError(f"window_size {window_size} exceeds the {gh}x{gw} patch grid")
        self.window_size, self.num_window = window_size, num_window
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
        self.window_pairing = window_pairing
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.encoder_pred = nn.Linear(embed_dim, patch_size**2 * in_chans)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """As the official code: xavier for linears and the patch projection, normal(0.02)
        for cls and mask tokens; the iRPE tables stay zero."""
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(_init_linear_and_norm)

    def arch_config(self) -> dict:
        cfg = {k: v for k, v in super().arch_config().items() if k in ENCODER_KEYS}
        cfg.pop("rel_pos")
        return cfg | dict(
            window_size=self.window_size,
            num_window=self.num_window,
            mask_ratio=self.mask_ratio,
            norm_pix_loss=self.norm_pix_loss,
            window_pairing=self.window_pairing,
        )

    def encoder_config(self) -> dict:
        """Arguments of the plain ViT that carries this encoder downstream."""
        return {k: v for k, v in self.arch_config().items() if k in ENCODER_KEYS} | dict(
            pos_embed="none", rel_pos="irpe"
        )

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Nothing beyond 1-D tensors and biases, as the official pretraining (timm's
        ``add_weight_decay`` without a skip list): ``cls_token``, ``mask_token`` and the
        iRPE tables are decayed."""
        return set()

    def sample(self, imgs: torch.Tensor, **fixed) -> masking.Windows:
        """Windows and masks for a batch (``fixed``: corners / noise / pairing overrides)."""
        return masking.sample_window_masks(
            imgs.shape[0],
            self.grid_size,
            self.window_size,
            fixed.pop("num_window", self.num_window),
            fixed.pop("mask_ratio", self.mask_ratio),
            imgs.device,
            fixed.pop("pairing", self.window_pairing),
            **fixed,
        )

    def forward_encoder(self, imgs: torch.Tensor, win: masking.Windows) -> torch.Tensor:
        """imgs: (N, 3, H, W) -> pred (S, K, p*p*3) for the window sequences of ``win``."""
        x = self.patch_embed(imgs)  # (N, L, D)
        x = x[win.image.unsqueeze(1), win.patches]  # (S, K, D)
        x = torch.where(win.mask.unsqueeze(-1).bool(), self.mask_token.to(x.dtype), x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.encoder_pred(self.norm(self.run_blocks(x)))[:, 1:]

    def target(self, imgs: torch.Tensor, win: masking.Windows) -> torch.Tensor:
        """Pixel targets of the window patches (S, K, p*p*3), normalised per patch."""
        target = masking.patchify(imgs, self.patch_size)[win.image.unsqueeze(1), win.patches]
        return masking.normalize_patches(target) if self.norm_pix_loss else target

    def forward(
        self, imgs: torch.Tensor | dict, windows: masking.Windows | None = None
    ) -> LoMaROutput | dict:
        """imgs: (N, 3, H, W); ``windows`` (from ``sample``) fixes windows and masks.
        A batch ``{'image': ...}`` (the loop's call) -> {'loss', 'pred', 'mask'}."""
        if isinstance(imgs, dict):
            out = self.forward(imgs["image"], windows)
            return {"loss": out.loss, "pred": out.pred, "mask": out.mask}
        win = self.sample(imgs) if windows is None else windows
        pred = self.forward_encoder(imgs, win)
        loss = masking.masked_mse(pred, self.target(imgs, win), win.mask)
        return LoMaROutput(loss, pred, win.mask, win)


def _lomar(size: str, patch: int, **overrides) -> LocalMaskedReconstruction:
    dim, depth, heads = VIT_SIZES[size]
    args = dict(embed_dim=dim, depth=depth, num_heads=heads, patch_size=patch)
    return LocalMaskedReconstruction(**(args | overrides))


@register_model(model_cls=LocalMaskedReconstruction)
def lomar_vit(**kw):
    """Any LoMaR by explicit arguments."""
    return LocalMaskedReconstruction(**kw)


@register_model(model_cls=LocalMaskedReconstruction)
def lomar_vit_small_patch16(**kw):
    return _lomar("small", 16, **kw)


@register_model(model_cls=LocalMaskedReconstruction)
def lomar_vit_base_patch16(**kw):
    return _lomar("base", 16, **kw)


@register_model(model_cls=LocalMaskedReconstruction)
def lomar_vit_large_patch16(**kw):
    return _lomar("large", 16, **kw)


@register_model(model_cls=LocalMaskedReconstruction)
def lomar_vit_tiny_cifar(**kw):
    """ViT-Tiny on 32 px / 4 px patches (8 x 8 grid): four 4 x 4 windows, 12 of 16 masked."""
    return _lomar("tiny", 4, **({"img_size": 32, "window_size": 4} | kw))


# ---------------------------------------------------------------------------- the method


@register_method
class LoMaR(PretrainMethod):
    name = "lomar"
    model_cls = LocalMaskedReconstruction
    summary = "local masked reconstruction: a few small windows, iRPE, pixel MSE"
    pretraining_only = re.compile(r"^(encoder_pred|mask_token)")

    def recognizes(self, sd) -> bool:
        return "encoder_pred.weight" in sd and "patch_embed.proj.weight" in sd

    def infer_args(self, sd) -> tuple[str, dict]:
        args = infer_vit_args(sd)  # LoMaR always has iRPE: rel_pos is not an argument
        return "lomar_vit", {k: args[k] for k in ENCODER_KEYS if k in args and k != "rel_pos"}

    def picture(self, model, imgs, out: Path, generator, mask_ratio=None, **_) -> str:
        result = reconstruct_windows(model, imgs, generator)
        loss = float(result["loss"])
        title = f"{model.num_window} windows of {model.window_size}x{model.window_size}, "
        save_grid(result, out, title=title + f"masked-patch loss {loss:.4f}")
        return f"masked-patch loss {loss:.4f}"


@torch.no_grad()
def reconstruct_windows(
    model: LocalMaskedReconstruction, imgs: torch.Tensor, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """The MAE grid's four views on the whole image, where only the sampled windows take
    part: outside them the image is dimmed, inside them masked patches are grey
    (``masked``) or predicted (``recon``, ``pasted``). Adds ``boxes`` (N, M, 3): each
    window's top-left pixel (row, col) and its side in pixels, for drawing. Predictions
    of masked patches are un-normalised with the window's visible patches' statistics
    (no masked pixel reaches the picture)."""
    model.eval()
    n, p = imgs.shape[0], model.patch_size
    grid, ws = model.grid_size, model.window_size
    # reproducible pictures: corners and masks drawn from ``generator``
    corners = _seeded_corners(n, model.num_window, grid, ws, generator).to(imgs.device)
    noise = torch.rand(n * model.num_window, ws * ws, generator=generator).to(imgs.device)
    win = model.sample(imgs, corners=corners, noise=noise, pairing="per_image")
    out = model(imgs, windows=win)
    target = masking.patchify(imgs, p)  # (N, L, ppc)
    pred = out.pred.float()
    if model.norm_pix_loss:
        t = target[win.image.unsqueeze(1), win.patches]
        keep = (1 - win.mask).unsqueeze(-1)
        count = keep.sum(1, keepdim=True).clamp(min=1)
        mean = t.mean(dim=-1, keepdim=True)
        var = t.var(dim=-1, keepdim=True)
        masked_patch = win.mask.unsqueeze(-1).bool()
        mean = torch.where(masked_patch, (mean * keep).sum(1, keepdim=True) / count, mean)
        var = torch.where(masked_patch, (var * keep).sum(1, keepdim=True) / count, var)
        pred = pred * (var + 1e-6) ** 0.5 + mean
    inside = torch.zeros(target.shape[:2], device=imgs.device)
    masked = torch.zeros_like(inside)
    recon = target.clone()
    inside[win.image.unsqueeze(1), win.patches] = 1.0
    masked[win.image.unsqueeze(1), win.patches] = win.mask
    recon[win.image.unsqueeze(1), win.patches] = pred
    as_img = lambda x: masking.unpatchify(x, p, grid)  # noqa: E731
    pix = lambda m: as_img(m.unsqueeze(-1).expand(-1, -1, target.shape[-1]))  # noqa: E731
    inside, masked = pix(inside), pix(masked)
    dim = 0.35 * denormalize(imgs) * (1 - inside)
    visible = denormalize(imgs) * inside * (1 - masked)
    return {
        "original": denormalize(imgs),
        "masked": dim + visible + 0.5 * masked,
        "recon": dim + denormalize(as_img(recon)) * inside,
        "pasted": dim + visible + denormalize(as_img(recon)) * masked,
        "loss": out.loss,
        "mask": out.mask,
        "boxes": torch.cat([corners * p, torch.full_like(corners[..., :1], ws * p)], -1),
    }


def _seeded_corners(n, m, grid, ws, generator) -> torch.Tensor:
    rows = torch.randint(0, grid[0] - ws + 1, (n, m), generator=generator)
    cols = torch.randint(0, grid[1] - ws + 1, (n, m), generator=generator)
    return torch.stack([rows, cols], -1)
