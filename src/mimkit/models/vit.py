"""Vision Transformer encoder on timm's ``VisionTransformer``, with MAE's conventions.

Key names equal the official MAE / timm layout (``cls_token``, ``pos_embed``,
``patch_embed.proj``, ``blocks.N``, ``norm`` or ``fc_norm`` + ``head``), so their
checkpoints load as they are. The backbone contract (timm's) is inherited:
``forward_features``, ``forward_head(pre_logits=...)``, ``no_weight_decay``,
``num_features``, ``group_matcher`` (per-block groups for layer-wise lr decay).
"""

from __future__ import annotations

from functools import partial

import torch
from timm.models import checkpoint_seq
from timm.models.vision_transformer import VisionTransformer as _TimmViT
from torch import nn

from ..errors import UserError
from ..layers import Attention, IRPEAttention, get_2d_sincos_pos_embed
from .registry import register_model

# Sizes users know: (embed_dim, depth, num_heads)
VIT_SIZES = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}
# Default heads for an embed dim, used when a checkpoint does not say (official files).
HEADS_FOR_DIM = {d: h for d, _, h in VIT_SIZES.values()}

LayerNorm6 = partial(nn.LayerNorm, eps=1e-6)


def check_img_size(img_size: int, patch_size: int) -> None:
    if img_size % patch_size:
        raise UserError(
            f"image size {img_size} is not divisible by patch size {patch_size}: "
            f"set data.img_size to a multiple of {patch_size}"
        )


