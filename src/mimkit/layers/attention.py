"""The attention product, SDPA where it is the fast kernel: timm's ``Attention`` with
that one choice added (timm picks SDPA or not once, at construction).

On a CPU in bf16 (autocast or bf16 tensors) PyTorch's SDPA kernels are several times
slower than the explicit ``softmax(q k^T * scale) v``, whose batched matmuls oneDNN runs
on AMX / AVX512-BF16: forward + backward of MAE's attention shapes took 2-6x less time
explicit (ViT-B/16 encoder (8, 12, 50, 64): 3.3 vs 14.0 ms; CIFAR decoder
(128, 3, 65, 64): 14.7 vs 83.4 ms; Xeon with AMX, 2 threads, torch 2.14;
benchmarks/cpu_kernels.py). In fp32 SDPA is the faster one (1.2x), and on GPUs it is
always used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Attention as _TimmAttention


def _cpu_autocast_dtype() -> torch.dtype | None:
    try:
        on = torch.is_autocast_enabled("cpu")
        return torch.get_autocast_dtype("cpu") if on else None
    except TypeError:  # torch < 2.4
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None


def sdpa_is_fast(x: torch.Tensor) -> bool:
    """False on a CPU in bf16, where the explicit product is faster (see the module)."""
    if x.device.type != "cpu":
        return True
    return not (x.dtype == torch.bfloat16 or _cpu_autocast_dtype() == torch.bfloat16)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    fused: bool = True,
) -> torch.Tensor:
    """softmax(q k^T * scale + attn_mask) v with dropout on the weights.

    q, k, v: (B, heads, N, d); attn_mask: additive, broadcast to (B, heads, N, N).
    ``fused`` False forces the explicit form (timm's ``fused_attn`` switch).
    """
    if fused and sdpa_is_fast(q):
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale
        )
    attn = (q * scale) @ k.transpose(-2, -1)
    if attn_mask is not None:
        attn = attn + attn_mask
    attn = attn.softmax(dim=-1)
    if dropout_p:
        attn = F.dropout(attn, dropout_p)
    return attn @ v


class Attention(_TimmAttention):
    """timm's ``Attention`` (same parameters and names) computing the product with
    ``attention``: SDPA, or the explicit form on a CPU in bf16."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, **_) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        drop = self.attn_drop.p if self.training else 0.0
        x = attention(q, k, v, self.scale, attn_mask, drop, self.fused_attn)
        x = self.norm(x.transpose(1, 2).reshape(B, N, self.attn_dim))
        return self.proj_drop(self.proj(x))
