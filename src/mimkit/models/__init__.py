from . import mae, vit  # noqa: F401  (registers the models)
from .mae import MAEOutput, MaskedAutoencoder
from .registry import create_encoder, create_model, list_models, register_model
from .vit import VisionTransformer

__all__ = [
    "MAEOutput",
    "MaskedAutoencoder",
    "VisionTransformer",
    "create_encoder",
    "create_model",
    "list_models",
    "register_model",
]
