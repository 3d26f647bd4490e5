"""Probes that fit MIM features: an attentive probe on frozen patch tokens, and features
of any one block.

Frozen MAE-style features hold their information spread over the patch tokens: the
[CLS] token or their mean loses much of it (efficient probing, Psomas et al. 2025:
frozen MAE ViT-B kNN 35.6, linear 67.8, attentive 75.5 on ImageNet). The attentive probe
(as in AIM, V-JEPA and efficient probing) lets a few learnable queries attend over all
tokens, then classifies their pooled output with one linear layer.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError


class AttentiveHead(nn.Module):
    """tokens (N, T, D) -> logits (N, C): LayerNorm, multi-head cross-attention of
    ``queries`` learnable queries over the tokens, mean over the queries, LayerNorm,
    linear. Queries start at trunc-normal 0.02; the classifier at std 0.01, bias 0."""

    def __init__(self, dim: int, num_classes: int, queries: int = 1, heads: int | None = None):
        super().__init__()
        heads = heads or max(1, dim // 64)
        if dim % heads:
            raise UserError(f"attentive probe: {heads} heads do not divide width {dim}")
        self.queries = nn.Parameter(torch.zeros(1, queries, dim))
        nn.init.trunc_normal_(self.queries, std=0.02)
        self.norm_in = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_out = nn.LayerNorm(dim, eps=1e-6)
        self.fc = nn.Linear(dim, num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (N, T, D) -> (N, D): the queries' attention-weighted summary."""
        kv = self.norm_in(tokens)
        q = self.queries.expand(len(tokens), -1, -1).to(kv.dtype)
        out, _ = self.attn(q, kv, kv, need_weights=False)
        return out.mean(1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm_out(self.pool(tokens.float())))


class Tokens(nn.Module):
    """A backbone whose features are all its output tokens (N, T, D), through the final
    norm (prefix tokens included unless ``patches_only``): what the attentive probe reads.
    Follows the backbone contract (``forward_features`` / ``forward_head``)."""

    def __init__(self, backbone: nn.Module, patches_only: bool = False):
        super().__init__()
        if not hasattr(backbone, "forward_features"):
            raise UserError("the attentive probe needs a backbone that returns tokens")
        self.backbone, self.patches_only = backbone, patches_only
        self.num_features = backbone.num_features

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        x = self.backbone.forward_features(imgs)
        if x.ndim == 4:  # a conv net's (N, D, h, w) map: its positions are the tokens
            return x.flatten(2).transpose(1, 2)
        prefix = getattr(self.backbone, "num_prefix_tokens", 1)
        return x[:, prefix:] if self.patches_only else x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x

    @property
    def patch_embed(self):  # the input size, for transforms
        return self.backbone.patch_embed

    @property
    def pretrained_cfg(self):  # a timm backbone's preprocessing (AttributeError otherwise)
        return self.backbone.pretrained_cfg

    def arch_config(self) -> dict:
        arch = getattr(self.backbone, "arch_config", lambda: {})()
        return {**arch, "tokens": True, "patches_only": self.patches_only}


class BlockFeatures(nn.Module):
    """The output of block ``block`` (0-based; negative from the end) through the final
    norm, in place of the last block's: any protocol reads it with the usual pooling
    (``global_pool`` cls or avg). Uses timm's ``forward_intermediates``."""

    def __init__(self, backbone: nn.Module, block: int):
        super().__init__()
        if not hasattr(backbone, "forward_intermediates") or not hasattr(backbone, "blocks"):
            raise UserError("eval.block needs a ViT backbone (one with blocks)")
        depth = len(backbone.blocks)
        if not -depth <= block < depth:
            raise UserError(f"eval.block must be between 0 and {depth - 1}, got {block}")
        self.backbone, self.block = backbone, block % depth
        self.num_features = backbone.num_features

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        ((patches, prefix),) = self.backbone.forward_intermediates(
            imgs,
            indices=[self.block],
            norm=True,
            return_prefix_tokens=True,
            output_fmt="NLC",
            intermediates_only=True,
        )
        return torch.cat([prefix, patches], dim=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.backbone.forward_head(x, pre_logits=pre_logits)

    @property
    def patch_embed(self):
        return self.backbone.patch_embed

    @property
    def pretrained_cfg(self):
        return self.backbone.pretrained_cfg

    @property
    def has_class_token(self) -> bool:
        return getattr(self.backbone, "cls_token", None) is not None

    @property
    def global_pool(self):
        return self.backbone.global_pool

    @global_pool.setter
    def global_pool(self, value):
        self.backbone.global_pool = value

    def arch_config(self) -> dict:
        arch = getattr(self.backbone, "arch_config", lambda: {})()
        return {**arch, "block": self.block}


@torch.no_grad()
def every_block(backbone: nn.Module, imgs: torch.Tensor) -> dict[str, torch.Tensor]:
    """imgs (N, 3, H, W) -> {'cls': (depth, N, D), 'avg': (depth, N, D)}: every block's
    [CLS] token and mean patch token, through the final norm, in one pass."""
    outs = backbone.forward_intermediates(
        imgs,
        indices=len(backbone.blocks),
        norm=True,
        return_prefix_tokens=True,
        output_fmt="NLC",
        intermediates_only=True,
    )
    return {
        "cls": torch.stack([prefix[:, 0] for _, prefix in outs]),
        "avg": torch.stack([patches.mean(1) for patches, _ in outs]),
    }
