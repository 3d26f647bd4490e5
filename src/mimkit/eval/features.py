"""Backbone features through the shared contract, extracted once and cached on disk.

Features = ``forward_head(forward_features(x), pre_logits=True)``: the pooled (cls or
average) and normalised representation any timm-contract backbone gives.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from tqdm import tqdm

from ..data import ImageDataset
from ..data.loader import eval_loader
from ..data.sources import ImageSource
from ..engine import precision as precision_lib
from ..errors import UserError
from ..utils import distributed as dist
from ..utils.cache import files_fingerprint, weights_identity
from ..utils.finite import first_non_finite
from ..utils.io import atomic_save

log = logging.getLogger("mimkit")

POOLS = {"cls": "token", "avg": "avg"}


def set_pool(model, pool: str) -> None:
    """Pick cls-token or average pooling for ``forward_head`` (ViT); others pool by average."""
    if pool not in POOLS:
        raise UserError(f"pool must be 'cls' or 'avg', got '{pool}'")
    if hasattr(model, "global_pool") and isinstance(model.global_pool, str):
        # timm's ViT says has_class_token; BEiT (SimMIM's encoder) and others only hold one
        has_cls = getattr(model, "has_class_token", getattr(model, "cls_token", None) is not None)
        if pool == "cls" and not has_cls:
            raise UserError("this backbone has no cls token: use pool=avg")
        model.global_pool = POOLS[pool]


def encode(model, imgs: torch.Tensor) -> torch.Tensor:
    """imgs: (N, 3, H, W) -> features (N, D) through the backbone contract."""
    return model.forward_head(model.forward_features(imgs), pre_logits=True)


class LastBlocks(torch.nn.Module):
    """The linear-probe features of DINO / iBOT: the [CLS] tokens of the last ``n`` blocks,
    each through the final norm, concatenated; with average pooling the mean patch token
    of the last block is appended (the official ``avgpool_patchtokens``). Uses timm's
    ``forward_intermediates``, so any ViT of our contract works (MAE, LoMaR, iBOT)."""

    def __init__(self, backbone: torch.nn.Module, n: int, avg: bool = False):
        super().__init__()
        if not hasattr(backbone, "forward_intermediates") or not hasattr(backbone, "blocks"):
            raise UserError("linprobe.n_last_blocks > 1 needs a ViT backbone")
        if not 1 <= n <= len(backbone.blocks):
            raise UserError(
                f"linprobe.n_last_blocks must be between 1 and {len(backbone.blocks)}, got {n}"
            )
        self.backbone, self.n, self.avg = backbone, n, avg
        self.num_features = backbone.num_features * (n + int(avg))

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        outs = self.backbone.forward_intermediates(
            imgs,
            indices=self.n,
            norm=True,
            return_prefix_tokens=True,
            output_fmt="NLC",
            intermediates_only=True,
        )
        feats = [prefix[:, 0] for _, prefix in outs]
        if self.avg:
            feats.append(outs[-1][0].mean(1))
        return torch.cat(feats, dim=-1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x  # the features are already pooled

    @property
    def patch_embed(self):  # the input size, for transforms
        return self.backbone.patch_embed

    def arch_config(self) -> dict:
        arch = getattr(self.backbone, "arch_config", lambda: {})()
        return {**arch, "n_last_blocks": self.n, "avgpool": self.avg}


@torch.no_grad()
def extract(
    model,
    source: ImageSource,
    transform,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    precision: str,
    desc: str = "features",
) -> dict:
    """Features of every readable image, each counted once across ranks.

    Returns {'features': (N, D) float32, 'labels': (N,), 'paths': [N], 'bad': [paths]}
    on every rank, in source order; unreadable images are left out and listed in 'bad'
    (their reasons in 'reasons', path -> reason).
    """
    model.eval()
    loader = eval_loader(
        ImageDataset(source, transform), batch_size, num_workers, device.type == "cuda"
    )
    feats, bad = [], {}
    for batch in tqdm(loader, desc=desc, disable=None if dist.is_main() else True, leave=False):
        bad.update((p, why) for p, why in batch["bad"])
        with precision_lib.autocast(precision, device):
            f = encode(model, batch["image"].to(device, non_blocking=True))
        feats.append(f.float().cpu())
    mine = torch.cat(feats) if feats else torch.zeros(0, 0)
    out = _assemble(dist.all_gather_object((mine, bad)), source)
    _check_finite(out, model, precision)
    return out


class NonFiniteFeatures(UserError):
    """Features with NaN or inf: every score computed from them would be a plausible-looking
    number (a kNN top-1 of 1/C), so extraction stops. ``detail`` says where and why."""

    def __init__(self, detail: str):
        super().__init__(f"the model gives {detail}")
        self.detail = detail


def _check_finite(out: dict, model, precision: str) -> None:
    finite = torch.isfinite(out["features"]).all(1)
    if bool(finite.all()):
        return
    first = out["paths"][int((~finite).nonzero()[0])]
    weight = first_non_finite(model)
    if weight:
        why = f"its weight {weight} holds NaN/inf"
    elif precision != "fp32":  # finite weights, finite images: the activations overflowed
        why = f"its weights are finite but a value overflowed in {precision} (train.precision=fp32)"
    else:
        why = "its weights are finite"
    raise NonFiniteFeatures(
        f"non-finite features (NaN/inf) for {int((~finite).sum())} of {len(finite)} images "
        f"(first: {first}): {why}"
    )


def _assemble(parts: list, source: ImageSource) -> dict:
    """Interleave rank shards back into source order (rank r held indices r::world)."""
    n = len(source)
    features = dist.interleave([f for f, _ in parts])
    reasons = {p: why for _, b in parts for p, why in b.items()}
    keep = [i for i, p in enumerate(source.paths) if p not in reasons]
    labels = torch.tensor(source.labels if source.labels is not None else [-1] * n)
    return {
        "features": features[keep],
        "labels": labels[keep],
        "paths": [source.paths[i] for i in keep],
        "bad": sorted(reasons),
        "reasons": reasons,
    }


# ---------------------------------------------------------------------------- cache


def cache_key(**parts) -> str:
    """A stable hash of what determines the features: checkpoint, data, transform, pool."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def checkpoint_identity(path: str | None) -> dict:
    """The checkpoint by what its files hold (see ``utils.cache``): a file overwritten in
    place, or any weight file of a Hugging Face folder, gives a new key."""
    if not path or path == "none":
        return {"checkpoint": "none"}
    p = Path(path).resolve()
    return {"checkpoint": str(p), "files": weights_identity(p)}


