"""What a backbone learned, on a few images: ``mimkit inspect`` and ``mimkit.inspect(...)``.

    pictures = mimkit.inspect("runs/demo/checkpoint-last.pth", images=["cat.jpg"],
                              data="cifar/", out="runs/demo")
    pictures["attention"], pictures["features"], pictures["neighbors"]   # PIL images

- ``attention``: the [CLS] attention of one block (``block``, default the last), every
  head and their mean, over each image (transformers only);
- ``features``: the patch features' first three principal components as RGB (DINOv2's
  picture, background thresholded) and their k-means clusters;
- ``neighbors`` (with ``data``): the ``neighbors`` nearest training images of each query
  by cosine similarity of the pooled features (the kNN protocol's features, cached with
  the same key, so a kNN run's cache serves here and back), framed green when the class
  matches the query's.

Any backbone mimkit reads: a mimkit pretraining checkpoint (MAE, LoMaR, iBOT, SimMIM: its
encoder; a student/teacher file gives ``network``, teacher by default), an official
MAE / iBOT / SimMIM file, a Hugging Face folder, a fine-tuned checkpoint, or
``model='timm:NAME'`` (weights from ``checkpoint``, random without one).

Public functions: ``inspect``, ``load_encoder``, ``open_gallery``, ``gallery_features``,
``nearest_images``, ``neighbor_picture``, ``write_pictures``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..data import ImageSource, eval_transform, folder_source, open_splits
from ..data.images import open_rgb
from ..data.sources import collect_images
from ..engine import precision as precision_lib
from ..errors import UserError
from ..eval.features import (
    cached_extract,
    checkpoint_identity,
    encode,
    extract,
    set_pool,
    source_identity,
)
from ..interop.checkpoint import model_from_checkpoint
from ..models import create_encoder, preprocessing
from ..models.timm_backbone import create_timm, is_timm_name
from ..utils import distributed as dist
from ..utils.cache import cache_root
from ..viz.backbone import backbone_pictures
from ..viz.grid import ImageLike, load_images
from ..viz.neighbors import draw_neighbors

log = logging.getLogger("mimkit")


def load_encoder(
    checkpoint: str | Path | None = None,
    model: str | None = None,
    network: str = "teacher",
    trust: bool = False,
    img_size: int | None = None,
) -> nn.Module:
    """The backbone to look at, in eval mode on the CPU: ``model='timm:NAME'`` builds that
    timm model (weights from ``checkpoint``, random init without); else the encoder of
    ``checkpoint`` (any file or folder ``interop.checkpoint`` reads); ``checkpoint='none'``
    with a mimkit ``model`` name gives a random-init encoder (a baseline picture)."""
    overrides = {"img_size": img_size} if img_size else {}
    none = checkpoint in (None, "", "none")
    if is_timm_name(model):
        encoder = create_timm(model, None if none else checkpoint, num_classes=0, **overrides)
    elif none:
        if not model:
            raise UserError(
                "no backbone given: pass --checkpoint CKPT (checkpoint= in Python), or "
                "--model timm:NAME, or --checkpoint none --model NAME for a random init"
            )
        encoder = create_encoder(model, **overrides)
    else:
        encoder, _ = model_from_checkpoint(  # (it logs what it loaded)
            checkpoint, kind="encoder", trust=trust, network=network, **overrides
        )
    return encoder.eval()


# ----------------------------------------------------------------------------- neighbours


@dataclass
class Gallery:
    """The images neighbours are searched in (``source``: the training split or the
    folder), the val split for default queries (None for a plain folder), class names."""

    source: ImageSource
    val: ImageSource | None
    classes: list[str]


def open_gallery(data: str | Path) -> Gallery:
    """``ROOT`` with train/ and val/ (or test/) class folders, a ``hf:`` dataset (its
    train split), or a folder of images (class subfolders give labels)."""
    root = Path(str(data))
    labeled = not root.is_dir() or (root / "train").is_dir()
    if labeled:
        splits = open_splits(str(data))
        return Gallery(splits.train, splits.val, list(splits.classes))
    source = folder_source(root)
    return Gallery(source, None, list(source.classes))


def _entry(source: ImageSource, i: int) -> ImageLike:
    """A source entry as something the pictures open: its path, or the decoded image of
    a table row."""
    return source.paths[i] if source.reader is None else open_rgb(source.read(i))


class _Entries(Sequence):
    """Gallery images by index, opened only when drawn (the gallery may be large)."""

    def __init__(self, source: ImageSource, index: list[int]):
        self.source, self.index = source, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):
        return _entry(self.source, self.index[i])


def default_queries(gallery: Gallery, n: int) -> tuple[list[ImageLike], list[int | None]]:
    """``n`` queries spread evenly over the val split (else over the gallery), with labels."""
    source = gallery.val or gallery.source
    step = max(1, len(source) // n)
    picks = list(range(0, len(source), step))[:n]
    labels = [source.labels[i] if source.labels else None for i in picks]
    return [_entry(source, i) for i in picks], labels


def _label_of(gallery: Gallery, query: ImageLike) -> int | None:
    """A query file's class when it is one of the data's files (else unknown)."""
    if not isinstance(query, (str, Path)):
        return None
    target = os.path.abspath(query)  # abspath, not resolve: no file system call per path
    for source in (gallery.val, gallery.source):
        if source is None or source.labels is None or source.reader is not None:
            continue
        for p, label in zip(source.paths, source.labels):
            if os.path.abspath(p) == target:
                return label
    return None


def gallery_features(
    encoder: nn.Module,
    gallery: Gallery,
    checkpoint: str | Path | None,
    network: str,
    pool: str,
    device: torch.device,
    precision: str,
    batch_size: int = 128,
    num_workers: int = 2,
    cache: bool = True,
) -> dict:
    """The pooled features of every gallery image (``eval.features.extract``), cached under
    the key a kNN run uses for the same checkpoint, data, transform, pool and precision."""
    transform = eval_transform(**preprocessing(encoder))
    random_init = checkpoint in (None, "", "none")
    key = {
        **checkpoint_identity(None if random_init else str(checkpoint)),
        "model": encoder.arch_config()
        if hasattr(encoder, "arch_config")
        else type(encoder).__name__,
        "seed": None,
        "data": source_identity(gallery.source),
        "transform": repr(transform),
        "pool": pool,
        "precision": precision,
        **({"network": network} if network != "teacher" else {}),
    }
    cache_dir = cache_root() / "features" if cache and not random_init else None
    return cached_extract(
        cache_dir,
        key,
        lambda: extract(
            encoder,
            gallery.source,
            transform,
            batch_size,
            num_workers,
            device,
            precision,
            desc="gallery features",
        ),
    )


@torch.no_grad()
def nearest_images(
    encoder: nn.Module,
    features: dict,
    queries: Sequence[ImageLike],
    k: int,
    device: torch.device,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarity (Q, k) and index (Q, k) into ``features['paths']`` of each
    query's ``k`` nearest gallery images, best first; a query that is itself a gallery
    file is not its own neighbour (its copy elsewhere is)."""
    batch, _ = load_images(queries, **preprocessing(encoder))
    with precision_lib.autocast(precision, device):
        q = encode(encoder, batch.to(device)).float().cpu()
    g = features["features"].float()
    sims = F.normalize(q, dim=-1) @ F.normalize(g, dim=-1).T
    position = {os.path.abspath(p): i for i, p in enumerate(features["paths"])}
    for row, query in enumerate(queries):
        if isinstance(query, (str, Path)) and os.path.abspath(query) in position:
            sims[row, position[os.path.abspath(query)]] = float("-inf")
    return sims.topk(min(k, len(g)), dim=-1)


