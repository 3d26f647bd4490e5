"""Patchify and masking as pure functions, with the official MAE conventions.

Patch order: (N, 3, H, W) -> (N, 3, h, p, w, p) -> (N, h, w, p, p, 3) -> (N, h*w, p*p*3).
Masking: uniform noise (N, L), ascending argsort, the first ``int(L * (1 - ratio))`` are kept;
``ids_restore = argsort(ids_shuffle)``; ``mask`` is 1 for removed patches.
"""

from __future__ import annotations

import math
import random
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


# ---------------------------------------------------------------------------- LoMaR windows


class Windows(NamedTuple):
    """Which image and which patches each window sequence holds (LoMaR).

    S = number of sequences (N * num_window), K = window * window patches.
    """

    image: torch.Tensor  # (S,) index of the image the sequence is cut from
    corner: torch.Tensor  # (S, 2) top-left patch (row, col) of the window
    patches: torch.Tensor  # (S, K) flat patch indices in the image grid, row-major
    mask: torch.Tensor  # (S, K) 0 keep, 1 masked (replaced by the mask token)


def _distinct_positions(n: int, m: int, positions: int, device) -> torch.Tensor:
    """(n, m) positions in [0, positions): distinct per row when possible (as the
    official ``randperm(...)[:m]``), else drawn with replacement."""
    if positions >= m:
        return torch.argsort(torch.rand(n, positions, device=device), dim=1)[:, :m]
    return torch.randint(0, positions, (n, m), device=device)


def sample_windows(
    n: int, num_window: int, grid: tuple[int, int], window: int, device=None
) -> torch.Tensor:
    """Independent random window corners per image: (N, num_window, 2) as (row, col).

    Each image gets its own windows; within an image, rows (and columns) are distinct
    when the grid leaves room, as the official sampling. Every window lies inside the grid.
    """
    h, w = grid
    if window > h or window > w:
        raise ValueError(f"window {window} does not fit the {h}x{w} patch grid")
    rows = _distinct_positions(n, num_window, h - window + 1, device)
    cols = _distinct_positions(n, num_window, w - window + 1, device)
    return torch.stack([rows, cols], dim=-1)


def window_patch_indices(corner: torch.Tensor, window: int, grid_w: int) -> torch.Tensor:
    """corner: (..., 2) -> flat patch indices (..., window*window), row-major."""
    r = torch.arange(window, device=corner.device)
    offsets = (r[:, None] * grid_w + r[None, :]).flatten()  # (K,)
    base = corner[..., 0] * grid_w + corner[..., 1]
    return base.unsqueeze(-1) + offsets


def window_masking(noise: torch.Tensor, mask_ratio: float) -> torch.Tensor:
    """noise: (S, K) uniform -> mask (S, K) with exactly ``int(K * mask_ratio)`` ones per
    row: the smallest noise values are masked, as LoMaR's official sampling."""
    s, k = noise.shape
    n_mask = int(k * mask_ratio)
    if n_mask < 1:
        raise ValueError(f"mask_ratio {mask_ratio} masks no patch of a {k}-patch window")
    ranks = torch.argsort(torch.argsort(noise, dim=1), dim=1)
    return (ranks < n_mask).to(noise.dtype)


