"""Fixed 2-D sin-cos position embeddings as in MAE (MoCo v3 style).

Written here because timm's ``build_sincos2d_pos_embed`` orders the (h, w) halves and
frequencies differently; MAE checkpoints carry this exact layout in ``pos_embed``.
"""

from __future__ import annotations

import numpy as np
import torch


def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """pos: (M,) -> (M, dim): [sin(pos * w) | cos(pos * w)], w = 1 / 10000^(2i/dim)."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {dim}")
    omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def get_2d_sincos_pos_embed(
    embed_dim: int, grid_size: int | tuple[int, int], cls_token: bool = False
) -> torch.Tensor:
    """(h*w [+1], embed_dim) float32 tensor; the cls row (if any) is zeros.

    Half the channels encode the row index, half the column index, in MAE's order
    (the first half is driven by the w coordinate, as ``np.meshgrid(w, h)`` gives).
    """
    gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    grid_w, grid_h = np.meshgrid(np.arange(gw, dtype=np.float32), np.arange(gh, dtype=np.float32))
    if embed_dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a dimension divisible by 4, got {embed_dim}")
    emb = np.concatenate(
        [_sincos_1d(embed_dim // 2, grid_w), _sincos_1d(embed_dim // 2, grid_h)], axis=1
    )
    if cls_token:
        emb = np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)
    return torch.from_numpy(emb).float()
