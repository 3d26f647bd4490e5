"""mimkit: masked image modeling toolkit (MAE pretraining, evaluation, transfer)."""

__version__ = "0.1.0"

from .interop.checkpoint import load_checkpoint  # noqa: E402
from .models import create_model, list_models  # noqa: E402

__all__ = ["__version__", "create_model", "list_models", "load_checkpoint"]