def source_identity(source: ImageSource) -> dict:
    """The data by content: every file's path, size and mtime_ns (an edited image is new
    data), and the labels. Table-backed sources (Hugging Face) count their table files."""
    files = _backing_files(source)
    h = hashlib.sha256()
    if files is None:
        h.update(files_fingerprint(source.paths).encode())
    else:
        for p in source.paths:
            h.update(p.encode() + b"\0")
        h.update(files_fingerprint(files).encode())
    h.update(json.dumps(source.labels).encode())
    return {"n": len(source), "content": h.hexdigest()}


def _backing_files(source: ImageSource) -> list[str] | None:
    """The files behind a source whose entries are not files (rows of a memory-mapped
    Arrow table: ``datasets``' ``cache_files``); None for a source of image files."""
    if source.reader is None:
        return None
    ds = getattr(source.reader, "ds", None)
    return [f["filename"] for f in getattr(ds, "cache_files", None) or []]


def cached_extract(cache_dir: Path | None, key_parts: dict, compute) -> dict:
    """Load features from ``cache_dir/<key>.pt`` or compute, save (rank 0) and return them.
    Non-finite features are an error naming the checkpoint (``key_parts['checkpoint']``)."""
    try:
        return _cached_extract(cache_dir, key_parts, compute)
    except NonFiniteFeatures as e:
        ckpt = key_parts.get("checkpoint", "none")
        who = f"checkpoint {ckpt}" if ckpt != "none" else "the randomly initialised model"
        raise UserError(f"{who} gives {e.detail}") from None


def _cached_extract(cache_dir: Path | None, key_parts: dict, compute) -> dict:
    if cache_dir is None:
        return compute()
    path = Path(cache_dir) / f"{cache_key(**key_parts)}.pt"
    if path.is_file():
        try:
            out = torch.load(path, weights_only=True)
        except Exception:  # a stale or damaged cache file is recomputed, never trusted
            log.warning("unreadable feature cache %s: recomputing", path)
        else:
            if bool(torch.isfinite(out["features"]).all()):
                log.info("features from cache %s", path)
                return out
            # written before non-finite features were refused: extract again, which says why
            log.warning("feature cache %s holds NaN/inf features: recomputing", path)
    out = compute()
    if dist.is_main():
        atomic_save(out, path)
    dist.barrier()
    return out
