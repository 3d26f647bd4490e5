"""Patchify and masking as pure functions, with the official MAE conventions.

Patch order: (N, 3, H, W) -> (N, 3, h, p, w, p) -> (N, h, w, p, p, 3) -> (N, h*w, p*p*3).
Masking: uniform noise (N, L), ascending argsort, the first ``int(L * (1 - ratio))`` are kept;
``ids_restore = argsort(ids_shuffle)``; ``mask`` is 1 for removed patches.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Masking(NamedTuple):
    ids_keep: torch.Tensor  # (N, L_keep) indices of visible patches, in shuffled order
    ids_restore: torch.Tensor  # (N, L) inverse permutation of the shuffle
    mask: torch.Tensor  # (N, L) 0 keep, 1 remove


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """imgs: (N, C, H, W) -> (N, L, p*p*C)"""
    n, c, h, w = imgs.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by patch size {p}")
    x = imgs.reshape(n, c, h // p, p, w // p, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(
    x: torch.Tensor, patch_size: int, grid: tuple[int, int] | None = None
) -> torch.Tensor:
    """x: (N, L, p*p*C) -> (N, C, H, W); a square grid unless ``grid`` = (h, w) is given."""
    n, length, dim = x.shape
    p = patch_size
    c = dim // (p * p)
    if grid is None:
        h = w = int(round(length**0.5))
    else:
        h, w = grid
    if h * w != length or c * p * p != dim:
        raise ValueError(f"cannot unpatchify {tuple(x.shape)} with patch {p} and grid {h}x{w}")
    x = x.reshape(n, h, w, p, p, c)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(n, c, h * p, w * p)


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """How many patches stay visible; ``int`` truncation as the official code."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return int(num_patches * (1 - mask_ratio))


def random_masking(noise: torch.Tensor, mask_ratio: float) -> Masking:
    """Per-sample random masking decided by ``noise``: (N, L) -> Masking.

    Small noise is kept. Passing the same noise reproduces the same mask as the
    official code, which draws ``torch.rand(N, L)``.
    """
    n, length = noise.shape
    len_keep = num_kept(length, mask_ratio)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    mask = torch.ones(n, length, device=noise.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    return Masking(ids_keep, ids_restore, mask)


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x: (N, L, D), ids: (N, K) -> (N, K, D)"""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def restore_with_tokens(visible: torch.Tensor, fill: torch.Tensor, ids_restore: torch.Tensor):
    """Put visible tokens back in image order, ``fill`` (1, 1, D) everywhere else.

    visible: (N, L_keep, D), ids_restore: (N, L) -> (N, L, D)
    """
    n, keep, d = visible.shape
    length = ids_restore.shape[1]
    x = torch.cat([visible, fill.expand(n, length - keep, d).to(visible.dtype)], dim=1)
    return gather_tokens(x, ids_restore)


def normalize_patches(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch normalisation of pixel targets (norm_pix_loss): (N, L, D) -> (N, L, D).

    Unbiased variance, as the official code (``Tensor.var`` default).
    """
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps) ** 0.5


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error per patch, averaged over removed patches only.

    pred, target: (N, L, D); mask: (N, L), 1 = removed. Returns a scalar.
    """
    loss = (pred.float() - target.float()).pow(2).mean(dim=-1)
    return (loss * mask).sum() / mask.sum()
