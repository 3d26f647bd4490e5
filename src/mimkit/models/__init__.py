from . import convmixer, ibot, lomar, mae, pixels, vit  # noqa: F401  (registers the models)
from .convmixer import ConvMixer
from .ibot import IBOT, IBOTHead, IBOTTask, IBOTViT
from .lomar import LocalMaskedReconstruction, LoMaROutput
from .mae import MAEOutput, MaskedAutoencoder
from .registry import (
    create_encoder,
    create_model,
    input_size,
    is_pretrainer,
    list_models,
    preprocessing,
    register_model,
)
from .vit import VisionTransformer

__all__ = [
    "ConvMixer",
    "IBOT",
    "IBOTHead",
    "IBOTTask",
    "IBOTViT",
    "input_size",
    "preprocessing",
    "is_pretrainer",
    "LoMaROutput",
    "LocalMaskedReconstruction",
    "MAEOutput",
    "MaskedAutoencoder",
    "VisionTransformer",
    "create_encoder",
    "create_model",
    "list_models",
    "register_model",
]
