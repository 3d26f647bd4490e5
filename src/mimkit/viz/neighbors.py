"""Nearest training images of a few queries by cosine similarity of frozen features.

Public functions (explicit arguments; ``mimkit inspect`` calls them with features from
``eval.features``, e.g. the cached train/val features of a kNN run):

- ``nearest_neighbors(queries, gallery, k=5) -> (similarity (Q, k), index (Q, k))``:
  cosine similarity, best first.
- ``draw_neighbors(query_images, gallery_images, similarity, index, query_labels=None,
  gallery_labels=None, class_names=None, tile=96) -> PIL.Image``: one row per query:
  the query, then its neighbours captioned with the similarity and, where labels exist,
  the class, framed green (same class as the query) or red (another class).
- ``neighbors_figure(query_features, gallery_features, query_images, gallery_images,
  k=5, query_labels=None, gallery_labels=None, class_names=None, tile=96)
  -> (PIL.Image, similarity, index)``: both in one call.

Images are file paths or PIL images; only the ``Q * (k + 1)`` shown are opened, so the
gallery may list every training file. Labels are class ids (named by ``class_names``) or
names; a negative id means unlabelled.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from .grid import GREEN, RED, ImageLike, compose_grid, open_image

Label = int | str


@torch.no_grad()
def nearest_neighbors(
    queries: torch.Tensor, gallery: torch.Tensor, k: int = 5
) -> tuple[torch.Tensor, torch.Tensor]:
    """queries: (Q, D), gallery: (G, D) -> similarity (Q, k') and index (Q, k') into the
    gallery, k' = min(k, G), highest similarity first."""
    q = F.normalize(queries.float(), dim=-1)
    g = F.normalize(gallery.float().to(q.device), dim=-1)
    return (q @ g.T).topk(min(k, len(g)), dim=-1)


def _name(label: Label | None, class_names: Sequence[str] | None) -> str:
    if label is None or (isinstance(label, int) and label < 0):
        return ""
    if isinstance(label, int) and class_names is not None and label < len(class_names):
        return class_names[label]
    return str(label)


def _square(src: ImageLike, tile: int) -> np.ndarray:
    """The centre square of an image at ``tile`` px -> (tile, tile, 3) in [0, 1]."""
    img = ImageOps.fit(open_image(src), (tile, tile), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 255.0


def _as_list(labels) -> list | None:
    if labels is None:
        return None
    return labels.tolist() if isinstance(labels, torch.Tensor) else list(labels)


def draw_neighbors(
    query_images: Sequence[ImageLike],
    gallery_images: Sequence[ImageLike],
    similarity: torch.Tensor,
    index: torch.Tensor,
    query_labels: Sequence[Label] | torch.Tensor | None = None,
    gallery_labels: Sequence[Label] | torch.Tensor | None = None,
    class_names: Sequence[str] | None = None,
    tile: int = 96,
) -> Image.Image:
    """similarity, index: (Q, k) from ``nearest_neighbors`` -> the grid (see the module)."""
    q_labels, g_labels = _as_list(query_labels), _as_list(gallery_labels)
    rows, captions, frames = [], [], []
    for r, (sims, ids) in enumerate(zip(similarity.tolist(), index.tolist())):
        q_name = _name(q_labels[r], class_names) if q_labels else ""
        row, caps, cols = [_square(query_images[r], tile)], [q_name], [None]
        for s, i in zip(sims, ids):
            g_name = _name(g_labels[i], class_names) if g_labels else ""
            row.append(_square(gallery_images[i], tile))
            caps.append(f"{s:.4f}" + (f"\n{g_name}" if g_name else ""))
            cols.append((GREEN if g_name == q_name else RED) if g_name and q_name else None)
        rows.append(row)
        captions.append(caps)
        frames.append(cols)
    titles = ["query"] + [f"#{j + 1}" for j in range(index.shape[1])]
    return compose_grid(rows, titles, captions=captions, frames=frames, tile=tile)


def neighbors_figure(
    query_features: torch.Tensor,
    gallery_features: torch.Tensor,
    query_images: Sequence[ImageLike],
    gallery_images: Sequence[ImageLike],
    k: int = 5,
    query_labels: Sequence[Label] | torch.Tensor | None = None,
    gallery_labels: Sequence[Label] | torch.Tensor | None = None,
    class_names: Sequence[str] | None = None,
    tile: int = 96,
) -> tuple[Image.Image, torch.Tensor, torch.Tensor]:
    """query_features: (Q, D), gallery_features: (G, D) -> (picture, similarity (Q, k),
    index (Q, k))."""
    if len(query_images) != len(query_features) or len(gallery_images) != len(gallery_features):
        raise ValueError(
            f"{len(query_images)} query images for {len(query_features)} features, "
            f"{len(gallery_images)} gallery images for {len(gallery_features)} features"
        )
    sims, idx = nearest_neighbors(query_features, gallery_features, k)
    picture = draw_neighbors(
        query_images,
        gallery_images,
        sims.cpu(),
        idx.cpu(),
        query_labels,
        gallery_labels,
        class_names,
        tile,
    )
    return picture, sims, idx
