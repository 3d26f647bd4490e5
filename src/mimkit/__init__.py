"""mimkit: masked image modeling toolkit (MAE, LoMaR, iBOT, SimMIM pretraining,
evaluation, transfer). The jobs are functions (``mimkit.pretrain``, ``knn``, ``linprobe``,
``finetune``, ``train``, ``qscore``, ``detect.train/evaluate/predict``, ``benchmark``):
the same recipes the ``mimkit`` command runs."""

__version__ = "0.1.0"

from . import methods  # noqa: E402, F401  (registers the pretraining methods and models)
from .errors import NonFiniteLossError, UserError  # noqa: E402
from .interop.checkpoint import load_checkpoint  # noqa: E402
from .models import create_model, list_models  # noqa: E402

_API = ("pretrain", "knn", "linprobe", "finetune", "train", "qscore", "detect", "benchmark")

__all__ = [
    "__version__",
    "NonFiniteLossError",
    "UserError",
    "create_model",
    "list_models",
    "load_checkpoint",
    *_API,
]


def __getattr__(name: str):
    # the jobs import every recipe (torchvision detection, ...): only when first used
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'mimkit' has no attribute {name!r}")
