"""The iBOT backbone: a ViT with an optional learnable mask embedding, any input size."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from ...models.vit import VisionTransformer


class IBOTViT(VisionTransformer):
    """The iBOT backbone: our ViT (official keys) with an optional learnable
    ``masked_embed`` (1, D), inputs of any size (position embedding interpolated as the
    official ``interpolate_pos_encoding``) and a ``forward`` that returns all tokens.

    ``forward_features(x)`` is timm's contract ((N, 1 + L, D), normed), so kNN, probes and
    fine-tuning read it like any ViT; ``forward_head`` is inherited.
    """

    def __init__(self, *args, masked_embed: bool = True, **kwargs):
        kwargs.setdefault("weight_init", "skip")  # official init below
        super().__init__(*args, **kwargs)
        self.patch_embed.strict_img_size = False  # local crops are smaller
        self.masked_embed = nn.Parameter(torch.zeros(1, self.embed_dim)) if masked_embed else None
        self._init_official()

    def _init_official(self) -> None:
        """As the official ViT: trunc-normal(0.02) tokens and linears, zero biases, unit
        LayerNorms; the patch projection keeps PyTorch's default conv init."""
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def arch_config(self) -> dict:
        return super().arch_config() | {"masked_embed": self.masked_embed is not None}

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"masked_embed"}

    def interpolate_pos_encoding(self, h: int, w: int) -> torch.Tensor:
        """Position table (1, 1 + h*w, D) for an (h, w) patch grid: the official bicubic
        resize by ``scale_factor = (grid + 0.1) / old_grid`` (DINO issue #8), whose
        sampling differs slightly from resizing to an exact size."""
        pos = self.pos_embed
        n = pos.shape[1] - 1
        old = int(math.sqrt(n))
        if h * w == n and h == w:
            return pos
        grid = pos[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(
            grid, scale_factor=((h + 0.1) / math.sqrt(n), (w + 0.1) / math.sqrt(n)), mode="bicubic"
        )
        assert grid.shape[-2:] == (h, w), grid.shape
        grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)
        return torch.cat([pos[:, :1], grid], dim=1)

    def prepare_tokens(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (N, 3, H, W), mask: (N, h, w) or (N, L) bool, True = masked -> (N, 1 + L, D).

        Masked patch embeddings become ``masked_embed`` before the position embedding."""
        n, _, height, width = x.shape
        p = self.patch_size
        x = self.patch_embed(x)  # (N, L, D)
        if mask is not None:
            fill = self.masked_embed.to(x.dtype)
            x = torch.where(mask.reshape(n, -1, 1), fill, x)
        x = torch.cat([self.cls_token.expand(n, -1, -1).to(x.dtype), x], dim=1)
        x = x + self.interpolate_pos_encoding(height // p, width // p)
        return self.pos_drop(x)

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (N, 3, H, W) -> all tokens (N, 1 + L, D) after the final norm."""
        x = self.norm_pre(self.patch_drop(self.prepare_tokens(x, mask)))
        return self.norm(self.run_blocks(x))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_features(x, mask)
