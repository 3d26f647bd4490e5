"""mimkit: masked image modeling toolkit (MAE, LoMaR, iBOT, SimMIM pretraining,
evaluation, transfer). The jobs are functions (``mimkit.pretrain``, ``knn``, ``linprobe``,
``finetune``, ``train``, ``qscore``, ``detect.train/evaluate/predict``, ``benchmark``,
``compare``, and every other registered job): the same recipes the ``mimkit`` command
runs. ``mimkit.inspect(checkpoint, images=...)`` draws what a backbone learned and
``mimkit.report(runs, out=...)`` compares run folders on one page, as ``mimkit inspect``
and ``mimkit report`` do."""

from . import (
    methods,  # noqa: F401  (registers the pretraining methods and models)
    recipes,  # noqa: F401  (registers the jobs: their config sections, commands)
    report,  # callable: mimkit.report(runs, out=...); also the page's library
)
from .errors import NonFiniteLossError, UserError
from .interop.checkpoint import load_checkpoint
from .models import create_model, list_models
from .recipes.inspect import inspect
from .version import __version__

__all__ = [
    "__version__",
    "NonFiniteLossError",
    "UserError",
    "create_model",
    "inspect",
    "list_models",
    "load_checkpoint",
    "report",
]


def __getattr__(name: str):
    # the jobs import every recipe (torchvision detection, ...): only when first used
    import importlib.util

    # a submodule being imported (``from mimkit import config``) is not a job
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is None:
        jobs = importlib.import_module(f"{__name__}.api")._JOBS
        if name in jobs:
            return jobs[name]
    raise AttributeError(f"module 'mimkit' has no attribute {name!r}")
