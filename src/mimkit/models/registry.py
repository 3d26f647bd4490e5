"""Model registry: ``create_model(name, **overrides)`` and ``list_models(pattern)``.

Each registered function returns a model; ``create_model`` records its name in
``model.model_name``, and checkpoints rebuild it from that name and the model's
``arch_config()``.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable

from torch import nn

from ..errors import UserError
from .timm_backbone import create_timm, data_config, is_timm_name

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, model_cls: type | None = None):
    """Register a variant function under its name: ``@register_model`` or
    ``@register_model(model_cls=Cls)`` (the class whose arguments the variant accepts,
    for error messages and for telling pretraining models from backbones)."""

    def add(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if f.__name__ in _MODELS:
            raise RuntimeError(f"model {f.__name__} registered twice")
        f.model_cls = model_cls
        _MODELS[f.__name__] = f
        return f

    return add(fn) if fn is not None else add


def model_class(name: str) -> type | None:
    """The class a registered variant builds (its ``model_cls``), None if unknown."""
    fn = _MODELS.get(name)
    return getattr(fn, "model_cls", None) if fn else None


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def create_model(name: str, **overrides) -> nn.Module:
    """Build a registered model; ``overrides`` replace the variant's defaults.

    >>> m = create_model("mae_vit_tiny_cifar", norm_pix_loss=True)
    """
    if is_timm_name(name):  # any timm model as a backbone (local weights only)
        return create_timm(name, **overrides)
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see `mimkit models`"
        raise UserError(f"unknown model '{name}': {hint}")
    fn = _MODELS[name]
    _check_sizes(name, overrides)
    try:
        model = fn(**overrides)
    except UserError:
        raise
    except TypeError as e:  # unknown keyword: say which and what is allowed
        allowed = _allowed_args(fn)
        raise UserError(f"model '{name}': {e} (accepted: {', '.join(allowed)})") from None
    except (AssertionError, ValueError, RuntimeError, ArithmeticError, LookupError) as e:
        # e.g. timm's shape asserts, a head count of 0
        given = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "its defaults"
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"model '{name}' cannot be built with {given}: {why}") from None
    model.model_name = name
    return model


# Sizes that must be positive integers (a 0 would build a network that fails at its first
# forward, far from the setting that caused it).
_POSITIVE = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "decoder_embed_dim")
_POSITIVE += ("decoder_num_heads",)


def _check_sizes(name: str, overrides: dict) -> None:
    for key in _POSITIVE:
        v = overrides.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 1:
            raise UserError(f"model '{name}': {key}={v} must be at least 1 (model.args.{key})")


def create_encoder(name: str, **overrides) -> nn.Module:
    """The backbone of a registered model: for a pretraining model, the plain backbone of
    the same size (its ``encoder_name``, random init: e.g. the baseline for a pretrained
    one); else ``name`` itself."""
    if is_pretrainer(name):
        import torch

        with torch.device("meta"):
            model = create_model(name)
            args = model.encoder_config()
        return create_model(getattr(model, "encoder_name", "vit"), **{**args, **overrides})
    return create_model(name, **overrides)


def input_size(model: nn.Module) -> int:
    """The image size a backbone was built for (ViT: its patch grid; ConvMixer and timm CNNs:
    ``img_size``; other timm models: their ``pretrained_cfg``)."""
    if hasattr(model, "patch_embed") and hasattr(model.patch_embed, "img_size"):
        return model.patch_embed.img_size[0]
    if hasattr(model, "img_size"):
        return model.img_size
    if isinstance(getattr(model, "backbone", None), nn.Module):  # a feature wrapper
        return input_size(model.backbone)
    return data_config(model)["input_size"]


def preprocessing(model: nn.Module) -> dict:
    """Arguments of ``data.eval_transform`` for ``model``: its input size and, for a timm
    backbone, its own mean, std, interpolation and crop (``pretrained_cfg``)."""
    cfg = data_config(model)
    cfg.pop("input_size", None)
    return {"img_size": input_size(model), **cfg}


def is_pretrainer(name: str) -> bool:
    """Whether ``name`` is a pretraining model (one with an ``encoder_config``: the
    arguments of the plain backbone that carries its encoder downstream)."""
    fn = _MODELS.get(name)
    return fn is not None and hasattr(getattr(fn, "model_cls", None), "encoder_config")


def _allowed_args(fn: Callable) -> list[str]:
    target = getattr(fn, "model_cls", None)
    params = inspect.signature(target.__init__ if target else fn).parameters
    return [p for p in params if p not in ("self", "kwargs", "args")]
