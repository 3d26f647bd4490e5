"""Online evaluation while pretraining: the weighted kNN of the encoder's frozen features
on a small labeled monitor set, with its two floors drawn beside it: raw pixels (each
image at the model's input size, flattened and standardised per dimension with the
reference set's statistics) and the same encoder at its random initialisation (the run's
own step 0). Both floors are computed once, before training, with the same protocol.

The monitor set is a ``reference`` source (labeled images the kNN votes with) and a
``queries`` source (scored). ``holdout`` splits a labeled source into the images a run
may train on and a fixed, seeded share it never sees.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

import torch
from torch import nn

from ..data.sources import ImageSource
from ..errors import UserError
from ..models.pixels import RawPixels
from .features import extract, set_pool
from .knn import knn_scores

log = logging.getLogger("mimkit")


def subset(source: ImageSource, indices: list[int]) -> ImageSource:
    """The entries ``indices`` of a source, in that order (labels and reader kept)."""
    reader = source.reader
    labels = None if source.labels is None else [source.labels[i] for i in indices]
    return ImageSource(
        [source.paths[i] for i in indices],
        labels,
        list(source.classes),
        source.root,
        (lambda j, r=reader, idx=indices: r(idx[j])) if reader is not None else None,
    )


def holdout(source: ImageSource, fraction: float, seed: int) -> tuple[ImageSource, ImageSource]:
    """(train, held out): a seeded ``fraction`` of a labeled source, never trained on."""
    if source.labels is None:
        raise UserError(
            f"{source.root or 'the data'} has no labels (class subfolders) to monitor with: "
            "give a labeled --data, or a labeled --monitor-data ROOT (eval.monitor_data)"
        )
    if not 0.0 < fraction < 1.0:
        raise UserError(f"eval.monitor_holdout must be in (0, 1), got {fraction}")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(source), generator=g).tolist()
    n_out = max(1, int(round(len(source) * fraction)))
    out, keep = sorted(order[:n_out]), sorted(order[n_out:])
    return subset(source, keep), subset(source, out)


def sample(source: ImageSource, n: int, seed: int) -> ImageSource:
    """At most ``n`` entries of a source, a seeded draw (the same every run)."""
    if len(source) <= n:
        return source
    g = torch.Generator().manual_seed(seed)
    return subset(source, sorted(torch.randperm(len(source), generator=g)[:n].tolist()))


def standardize(train: torch.Tensor, other: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension standardisation with the train statistics (the raw-pixel floor)."""
    mean, std = train.mean(0, keepdim=True), train.std(0, keepdim=True).clamp(min=1e-6)
    return (train - mean) / std, (other - mean) / std


class OnlineKNN:
    """``(model, step) -> {'knn_top1', 'knn_top1_raw_pixels', 'knn_top1_random_init'}``.

    ``encoder_of(model)`` is the backbone inside the pretraining model (its method's
    ``encoder``); its features are pooled by ``pool`` (cls or avg). Call ``baselines``
    once before training (the random-init floor is the model as it starts)."""

    def __init__(
        self,
        reference: ImageSource,
        queries: ImageSource,
        transform,
        encoder_of: Callable[[nn.Module], nn.Module],
        device: torch.device,
        precision: str,
        k: int = 20,
        temperature: float = 0.07,
        pool: str = "cls",
        batch_size: int = 256,
        num_workers: int = 2,
    ):
        if reference.labels is None or queries.labels is None:
            raise UserError("the monitor needs labeled images (class subfolders)")
        self.reference, self.queries, self.transform = reference, queries, transform
        self.encoder_of, self.device, self.precision = encoder_of, device, precision
        self.k, self.temperature, self.pool = k, temperature, pool
        self.batch_size, self.num_workers = batch_size, num_workers
        self.num_classes = max(len(reference.classes), max(reference.labels) + 1)
        self.floors: dict[str, float] = {}

    def _features(self, encoder: nn.Module) -> tuple[dict, dict]:
        args = (self.transform, self.batch_size, self.num_workers, self.device, self.precision)
        return (
            extract(encoder, self.reference, *args, desc="monitor reference"),
            extract(encoder, self.queries, *args, desc="monitor queries"),
        )

    def _top1(self, train: dict, val: dict, standardise: bool = False) -> float:
        tf, vf = train["features"], val["features"]
        if standardise:
            tf, vf = standardize(tf, vf)
        votes = knn_scores(tf, train["labels"], vf, self.num_classes, (self.k,), self.temperature)
        pred = next(iter(votes.values())).argmax(1)
        return 100.0 * (pred == val["labels"]).float().mean().item()

    def _encoder(self, model: nn.Module) -> nn.Module:
        enc = self.encoder_of(model)
        set_pool(enc, self.pool)
        return enc

    def baselines(self, model: nn.Module, img_size: int) -> dict[str, float]:
        """The two floors, computed once: raw pixels and this encoder at step 0."""
        pixels = RawPixels(img_size=img_size).to(self.device)
        self.floors["raw_pixels"] = self._top1(*self._features(pixels), standardise=True)
        enc = copy.deepcopy(self._encoder(model))  # step 0's weights
        self.floors["random_init"] = self._top1(*self._features(enc))
        log.info(
            "monitor: kNN k=%d on %d queries vs %d references; floors: raw pixels %.2f%%, "
            "random init %.2f%%",
            self.k,
            len(self.queries),
            len(self.reference),
            self.floors["raw_pixels"],
            self.floors["random_init"],
        )
        return dict(self.floors)

    @torch.no_grad()
    def __call__(self, model: nn.Module, step: int) -> dict[str, float]:
        top1 = self._top1(*self._features(self._encoder(model)))
        return {"knn_top1": top1, **{f"knn_top1_{k}": v for k, v in self.floors.items()}}
