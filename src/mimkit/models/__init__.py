from . import lomar, mae, vit  # noqa: F401  (registers the models)
from .lomar import LocalMaskedReconstruction, LoMaROutput
from .mae import MAEOutput, MaskedAutoencoder
from .registry import create_encoder, create_model, list_models, register_model
from .vit import VisionTransformer

__all__ = [
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
