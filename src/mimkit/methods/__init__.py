"""Pretraining methods, one module each, behind one contract (``base.PretrainMethod``).

Adding a method: write its module (model, ``PretrainMethod`` subclass with
``@register_method``, ``@register_model`` variants), add its import below, and its
presets under ``configs/``. See CONTRIBUTING.md.
"""

from . import ibot, lomar, mae, simmim  # noqa: F401  (registers the methods and their models)
from .base import (
    ForwardTask,
    LoaderParts,
    PretrainMethod,
    Schedule,
    TrainingParts,
    draw_picture,
    get_method,
    list_methods,
    method_for,
    model_step_flops,
    read_official,
    register_method,
)

__all__ = [
    "ForwardTask",
    "LoaderParts",
    "PretrainMethod",
    "Schedule",
    "TrainingParts",
    "draw_picture",
    "get_method",
    "list_methods",
    "method_for",
    "model_step_flops",
    "read_official",
    "register_method",
]