def sample_window_masks(
    n: int,
    grid: tuple[int, int],
    window: int,
    num_window: int,
    mask_ratio: float,
    device=None,
    pairing: str = "per_image",
    corners: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> Windows:
    """Sample LoMaR's windows and their masks for a batch of ``n`` images.

    ``pairing='per_image'``: sequence j = image j // num_window, each image with its own
    ``num_window`` windows (corners (N, M, 2)). ``pairing='official'``: as the official
    code, one set of M windows for the whole batch and sequence j pairs image j % N with
    window j % M (for N divisible by M an image sees one window M times, with M masks).
    ``corners`` and ``noise`` (S, K) fix the sampling (tests, visualisation).
    """
    m = num_window
    if pairing == "per_image":
        if corners is None:
            corners = sample_windows(n, m, grid, window, device)
        image = torch.arange(n, device=corners.device).repeat_interleave(m)
        corner = corners.reshape(n * m, 2)
    elif pairing == "official":
        if corners is None:
            corners = sample_windows(1, m, grid, window, device)[0]
        j = torch.arange(n * m, device=corners.device)
        image, corner = j % n, corners.reshape(m, 2)[j % m]
    else:
        raise ValueError(f"pairing must be 'per_image' or 'official', got {pairing!r}")
    patches = window_patch_indices(corner, window, grid[1])
    if noise is None:
        noise = torch.rand(patches.shape, device=patches.device)
    return Windows(image, corner, patches, window_masking(noise, mask_ratio))


# ---------------------------------------------------------------------------- iBOT / BEiT blocks


def block_mask(
    height: int,
    width: int,
    ratio: float,
    rng=None,
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
    attempts: int = 10,
) -> torch.Tensor:
    """BEiT's block-wise mask as iBOT's ``ImageFolderMask`` draws it: (h, w) bool, True =
    masked, about ``ratio * h * w`` patches as a union of rectangles.

    Rectangles of area U(min(h, w) // 3) ** 2, remaining) and log-uniform aspect ratio are
    added while they cover at least one new patch without exceeding the target (10
    attempts each). ``rng``: a ``random.Random`` (default: the global ``random``, which
    ``data.datasets.seeded`` seeds per sample); the draws follow the official order.
    """
    rng = rng if rng is not None else random
    mask = torch.zeros(height, width, dtype=torch.bool)
    high = ratio * height * width
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    low = (min(height, width) // 3) ** 2
    count = 0
    while count < high:
        budget = high - count
        delta = 0
        for _ in range(attempts):
            area = rng.uniform(low, budget)
            ar = math.exp(rng.uniform(*log_aspect))
            h = int(round(math.sqrt(area * ar)))
            w = int(round(math.sqrt(area / ar)))
            if w < width and h < height:
                top = rng.randint(0, height - h)
                left = rng.randint(0, width - w)
                region = mask[top : top + h, left : left + w]
                new = h * w - int(region.sum())
                if 0 < new <= budget:
                    region.fill_(True)
                    delta += new
            if delta > 0:
                break
        if delta == 0:
            break
        count += delta
    return mask


def draw_pred_ratio(pred_ratio, pred_ratio_var=0.0, rng=None) -> float:
    """iBOT's per-crop masking ratio (``ImageFolderMask.get_pred_ratio``).

    Scalars: U(r - v, r + v) (or r when v is 0). Lists: one U(r_i - v_i, r_i + v_i) per
    entry, then one picked at random; e.g. ``[0, 0.3]`` / ``[0, 0.2]`` leaves a crop
    unmasked or masks U(0.1, 0.5) of it, half and half.
    """
    rng = rng if rng is not None else random
    if isinstance(pred_ratio, (int, float)):
        pred_ratio, pred_ratio_var = [pred_ratio], [pred_ratio_var]
    if isinstance(pred_ratio_var, (int, float)):
        pred_ratio_var = [pred_ratio_var] * len(pred_ratio)
    ratios = []
    for r, v in zip(pred_ratio, pred_ratio_var):
        if v > r:
            raise ValueError(f"pred_ratio_var {v} exceeds pred_ratio {r}")
        ratios.append(rng.uniform(r - v, r + v) if v > 0 else r)
    return ratios[0] if len(ratios) == 1 else rng.choice(ratios)


# ---------------------------------------------------------------------------- coarse random grid


def coarse_grid_mask(
    img_size: int,
    mask_patch_size: int,
    model_patch_size: int,
    ratio: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SimMIM's ``MaskGenerator``: (g, g) int, 1 = masked, g = img_size / model_patch_size.

    The image is cut into (img_size / mask_patch_size)^2 square cells; ``ceil(cells *
    ratio)`` of them, drawn at random, are masked, each covering (mask_patch_size /
    model_patch_size)^2 model patches (32 px cells on 16 px patches for ViT-B/16).
    Drawn with torch's generator (the global one, seeded per sample by the loader).
    """
    if img_size % mask_patch_size or mask_patch_size % model_patch_size:
        raise ValueError(
            f"image size {img_size} must be a multiple of the mask patch size "
            f"{mask_patch_size}, which must be a multiple of the patch size {model_patch_size}"
        )
    cells = img_size // mask_patch_size
    scale = mask_patch_size // model_patch_size
    count = int(math.ceil(cells * cells * ratio))
    mask = torch.zeros(cells * cells, dtype=torch.long)
    mask[torch.randperm(cells * cells, generator=generator)[:count]] = 1
    mask = mask.reshape(cells, cells)
    return mask.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
