"""What the patch features separate: their first three principal components as RGB
(DINOv2's picture) and a k-means clustering of them (a segmentation-like picture).

Public functions (explicit arguments; ``mimkit inspect`` calls them):

- ``patch_features(model, images) -> (N, h, w, D)``: ``forward_features`` tokens less
  the prefix tokens (``model.num_prefix_tokens`` where present); a (N, D, h, w) map
  (ConvMixer) is taken as it is.
- ``fit_pca(x, k=3) -> PCA``: mean (D,), components (k, D) orthonormal, variances (k,).
- ``pca_rgb(features, threshold=0.5) -> FeaturePCA``: DINOv2's recipe. A first PCA over
  all patches of the batch; its first component, min-max scaled to [0, 1], separates
  foreground from background (patches <= ``threshold`` are background, None keeps all);
  a second PCA on the foreground patches gives the three RGB channels, each min-max
  scaled over the foreground; background is black. The first component's sign is
  arbitrary, so it is turned so that the image borders (mostly background in object
  photos) score low.
- ``kmeans(x, k, seed=0, iters=100) -> KMeans``: Lloyd's algorithm from a seeded
  k-means++ start, in float64 (plain torch: a few thousand patches, no library needed);
  ``inertia`` holds the sum of squared distances after each assignment.
- ``draw_features(display, rgb, labels, names=(), tile=128) -> PIL.Image``: one row per
  image; columns image, PCA colours, clusters over the image.
- ``feature_figure(model, images, display=None, k=5, seed=0, threshold=0.5, names=(),
  tile=128) -> (PIL.Image, FeatureMaps)``: all of the above in one call.

``images``: ``(N, 3, H, W)`` normalised as the model expects; ``display`` the same crops
in [0, 1] (``viz.grid.load_images`` makes both).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .attention import patch_grid
from .grid import colormap, compose_grid, display_from_batch, to_hwc, upsample


@torch.no_grad()
def patch_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """images: (N, 3, H, W) -> patch features (N, h, w, D), float32 on the CPU (a few
    thousand vectors: PCA, k-means and drawing run there), computed in eval mode."""
    was_training = model.training
    model.eval()
    try:
        tokens = model.forward_features(images)
    finally:
        model.train(was_training)
    if tokens.ndim == 4:  # a convolutional map (N, D, h, w)
        return tokens.permute(0, 2, 3, 1).float().cpu()
    h, w = patch_grid(model, images)
    prefix = getattr(model, "num_prefix_tokens", tokens.shape[1] - h * w)
    if tokens.shape[1] - prefix != h * w:
        raise ValueError(f"{tokens.shape[1]} tokens less {prefix} prefix do not fill {h}x{w}")
    return tokens[:, prefix:].reshape(len(tokens), h, w, -1).float().cpu()


@dataclass
class PCA:
    """mean: (D,); components: (k, D), orthonormal rows; variances: (k,), decreasing."""

    mean: torch.Tensor
    components: torch.Tensor
    variances: torch.Tensor

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., D) -> (..., k) coordinates."""
        return (x - self.mean) @ self.components.T


def fit_pca(x: torch.Tensor, k: int = 3) -> PCA:
    """x: (M, D) -> the top-k principal axes by SVD (exact; M*D is small here)."""
    x = x.double()
    mean = x.mean(0)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    k = min(k, vh.shape[0])
    comps = vh[:k]
    # SVD signs are arbitrary: make each axis' largest loading positive, so reruns agree
    sign = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
    comps = comps * torch.where(sign == 0, 1.0, sign).to(comps.dtype)
    variances = s[:k] ** 2 / max(len(x) - 1, 1)
    return PCA(mean.float(), comps.float(), variances.float())


def _minmax(x: torch.Tensor, over: torch.Tensor | None = None) -> torch.Tensor:
    """Scale the last dim's channels to [0, 1] by the min/max of ``over`` (default x)."""
    ref = x if over is None else over
    lo, hi = ref.amin(0), ref.amax(0)
    return ((x - lo) / (hi - lo).clamp(min=1e-12)).clamp(0, 1)


def _border(h: int, w: int) -> torch.Tensor:
    edge = torch.zeros(h, w, dtype=torch.bool)
    edge[0], edge[-1], edge[:, 0], edge[:, -1] = True, True, True, True
    return edge


@dataclass
class FeaturePCA:
    """rgb: (N, h, w, 3) in [0, 1], background black; foreground: (N, h, w) bool;
    first: (N, h, w) the first component scaled to [0, 1] (background low); pca: the
    foreground fit behind ``rgb``."""

    rgb: torch.Tensor
    foreground: torch.Tensor
    first: torch.Tensor
    pca: PCA


def pca_rgb(features: torch.Tensor, threshold: float | None = 0.5) -> FeaturePCA:
    """features: (N, h, w, D) -> DINOv2's PCA picture (see the module)."""
    n, h, w, d = features.shape
    flat = features.reshape(-1, d).float()
    first = _minmax(fit_pca(flat, 1).transform(flat))[:, 0].reshape(n, h, w)
    if h > 2 and w > 2:
        edge = _border(h, w).to(first.device).expand(n, h, w)
        if first[edge].mean() > first[~edge].mean():
            first = 1 - first
    fg = first > threshold if threshold is not None else torch.ones_like(first, dtype=torch.bool)
    if fg.sum() < 3:  # nothing (or almost) above the threshold: colour every patch
        fg = torch.ones_like(fg)
    pca = fit_pca(flat[fg.reshape(-1)], 3)
    coords = pca.transform(flat)
    rgb = _minmax(coords, coords[fg.reshape(-1)])
    if rgb.shape[1] < 3:  # fewer than 3 feature dims
        rgb = F.pad(rgb, (0, 3 - rgb.shape[1]))
    rgb = rgb * fg.reshape(-1, 1)
    return FeaturePCA(rgb.reshape(n, h, w, 3), fg, first, pca)


