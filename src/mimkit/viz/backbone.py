"""What a backbone learned, drawn on a few images: the pictures ``mimkit inspect`` writes
and ``mimkit report`` puts side by side for every run.

- ``backbone_pictures(model, sources, block=-1, clusters=5, ...) -> {kind: PIL.Image}``:
  ``'attention'`` ([CLS] attention of one block, every head and their mean; transformers
  only) and ``'features'`` (PCA colours and k-means clusters of the patch features), on
  the same crops: the images go through the model's own evaluation transform
  (``models.preprocessing``: size, mean/std, crop), so a 224 px timm ViT and a 32 px
  CIFAR encoder each see what they were built for, and the rows show those crops.

``PICTURE_KINDS`` names the kinds (also the PNG file names ``inspect`` writes).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from ..models import preprocessing
from .attention import attention_figure
from .features import feature_figure
from .grid import ImageLike, load_images

log = logging.getLogger("mimkit")

PICTURE_KINDS = ("attention", "features", "neighbors")


def image_names(sources: Sequence[ImageLike]) -> list[str]:
    """Short row titles: a file's folder and name without suffix ('cat/0001'; '' for PIL
    images), the folder being the class in the usual layouts."""
    return [
        f"{Path(s).parent.name}/{Path(s).stem}"[-18:] if isinstance(s, (str, Path)) else ""
        for s in sources
    ]


def has_attention(model: nn.Module) -> bool:
    """A transformer with blocks (ConvMixer and CNNs have no [CLS] attention to draw)."""
    blocks = getattr(model, "blocks", None)
    return blocks is not None and len(blocks) > 0 and hasattr(blocks[0], "attn")


@torch.no_grad()
def backbone_pictures(
    model: nn.Module,
    sources: Sequence[ImageLike],
    block: int = -1,
    clusters: int = 5,
    seed: int = 0,
    threshold: float | None = 0.5,
    tile: int = 128,
    device: torch.device | str | None = None,
) -> dict[str, Image.Image]:
    """sources: image files or PIL images -> {'attention': picture, 'features': picture}
    ('attention' only for transformers). The model runs on ``device`` (default: where its
    weights are), in float32 and eval mode."""
    if not sources:
        raise ValueError("no images to draw")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    batch, display = load_images(sources, **preprocessing(model))
    batch = batch.to(device)
    names = image_names(sources)
    pictures = {}
    if has_attention(model):
        pictures["attention"], _ = attention_figure(model, batch, display, block, names, tile)
    else:
        log.info("%s has no attention blocks: no attention picture", type(model).__name__)
    pictures["features"], _ = feature_figure(
        model, batch, display, k=clusters, seed=seed, threshold=threshold, names=names, tile=tile
    )
    return pictures