class VisionTransformer(_TimmViT):
    """timm ViT with LayerNorm eps 1e-6 and an optional fixed 2-D sin-cos ``pos_embed``.

    ``pos_embed='sincos'`` keeps the table frozen (MAE pretraining); ``'learn'`` makes it a
    trainable parameter (fine-tuning, as the official ``models_vit``); ``'none'`` has no
    absolute table (LoMaR). ``rel_pos='irpe'`` puts LoMaR's relative position encoding in
    every attention layer. ``global_pool='avg'`` gives ``fc_norm`` + ``head`` with
    ``norm`` = Identity, the MAE fine-tuned layout.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        num_classes: int = 0,
        global_pool: str = "token",
        pos_embed: str = "learn",
        rel_pos: str | None = None,
        drop_path_rate: float = 0.0,
        drop_rate: float = 0.0,
        weight_init: str = "",
        **kwargs,
    ):
        check_img_size(img_size, patch_size)
        if embed_dim % num_heads:
            raise UserError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if pos_embed not in ("learn", "sincos", "none"):
            raise UserError(f"pos_embed must be 'learn', 'sincos' or 'none', got '{pos_embed}'")
        if rel_pos not in (None, "irpe"):
            raise UserError(f"rel_pos must be null or 'irpe', got '{rel_pos}'")
        # timm's attention, with SDPA or the explicit product picked per call (CPU bf16)
        kwargs["attn_layer"] = IRPEAttention if rel_pos == "irpe" else Attention
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=num_classes,
            pos_embed="none" if pos_embed == "none" else "learn",
            global_pool=global_pool,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=True,
            norm_layer=LayerNorm6,
            drop_path_rate=drop_path_rate,
            drop_rate=drop_rate,
            weight_init=weight_init,
            **kwargs,
        )
        self.patch_size = patch_size
        self.depth = depth
        self.num_heads = num_heads
        self.pos_embed_type = pos_embed
        self.rel_pos = rel_pos
        if pos_embed == "sincos":
            self.pos_embed.requires_grad_(False)
            self.reset_pos_embed()

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.patch_embed.grid_size)

    def reset_pos_embed(self) -> None:
        if self.pos_embed is None:
            return
        table = get_2d_sincos_pos_embed(self.embed_dim, self.grid_size, cls_token=True)
        with torch.no_grad():
            self.pos_embed.copy_(table.unsqueeze(0))

    def run_blocks(self, x: torch.Tensor, blocks: nn.Module | None = None) -> torch.Tensor:
        """x: (N, T, D) through ``blocks`` (default: the encoder's), recomputing their
        activations in backward when gradient checkpointing is on."""
        blocks = self.blocks if blocks is None else blocks
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(blocks, x)
        for blk in blocks:
            x = blk(x)
        return x

    def arch_config(self) -> dict:
        """Constructor arguments that rebuild this model (saved in checkpoints)."""
        return dict(
            img_size=self.patch_embed.img_size[0],
            patch_size=self.patch_size,
            in_chans=self.in_chans,
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_ratio=self.blocks[0].mlp.fc1.out_features / self.embed_dim,
            num_classes=self.num_classes,
            global_pool=self.global_pool,
            pos_embed=self.pos_embed_type,
            rel_pos=self.rel_pos,
        )

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Embeddings -> group 0, block i -> i + 1; norm, fc_norm and head stay unmatched,
        which timm puts in one last group (depth + 1).

        timm's own ViT matcher merges ``norm`` into the last block's group, so with cls
        pooling its layer-wise lr decay gives the final norm ``decay`` instead of MAE's 1.
        This way the scales are MAE's ``decay^(depth + 1 - layer)`` for either head layout.
        """
        return dict(
            stem=r"^cls_token|reg_token|pos_embed|patch_embed|norm_pre",
            blocks=[(r"^blocks\.(\d+)", None)],
        )


def _vit(size: str, patch: int, **overrides) -> VisionTransformer:
    dim, depth, heads = VIT_SIZES[size]
    args = dict(embed_dim=dim, depth=depth, num_heads=heads, patch_size=patch)
    args.update(overrides)
    return VisionTransformer(**args)


@register_model(model_cls=VisionTransformer)
def vit(**kw) -> VisionTransformer:
    """Any ViT by explicit arguments (embed_dim, depth, num_heads, patch_size, img_size, ...)."""
    return VisionTransformer(**kw)


@register_model(model_cls=VisionTransformer)
def vit_tiny_patch16(**kw):
    return _vit("tiny", 16, **kw)


@register_model(model_cls=VisionTransformer)
def vit_small_patch16(**kw):
    return _vit("small", 16, **kw)


@register_model(model_cls=VisionTransformer)
def vit_base_patch16(**kw):
    return _vit("base", 16, **kw)


@register_model(model_cls=VisionTransformer)
def vit_large_patch16(**kw):
    return _vit("large", 16, **kw)


@register_model(model_cls=VisionTransformer)
def vit_huge_patch14(**kw):
    return _vit("huge", 14, **kw)


@register_model(model_cls=VisionTransformer)
def vit_tiny_cifar(**kw):
    """ViT-Tiny for 32 px images with 4 px patches (8 x 8 tokens)."""
    return _vit("tiny", 4, **{"img_size": 32, **kw})


ENCODER_KEYS = (
    "img_size",
    "patch_size",
    "in_chans",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "rel_pos",
)


def encoder_args(args: dict) -> dict:
    """The ViT-encoder subset of a model's arguments (e.g. of an MAE's or a LoMaR's).

    A pretraining table (MAE's frozen sin-cos) becomes the default learnable one of a
    fine-tuned ViT, as the official ``models_vit``; no table (LoMaR) stays none."""
    out = {k: v for k, v in args.items() if k in ENCODER_KEYS}
    if args.get("pos_embed") == "none":
        out["pos_embed"] = "none"
    return out


def infer_vit_args(sd: dict[str, torch.Tensor]) -> dict:
    """ViT constructor arguments read off the tensor shapes of a timm-layout state dict.

    The number of heads is not in the shapes: the usual value for the width is used
    (tiny 3, small 6, base 12, large/huge 16), as official files need; an iRPE table
    (relative positions in every attention layer) gives it exactly.
    """
    if "patch_embed.proj.weight" not in sd:
        raise UserError("not a ViT checkpoint: no 'patch_embed.proj.weight'")
    dim, in_chans, p, _ = sd["patch_embed.proj.weight"].shape
    args = dict(
        embed_dim=dim,
        depth=count_blocks(sd, "blocks."),
        patch_size=p,
        in_chans=in_chans,
        num_heads=HEADS_FOR_DIM.get(dim, max(1, dim // 64)),
        mlp_ratio=sd["blocks.0.mlp.fc1.weight"].shape[0] / dim,
    )
    if "pos_embed" in sd:
        grid = int(round((sd["pos_embed"].shape[1] - 1) ** 0.5))
        args["img_size"] = grid * p
    if "blocks.0.attn.rpe_k.lookup_table_weight" in sd:
        args["rel_pos"] = "irpe"  # the table is (1, head_dim, buckets): it gives the heads
        args["num_heads"] = dim // sd["blocks.0.attn.rpe_k.lookup_table_weight"].shape[1]
        if "pos_embed" not in sd:
            args["pos_embed"] = "none"
    if "fc_norm.weight" in sd:
        args["global_pool"] = "avg"
    if "head.weight" in sd:
        args["num_classes"] = sd["head.weight"].shape[0]
    return args


def count_blocks(sd: dict, prefix: str) -> int:
    """Number of ``prefix{i}.`` blocks in a state dict."""
    ids = {int(k[len(prefix) :].split(".")[0]) for k in sd if k.startswith(prefix)}
    return max(ids) + 1 if ids else 0
