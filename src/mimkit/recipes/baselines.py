"""The floors beside every frozen-feature result: the same protocol (kNN, linear probe,
attentive probe) on raw pixels and on the encoder's own architecture at random init.

Each floor is a run of the same job in the run folder's ``baselines/<floor>`` with
``model.checkpoint=none`` (so its features are cached under their own key: the random
init is seeded by ``train.seed``, the pixels have no weights) and ``eval.baselines=false``;
its headline numbers come back as ``metrics['baselines']``.

Raw pixels: the image at the model's input size, flattened (``raw_pixels``; kNN
standardises each dimension with the train set's statistics first, the linear probe's
BatchNorm does the same), or cut into the encoder's patches for probes that read tokens
(``raw_patches``).
"""

from __future__ import annotations

import logging
from dataclasses import replace

from torch import nn

from ..models import input_size
from ..utils import distributed as dist
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


def floors(ctx, backbone: nn.Module, task: str, tokens: bool = False) -> dict:
    """Run ``task`` on each floor and return {floor: its metrics}."""
    cfg = ctx.cfg
    if not cfg.eval.baselines:
        return {}
    out = {}
    for floor, (name, args) in _floor_models(backbone, tokens).items():
        sub = _sub_config(cfg, name, args, ctx.run_dir() / "baselines" / floor)
        log.info("baseline %s: %s (model.checkpoint=none) under the same protocol", floor, name)
        out[floor] = get_recipe(task).run(sub).metrics
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


def knn_floors(ctx, backbone: nn.Module) -> dict:
    """{floor: {'top1', 'top5', 'per_k'}} of the kNN protocol."""
    found = floors(ctx, backbone, "knn")
    return {f: {k: m[k] for k in ("top1", "top5", "per_k") if k in m} for f, m in found.items()}


def probe_floors(ctx, splits, backbone: nn.Module, task: str) -> dict:
    """{floor: {'top1', 'top5'}} of a probe (linprobe, attnprobe)."""
    found = floors(ctx, backbone, task, tokens=task == "attnprobe")
    return {f: {k: m[k] for k in ("top1", "top5") if k in m} for f, m in found.items()}