@dataclass
class KMeans:
    """centers: (k, D); labels: (M,) long; inertia: squared distances summed, one value
    per assignment step (non-increasing)."""

    centers: torch.Tensor
    labels: torch.Tensor
    inertia: list[float]


def _sq_dist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """x: (M, D), c: (k, D) -> (M, k) squared distances (float64, clamped at 0)."""
    return ((x * x).sum(1, keepdim=True) - 2 * x @ c.T + (c * c).sum(1)).clamp(min=0)


def _kmeans_pp(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each next centre drawn with probability ~ squared distance."""
    centers = [x[torch.randint(len(x), (1,), generator=gen)].squeeze(0)]
    for _ in range(1, k):
        d = _sq_dist(x, torch.stack(centers)).amin(1)
        if d.sum() <= 0:  # fewer distinct points than k: repeat one
            centers.append(centers[-1])
            continue
        centers.append(x[torch.multinomial(d / d.sum(), 1, generator=gen)].squeeze(0))
    return torch.stack(centers)


def kmeans(x: torch.Tensor, k: int, seed: int = 0, iters: int = 100, tol: float = 1e-7) -> KMeans:
    """x: (M, D) -> k clusters. Deterministic for a seed (its own generator, CPU)."""
    if not 1 <= k <= len(x):
        raise ValueError(f"k must be in [1, {len(x)}] (the number of points), got {k}")
    x = x.detach().double().cpu()
    gen = torch.Generator().manual_seed(seed)
    centers = _kmeans_pp(x, k, gen)
    inertia: list[float] = []
    for _ in range(iters):
        dist, labels = _sq_dist(x, centers).min(1)
        inertia.append(dist.sum().item())
        if len(inertia) > 1 and inertia[-2] - inertia[-1] <= tol * inertia[-2]:
            break
        counts = torch.bincount(labels, minlength=k).unsqueeze(1)
        sums = torch.zeros_like(centers).index_add_(0, labels, x)
        # an empty cluster keeps its centre: it holds no point, so the inertia cannot rise
        centers = torch.where(counts > 0, sums / counts.clamp(min=1), centers)
    return KMeans(centers.float(), labels, inertia)


def cluster_patches(
    features: torch.Tensor, k: int = 5, seed: int = 0, normalize: bool = True
) -> torch.Tensor:
    """features: (N, h, w, D) -> cluster ids (N, h, w); L2-normalised first by default
    (cosine geometry, as the features are compared in kNN)."""
    n, h, w, d = features.shape
    flat = features.reshape(-1, d)
    if normalize:
        flat = F.normalize(flat, dim=-1)
    return kmeans(flat, min(k, len(flat)), seed).labels.reshape(n, h, w)


def _palette(k: int) -> np.ndarray:
    """(k, 3) distinct colours in [0, 1] (tab10, tab20, then a hue ramp)."""
    if k <= 10:
        return colormap(np.arange(k) / 9.999, "tab10")[:k]
    if k <= 20:
        return colormap(np.arange(k) / 19.999, "tab20")[:k]
    return colormap(np.arange(k) / (k - 1), "hsv")


def draw_features(
    display: torch.Tensor,
    rgb: torch.Tensor,
    labels: torch.Tensor,
    names: Sequence[str] = (),
    tile: int = 128,
    alpha: float = 0.65,
) -> Image.Image:
    """display: (N, 3, H, W) in [0, 1]; rgb: (N, h, w, 3); labels: (N, h, w) -> the grid
    (columns: image, PCA colours, clusters over the image)."""
    size = tuple(display.shape[-2:])
    rgb, labels = rgb.cpu(), labels.cpu()
    colours = upsample(rgb.permute(0, 3, 1, 2), size).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    ids = upsample(labels[:, None].float(), size, "nearest")[:, 0].long().numpy()
    palette = _palette(int(labels.max()) + 1)
    rows = []
    for i in range(len(display)):
        image = to_hwc(display[i])
        clusters = (1 - alpha) * image + alpha * palette[ids[i]]
        rows.append([image, colours[i], clusters])
    k = int(labels.max()) + 1
    return compose_grid(rows, ["image", "PCA (3 comps)", f"k-means (k={k})"], names, tile=tile)


@dataclass
class FeatureMaps:
    """features: (N, h, w, D); pca: the RGB picture's data; labels: (N, h, w) clusters."""

    features: torch.Tensor
    pca: FeaturePCA
    labels: torch.Tensor


def feature_figure(
    model: nn.Module,
    images: torch.Tensor,
    display: torch.Tensor | None = None,
    k: int = 5,
    seed: int = 0,
    threshold: float | None = 0.5,
    names: Sequence[str] = (),
    tile: int = 128,
) -> tuple[Image.Image, FeatureMaps]:
    """images: (N, 3, H, W) normalised -> (picture, FeatureMaps); PCA and k-means are fit
    over the whole batch, so colours and clusters mean the same in every row."""
    feats = patch_features(model, images)
    pca = pca_rgb(feats, threshold)
    labels = cluster_patches(feats, k, seed)
    shown = display if display is not None else display_from_batch(images)
    return draw_features(shown, pca.rgb, labels, names, tile), FeatureMaps(feats, pca, labels)
