"""The floors beside every frozen-feature result: the same protocol (kNN, linear probe,
attentive probe) on raw pixels and on the encoder's own architecture at random init.

Each floor is a run of the same job in the run folder's ``baselines/<floor>`` with
``model.checkpoint=none`` (so its features are cached under their own key: the random
init is seeded by ``train.seed``, the pixels have no weights) and ``eval.baselines=false``;
its headline numbers come back as ``metrics['baselines']``. A floor's result is cached
(``<cache>/floors/<key>.json``, beside the feature cache; ``eval.cache_dir=none`` turns both
off) under a key made of the job, the floor's whole resolved config but its output folder,
and the content of both splits (every file's size and mtime): a second evaluation on the
same data and protocol reads the floors instead of training their probes again.

Raw pixels: the image at the model's input size, flattened (``raw_pixels``; kNN
standardises each dimension with the train set's statistics first, the linear probe's
BatchNorm does the same), or cut into the encoder's patches for probes that read tokens
(``raw_patches``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import replace
from pathlib import Path

from torch import nn

from ..eval.features import cache_key, source_identity
from ..models import input_size
from ..utils import distributed as dist
from ..utils.io import write_json
from .backbone import feature_cache_dir
from .registry import get_recipe

log = logging.getLogger("mimkit")


def _floor_models(backbone: nn.Module, tokens: bool) -> dict[str, tuple[str, dict]]:
    """{floor: (model.name, model.args)} for ``backbone``."""
    size = input_size(backbone)
    patch = getattr(backbone, "patch_size", None) or getattr(
        getattr(backbone, "patch_embed", None), "patch_size", (16,)
    )
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    pixels = (
        ("raw_patches", {"img_size": size, "patch_size": patch})
        if tokens
        else ("raw_pixels", {"img_size": size})
    )
    floors = {"raw_pixels": pixels}
    name = getattr(backbone, "model_name", None)
    if name and hasattr(backbone, "arch_config"):
        args = {k: v for k, v in backbone.arch_config().items() if k != "num_classes"}
        floors["random_init"] = (name, args)
    return floors


def floors(ctx, backbone: nn.Module, task: str, tokens: bool = False, splits=None) -> dict:
    """Run ``task`` on each floor (or read its cached result) and return {floor: metrics}."""
    cfg = ctx.cfg
    if not cfg.eval.baselines:
        return {}
    out = {}
    for floor, (name, args) in _floor_models(backbone, tokens).items():
        sub = _sub_config(cfg, name, args, ctx.run_dir() / "baselines" / floor)
        path = _result_path(sub, task, splits)
        cached = _read_result(path) if path is not None else None
        if cached is not None:
            log.info("baseline %s: %s, from cache %s", floor, name, path)
            out[floor] = cached
            continue
        log.info("baseline %s: %s (model.checkpoint=none) under the same protocol", floor, name)
        out[floor] = get_recipe(task).run(sub).metrics
        if path is not None and dist.is_main():
            write_json(path, _plain(out[floor]))
    if dist.is_main():
        for floor, m in out.items():
            log.info("baseline %-11s top-1 %.2f%%", floor, m.get("top1", float("nan")))
    return out


def _sub_config(cfg, name: str, args: dict, out):
    model = replace(cfg.model, name=name, args=dict(args), checkpoint="none")
    pixels = name.startswith("raw_")
    ev = replace(cfg.eval, baselines=False, block=None if pixels else cfg.eval.block)
    sub = replace(cfg, model=model, eval=ev, out=str(out), name=None)
    if pixels and hasattr(cfg, "linprobe"):  # pixels have no blocks: their one feature
        sub = replace(sub, linprobe=replace(cfg.linprobe, n_last_blocks=1))
    return sub


def _result_path(sub, task: str, splits) -> Path | None:
    """Where a floor's result is cached: None without splits or with the cache off."""
    cache = feature_cache_dir(sub)
    if cache is None or splits is None:
        return None
    config = dataclasses.asdict(sub)
    config.pop("out", None)
    config.pop("name", None)
    key = cache_key(
        task=task,
        config=config,
        train=source_identity(splits.train),
        val=source_identity(splits.val),
    )
    return cache / "floors" / f"{key}.json"


def _read_result(path: Path) -> dict | None:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or damaged: run the floor again
        return None
    return found if isinstance(found, dict) and "top1" in found else None


def _plain(metrics: dict) -> dict:
    """The JSON-safe part of a job's metrics (numbers, strings, lists, dicts)."""
    return json.loads(json.dumps(metrics, default=lambda o: None))


def knn_floors(ctx, backbone: nn.Module, splits=None) -> dict:
    """{floor: {'top1', 'top5', 'per_k'}} of the kNN protocol."""
    found = floors(ctx, backbone, "knn", splits=splits)
    return {f: {k: m[k] for k in ("top1", "top5", "per_k") if k in m} for f, m in found.items()}


def probe_floors(ctx, splits, backbone: nn.Module, task: str) -> dict:
    """{floor: {'top1', 'top5'}} of a probe (linprobe, attnprobe)."""
    found = floors(ctx, backbone, task, tokens=task == "attnprobe", splits=splits)
    return {f: {k: m[k] for k in ("top1", "top5") if k in m} for f, m in found.items()}
