"""Backbones: mimkit's ViT (timm's, MAE conventions), a BEiT-style ViT, ConvMixer, raw
pixels, and any timm model as ``timm:NAME``; the registry every model (the methods'
pretraining models too) is built through."""

from . import beit, convmixer, pixels, vit  # noqa: F401  (registers the models)
from .beit import BEiT
from .convmixer import ConvMixer
from .registry import (
    create_encoder,
    create_model,
    input_size,
    is_pretrainer,
    list_models,
    model_class,
    preprocessing,
    register_model,
)
from .vit import VisionTransformer

__all__ = [
    "BEiT",
    "ConvMixer",
    "VisionTransformer",
    "create_encoder",
    "create_model",
    "input_size",
    "is_pretrainer",
    "list_models",
    "model_class",
    "preprocessing",
    "register_model",
]
