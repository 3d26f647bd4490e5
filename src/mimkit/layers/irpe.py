"""Image relative position encoding (iRPE, Wu et al. 2021) as LoMaR uses it.

Written here because timm has no iRPE. The variant is the one in LoMaR's official
code: *product* method (separate piecewise buckets for the row and the column offset),
*contextual* mode on keys (the bias of query i to key j is ``q_i . r[bucket(i, j)]``,
so it depends on the query content, not only on the offset), one table shared by all
heads, and the cls token skipped (it has its own bucket in both directions). The table
is zero-initialised, so a fresh model starts without positional bias.

Buckets: the piecewise index of iRPE with ratio 1.9 (alpha 1.9, beta 3.8, gamma 15.2)
keeps offsets -1, 0, 1 exact and compresses longer ones logarithmically, clipped to
+-3: 7 x 7 = 49 buckets (+1 for cls) whatever the grid. That is why a table learned on
7 x 7 windows applies unchanged to the full 14 x 14 grid at fine-tuning time.

Parameter names equal the official ones (``attn.rpe_k.lookup_table_weight``, shape
``(1, head_dim, 50)``), so LoMaR checkpoints load as they are.
"""

from __future__ import annotations

import functools
import math

import torch
from timm.layers import Attention
from torch import nn

from .attention import attention

IRPE_RATIO = 1.9


def piecewise_index(rel: torch.Tensor, alpha: float, beta: float, gamma: float) -> torch.Tensor:
    """iRPE Eq. 18: offsets |x| <= alpha stay exact, longer ones map logarithmically
    into (alpha, beta]; result in [-int(beta), int(beta)] (long)."""
    rel = rel.to(torch.float64)
    far = rel.abs() > alpha
    mag = alpha + torch.log(rel.abs().clamp(min=1e-9) / alpha) / math.log(gamma / alpha) * (
        beta - alpha
    )
    out = torch.where(far, torch.sign(rel) * mag.round().clamp(max=beta), rel.round())
    return out.long()


@functools.lru_cache(maxsize=32)
def product_buckets(height: int, width: int, skip: int, ratio: float = IRPE_RATIO) -> torch.Tensor:
    """Bucket ids (skip + h*w, skip + h*w) of the product method; the cls row and
    column (``skip`` = 1) use the extra bucket ``num_buckets(ratio)``."""
    alpha, beta, gamma = ratio, 2 * ratio, 8 * ratio
    b = int(beta)
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    dr = piecewise_index(rows[:, None] - rows[None, :], alpha, beta, gamma) + b
    dc = piecewise_index(cols[:, None] - cols[None, :], alpha, beta, gamma) + b
    ids = dr * (2 * b + 1) + dc
    if skip:
        full = torch.full((skip + ids.shape[0],) * 2, (2 * b + 1) ** 2, dtype=torch.long)
        full[skip:, skip:] = ids
        ids = full
    return ids


def num_buckets(ratio: float = IRPE_RATIO, skip: int = 1) -> int:
    return (2 * int(2 * ratio) + 1) ** 2 + skip


class ContextualRPE(nn.Module):
    """Contextual product iRPE on keys: bias (B, H, L, L) from queries (B, H, L, d)."""

    def __init__(self, head_dim: int, skip: int = 1, ratio: float = IRPE_RATIO):
        super().__init__()
        self.skip, self.ratio = skip, ratio
        # (heads=1 shared, head_dim, buckets), zero init as iRPE's default initializer.
        self.lookup_table_weight = nn.Parameter(torch.zeros(1, head_dim, num_buckets(ratio, skip)))

    def forward(self, q: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """q: (B, H, L, d) with L = skip + h*w -> bias (B, H, L, L), ``q_i . r[b(i, j)]``."""
        ids = product_buckets(grid[0], grid[1], self.skip, self.ratio).to(q.device)
        table = q @ self.lookup_table_weight.to(q.dtype)  # (B, H, L, buckets)
        index = ids.expand(*q.shape[:2], *ids.shape)
        return torch.gather(table, -1, index)


def token_grid(num_tokens: int, skip: int = 1) -> tuple[int, int]:
    """The square grid of a sequence of ``skip`` + h*w tokens (as iRPE infers it)."""
    side = math.isqrt(num_tokens - skip)
    if side * side != num_tokens - skip:
        raise ValueError(
            f"relative position attention needs a square token grid; got {num_tokens} tokens "
            f"({skip} prefix): use a square image size"
        )
    return side, side


class IRPEAttention(Attention):
    """timm's ``Attention`` plus the LoMaR iRPE bias on keys.

    Scores are ``(q k^T) * scale + q . r`` with the unscaled query in the second term, as
    LoMaR's official attention; the bias goes to ``scaled_dot_product_attention`` as
    an additive float mask, so the fused kernels still run.
    """

    def __init__(self, dim: int, num_heads: int = 8, **kwargs):
        super().__init__(dim, num_heads=num_heads, **kwargs)
        self.rpe_k = ContextualRPE(dim // num_heads)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, **_) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        bias = self.rpe_k(q, token_grid(N, self.rpe_k.skip))
        if attn_mask is not None:
            bias = bias + attn_mask
        # torch.export's decomposition of SDPA with a float mask mislabels output strides
        # (ONNX export fails on the reshape below), so exports take the explicit path.
        fused = self.fused_attn and not torch.compiler.is_exporting()
        drop = self.attn_drop.p if self.training else 0.0
        x = attention(q, k, v, self.scale, bias, drop, fused)
        x = self.norm(x.transpose(1, 2).reshape(B, N, self.attn_dim))
        return self.proj_drop(self.proj(x))