def neighbor_picture(
    encoder: nn.Module,
    features: dict,
    gallery: Gallery,
    queries: Sequence[ImageLike],
    query_labels: Sequence[int | None],
    k: int,
    device: torch.device,
    precision: str = "fp32",
    tile: int = 96,
) -> Image.Image:
    """Each query's ``k`` nearest gallery images (``features`` from ``gallery_features``),
    framed green (the query's class) or red (another)."""
    sim, idx = nearest_images(encoder, features, queries, k, device, precision)
    index_of = {p: i for i, p in enumerate(gallery.source.paths)}
    images = _Entries(gallery.source, [index_of[p] for p in features["paths"]])
    labels = [-1 if label is None else label for label in query_labels]
    return draw_neighbors(
        queries, images, sim, idx, labels, features["labels"], gallery.classes, tile
    )


# ----------------------------------------------------------------------------- inspect


def _queries(images, gallery: Gallery | None, n: int) -> tuple[list[ImageLike], list]:
    if images is None or (isinstance(images, (list, tuple)) and not images):
        if gallery is None:
            raise UserError(
                "no images given: pass --images FILE|DIR ... (images= in Python), or --data "
                "ROOT to take a few of its val images"
            )
        return default_queries(gallery, n)
    if isinstance(images, (str, Path, Image.Image)):
        images = [images]
    pil = [i for i in images if isinstance(i, Image.Image)]
    files = collect_images([str(i) for i in images if not isinstance(i, Image.Image)], n)
    chosen = (pil + files)[:n]
    labels = [_label_of(gallery, q) if gallery else None for q in chosen]
    return chosen, labels


