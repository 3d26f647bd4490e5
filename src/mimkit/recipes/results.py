"""What a job returns: paths and numbers, no log parsing; pictures show inline in Jupyter.

Every result reads like a dict of its metrics (``result['top1']``) and keeps the run
folder (``out``), the resolved config and the training history (``log.jsonl`` rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..engine.logging import read_log


@dataclass
class Result:
    out: Path | None
    metrics: dict = field(default_factory=dict)
    config: object = None
    picture: Path | None = None  # the PNG a notebook shows for this result

    def __getitem__(self, key):
        return self.metrics[key]

    def get(self, key, default=None):
        return self.metrics.get(key, default)

    @property
    def history(self) -> list[dict]:
        """The run's log.jsonl rows (training steps, epochs, evaluations)."""
        return read_log(Path(self.out) / "log.jsonl") if self.out else []

    def _repr_png_(self) -> bytes | None:
        if self.picture is not None and Path(self.picture).is_file():
            return Path(self.picture).read_bytes()
        return None

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.metrics.items() if isinstance(v, (int, float, str))}
        items = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in list(shown.items())[:8]
        )
        return f"{type(self).__name__}(out={str(self.out)!r}, {items})"


@dataclass
class PretrainResult(Result):
    checkpoint: Path | None = None

    def reconstructions(
        self,
        images: list | None = None,
        num_images: int = 8,
        mask_ratio: float | None = None,
        seed: int = 0,
        out: str | Path | None = None,
        device: str = "cpu",
        **options,
    ):
        """The method's picture (reconstruction grid, prototypes) of ``images`` (files or
        folders; default: the training data) as a PIL image, written to ``out`` (default:
        a PNG in the run folder). ``options``: the method's own (MAE: ``stats='true'``
        for the official demo's un-normalisation)."""
        from PIL import Image

        from ..data.sources import collect_images
        from ..interop.checkpoint import model_from_checkpoint
        from ..methods import draw_picture
        from ..utils.distributed import resolve_device

        if images is None:
            images = [self.config.data.path]
        model, _ = model_from_checkpoint(self.checkpoint, kind="pretrain")
        dev = resolve_device(device)
        paths = collect_images([str(i) for i in images], num_images)
        target = Path(out) if out else Path(self.out) / "reconstructions-notebook.png"
        draw_picture(model.to(dev), paths, target, mask_ratio, seed, dev, **options)
        return Image.open(target)


@dataclass
class ClassifyResult(Result):
    """kNN, linear probe, fine-tuning, supervised training."""

    checkpoint: Path | None = None  # best checkpoint where the job trains


@dataclass
class QscoreResult(Result):
    csv: Path | None = None


@dataclass
class DetectResult(Result):
    checkpoint: Path | None = None


@dataclass
class BenchmarkResult(Result):
    json: Path | None = None
