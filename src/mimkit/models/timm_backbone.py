"""Any timm model as a backbone: ``timm:NAME`` wherever a model name is expected.

timm's models already honour the backbone contract the evaluation protocols speak to
(``forward_features``, ``forward_head(pre_logits=True)``, ``num_features``,
``group_matcher``, ``no_weight_decay``), so an MAE encoder and, say, a supervised
ResNet-50 or ConvNeXt go through the same kNN / probe / fine-tune / Q-score code.
Weights come from a local file only (timm's own loader through
``pretrained_cfg_overlay=dict(file=...)``: .safetensors or .pth, read with
``weights_only=True``); nothing is downloaded.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from torch import nn

from ..errors import UserError

PREFIX = "timm:"


def is_timm_name(name: str | None) -> bool:
    return bool(name) and str(name).startswith(PREFIX)


def create_timm(name: str, checkpoint: str | Path | None = None, **kwargs) -> nn.Module:
    """``timm:NAME`` -> ``timm.create_model(NAME, **kwargs)``, with the weights of a local
    ``checkpoint`` file ('none' or None: random init). ``img_size`` goes to models that take
    it (ViTs) and otherwise only sets the input size of the transforms (CNNs)."""
    import timm

    arch = name[len(PREFIX) :]
    if not timm.is_model(arch):  # also tagged names (vit_base_patch16_224.mae)
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f": did you mean {', '.join(close)}?" if close else " (see timm.list_models())"
        raise UserError(f"unknown timm model '{arch}'{hint}")
    pretrained = checkpoint not in (None, "none")
    if pretrained and not Path(checkpoint).is_file():
        raise UserError(f"checkpoint not found: {checkpoint}")
    args = dict(kwargs)
    img_size = args.pop("img_size", None)
    options = dict(pretrained=pretrained)
    if pretrained:
        options["pretrained_cfg_overlay"] = dict(file=str(checkpoint))
    model = _create(timm, arch, options, args, img_size)
    model.model_name = name
    saved = {**kwargs}
    model.arch_config = lambda: dict(saved)  # rebuilds it: create_model(name, **arch_config())
    if img_size and not hasattr(model, "patch_embed"):
        model.img_size = img_size
    return model


def _create(timm, arch: str, options: dict, args: dict, img_size: int | None) -> nn.Module:
    try:
        try:
            extra = {"img_size": img_size} if img_size else {}
            return timm.create_model(arch, **options, **args, **extra)
        except TypeError:
            if not img_size:
                raise
            return timm.create_model(arch, **options, **args)  # the model takes no img_size
    except UserError:
        raise
    except (TypeError, ValueError, RuntimeError, KeyError, OSError) as e:
        what = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"timm model '{arch}' cannot be built or loaded: {what}") from None


def data_config(model: nn.Module) -> dict:
    """timm's preprocessing of a timm model (mean, std, interpolation, crop_pct), from its
    ``pretrained_cfg``; {} for other models (mimkit's defaults apply)."""
    if not hasattr(model, "pretrained_cfg"):
        return {}
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    return {
        "mean": tuple(cfg["mean"]),
        "std": tuple(cfg["std"]),
        "interpolation": cfg["interpolation"],
        "crop_pct": cfg["crop_pct"],
        "input_size": cfg["input_size"][-1],
    }