def write_pictures(pictures: dict[str, Image.Image], out: str | Path) -> list[Path]:
    """``out/<kind>.png`` for each picture (rank 0); returns the paths."""
    folder = Path(out)
    written = []
    if dist.is_main():
        folder.mkdir(parents=True, exist_ok=True)
        for kind, picture in pictures.items():
            path = folder / f"{kind}.png"
            picture.save(path)
            written.append(path)
    return written


def inspect(
    checkpoint: str | Path | None = None,
    images: Sequence[ImageLike] | ImageLike | None = None,
    out: str | Path | None = None,
    *,
    model: str | None = None,
    network: str = "teacher",
    block: int = -1,
    clusters: int = 5,
    data: str | Path | None = None,
    neighbors: int = 5,
    num_images: int = 4,
    pool: str = "cls",
    img_size: int | None = None,
    threshold: float | None = 0.5,
    seed: int = 0,
    device: str = "auto",
    trust: bool = False,
    batch_size: int = 128,
    num_workers: int = 2,
    cache: bool = True,
) -> dict[str, Image.Image]:
    """The backbone's pictures (see the module) as ``{kind: PIL image}``; with ``out`` (a
    folder) also ``out/attention.png``, ``out/features.png`` and ``out/neighbors.png``.

    images: files, folders (``num_images`` spread over each) or PIL images; default a
    few of ``data``'s val images. data: ROOT with train/ and val/ class folders, or a
    folder, for the neighbours. block: the attention block (negative from the end).
    clusters: k of k-means. threshold: the PCA background cut (None keeps every patch).
    pool: the neighbours' features ('cls' or 'avg', as kNN)."""
    dev = dist.resolve_device(device)
    gallery = open_gallery(data) if data else None
    queries, labels = _queries(images, gallery, num_images)  # bad input before the model
    encoder = load_encoder(checkpoint, model, network, trust, img_size).to(dev)
    pictures = backbone_pictures(encoder, queries, block, clusters, seed, threshold, device=dev)
    if gallery is not None:
        set_pool(encoder, pool)
        precision = precision_lib.resolve("auto", dev)
        feats = gallery_features(
            encoder, gallery, checkpoint, network, pool, dev, precision, batch_size,
            num_workers, cache,
        )  # fmt: skip
        pictures["neighbors"] = neighbor_picture(
            encoder, feats, gallery, queries, labels, neighbors, dev, precision
        )
    if out is not None:
        written = write_pictures(pictures, out)
        log.info("wrote %s", ", ".join(map(str, written)))
    return pictures
