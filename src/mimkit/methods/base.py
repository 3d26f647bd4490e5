"""The contract every pretraining method honours, and the registry that finds one.

A method is one module (or package) under ``methods/`` with a ``PretrainMethod`` subclass
registered by ``@register_method``. It owns everything that differs between MAE, LoMaR,
iBOT, SimMIM...: how its model is built from the run's settings, what the loader gives it
(crops, masks), how it trains (task, optimizer groups, schedules, loop hooks), a synthetic
batch for ``benchmark``, its picture for ``visualize``, what its checkpoints look like
(pretraining-only keys, official layouts, arguments read off the shapes) and its FLOPs
formula. Code outside ``methods/`` asks ``method_for(name | model | state_dict)`` and
calls the contract; it never names a method.

Every pretraining model answers one call: ``model(batch: dict) -> dict`` with at least
``'loss'`` (a scalar) and any other scalars to log. ``batch`` is what the method's loader
parts make (``{'image': (N, 3, H, W)}`` plus, e.g., ``'mask'``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from ..engine.optim import weight_decay_groups
from ..errors import UserError
from ..models.registry import model_class
from ..utils import distributed as dist

ALL_PIPELINES = ("files", "tensor_cache", "gpu_jpeg", "shards")


@dataclass
class LoaderParts:
    """What a method's loader makes. ``transform``: PIL image -> tensor or dict of
    tensors (``None``: the run's single random-resized crop + flip, which
    ``loader_parts`` receives as ``crop`` to build on); ``pipelines``: the data paths
    that can make it (a CPU transform needs files or shards: the device pipelines only
    crop and flip)."""

    transform: Callable | None = None
    pipelines: tuple[str, ...] = ALL_PIPELINES
    # (n, generator, device) -> dict: per-batch entries of the device pipelines (which
    # only crop and flip), e.g. masks beside the images
    batch_extra: Callable | None = None


@dataclass
class TrainingParts:
    """How a method trains on the one loop: the task (``training_step`` and optional
    hooks, see ``engine.loop.Task``), the optimizer's parameter groups for a model, and
    changes to the loop's settings (e.g. ``schedule='cosine_iter'``, ``clip_grad=None``
    where the method clips in a hook)."""

    task: object
    param_groups: Callable[[nn.Module, float], list[dict]] = weight_decay_groups
    loop: dict = field(default_factory=dict)


class ForwardTask:
    """The task of a method whose model does everything in ``forward(batch) -> dict``."""

    def training_step(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        return model(batch)


@dataclass
class Schedule:
    """What a method's schedules are sized by: the run's epochs and optimizer steps per
    epoch (their product is the run's planned number of steps), its lr (already scaled
    by the effective batch), ``batch_scale`` (effective batch / the method's
    ``lr_batch``: what scaled it; 1 for an absolute optim.lr), accumulation, warm-up
    epochs, the lr floor and the warm-up's first lr."""

    epochs: int
    steps_per_epoch: int
    base_lr: float = 0.0
    batch_scale: float = 1.0
    accum_iter: int = 1
    warmup_epochs: float = 0.0
    min_lr: float = 0.0  # as base_lr: scaled by batch_scale where optim.blr set the lr
    warmup_lr: float = 0.0  # the lr the warm-up starts from (scaled likewise)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


class PretrainMethod:
    """Subclass, set the class attributes, override what differs, and register:

    @register_method
    class MyMethod(PretrainMethod):
        name = "mymethod"
        model_cls = MyModel        # its registered variants use model_cls=MyModel
    """

    name: ClassVar[str] = ""
    model_cls: ClassVar[type] = nn.Module
    summary: ClassVar[str] = ""  # one line for help texts and `mimkit methods`
    lr_batch: ClassVar[int] = 256  # lr = blr x effective batch / lr_batch
    # keys of its full state dict that a plain backbone leaves out (decoders, heads)
    pretraining_only: ClassVar[re.Pattern] = re.compile(r"(?!)")
    # the registered backbone its encoder goes into downstream, and the transformers
    # architecture of its full model (None: only the encoder exports)
    backbone: ClassVar[str] = "vit"
    hf_pretraining: ClassVar[str | None] = None
    picture_file: ClassVar[str] = "reconstructions.png"

    # ------------------------------------------------------------------ model
    def build_args(
        self,
        mask_ratio: float | None,
        norm_pix_loss: bool,
        drop_path: float,
        img_size: int | None,
    ) -> dict:
        """Constructor arguments from the run's model settings (``model.mask_ratio``: None
        keeps the model's own; ``model.args`` are applied on top by the caller)."""
        args = dict(norm_pix_loss=norm_pix_loss, drop_path_rate=drop_path)
        args |= {"mask_ratio": mask_ratio} if mask_ratio is not None else {}
        return args | ({"img_size": img_size} if img_size else {})

    def encoder(self, model: nn.Module) -> nn.Module:
        """The backbone inside a (possibly wrapped) pretraining model, sharing its weights:
        what the monitor, and the encoder carried downstream, compute features with."""
        return dist.unwrap(model)

    # ------------------------------------------------------------------ data
    def loader_parts(self, model: nn.Module, crop: Callable) -> LoaderParts:
        """``crop``: the run's single random-resized crop + flip (PIL -> tensor)."""
        return LoaderParts()

    def synthetic_batch(
        self, model: nn.Module, batch_size: int, device: torch.device, generator: torch.Generator
    ) -> dict:
        """Random inputs shaped like a real batch (``benchmark``, FLOP counting)."""
        size = model.patch_embed.img_size[0]
        image = torch.randn(batch_size, 3, size, size, generator=generator).to(device)
        return {"image": image}

    # ------------------------------------------------------------------ training
    def training_parts(
        self,
        model: nn.Module,
        schedule: Schedule,
        weight_decay: float,
        clip_grad: float | None,
    ) -> TrainingParts:
        return TrainingParts(ForwardTask())

    # ------------------------------------------------------------------ pictures
    def picture(
        self,
        model: nn.Module,
        imgs: torch.Tensor,
        out: Path,
        generator: torch.Generator,
        mask_ratio: float | None = None,
        **options,
    ) -> str:
        """Draw what the model does on ``imgs`` (N, 3, H, W), normalised, into ``out``;
        return a short description with its number (e.g. the masked-patch loss).
        ``options``: the method's own picture settings (MAE: ``stats``)."""
        raise UserError(f"{self.name} has no picture")

    # ------------------------------------------------------------------ checkpoints
    def recognizes(self, sd: Mapping[str, torch.Tensor]) -> bool:
        """Whether a state dict is this method's full pretraining model."""
        return False

    def read_official(self, obj: dict) -> tuple[dict, dict] | None:
        """An official training file of this method (as loaded, safely) -> (state dict in
        mimkit's layout, metadata); None when ``obj`` is not one."""
        return None

    def infer_args(self, sd: Mapping[str, torch.Tensor]) -> tuple[str, dict]:
        """(registered model name, arguments) of a full state dict, from its shapes."""
        raise NotImplementedError

    def from_backbone(self, sd: dict) -> dict:
        """A plain backbone's state dict in this method's full-model keys (continued
        pretraining from an encoder: the rest of the model keeps its initialisation)."""
        return sd

    def encoder_state_dict(self, sd: dict, network: str = "teacher") -> dict:
        """The backbone's keys of a full state dict (``network``: which of a
        student/teacher pair)."""
        return {k: v for k, v in sd.items() if not self.pretraining_only.match(k)}

    # ------------------------------------------------------------------ FLOPs
    def flops_formula(self, model: nn.Module) -> tuple[float, str] | None:
        """(training FLOPs per image, the formula) in closed form, where one is known
        (``flops.count_step_flops`` counts every model; this documents it)."""
        return None


# ---------------------------------------------------------------------------- registry

_METHODS: dict[str, PretrainMethod] = {}


def register_method(cls: type[PretrainMethod]) -> type[PretrainMethod]:
    if not cls.name or cls.name in _METHODS:
        raise RuntimeError(f"method {cls.name!r} has no name or is registered twice")
    _METHODS[cls.name] = cls()
    return cls


def list_methods() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> PretrainMethod:
    if name not in _METHODS:
        raise UserError(f"unknown method '{name}' (one of {', '.join(list_methods())})")
    return _METHODS[name]


def method_for(x) -> PretrainMethod | None:
    """The method of a method name, a registered model name, a model (wrapped or not) or
    a state dict; None for a backbone (or anything no method claims)."""
    if isinstance(x, str):
        if x in _METHODS:
            return _METHODS[x]
        cls = model_class(x)
        return next((m for m in _METHODS.values() if cls and issubclass(cls, m.model_cls)), None)
    if isinstance(x, nn.Module):
        model = dist.unwrap(x)
        return next((m for m in _METHODS.values() if isinstance(model, m.model_cls)), None)
    if isinstance(x, Mapping):
        return next((m for m in _METHODS.values() if m.recognizes(x)), None)
    return None


def read_official(obj: dict) -> tuple[dict, dict] | None:
    """The first method that reads ``obj`` as one of its official training files."""
    for m in _METHODS.values():
        found = m.read_official(obj)
        if found is not None:
            return found
    return None


def draw_picture(
    model: nn.Module,
    paths: list,
    out: str | Path,
    mask_ratio: float | None,
    seed: int,
    device: torch.device,
    **options,
) -> str:
    """The method's picture of ``model`` on image files (or encoded bytes); unreadable
    ones are skipped and named. Masks and windows are drawn from ``seed``. Returns the
    method's description of what it drew (e.g. its masked-patch loss)."""
    import logging

    from ..data.images import failure_reason, open_rgb
    from ..data.transforms import eval_transform

    if mask_ratio is not None and not 0.0 < mask_ratio < 1.0:
        raise UserError(
            f"mask ratio must be between 0 and 1 (exclusive: the loss is taken on the masked "
            f"patches), got {mask_ratio}"
        )
    method = method_for(model)
    if method is None:
        raise UserError(f"{type(model).__name__} is not a pretraining model: it has no picture")
    transform = eval_transform(model.patch_embed.img_size[0])
    images = []
    for i, p in enumerate(paths):
        try:
            images.append(transform(open_rgb(p)))
        except Exception as e:  # any decode failure
            name = p if isinstance(p, (str, Path)) else f"image #{i}"  # never raw bytes
            logging.getLogger("mimkit").warning(
                "skipped unreadable image %s (%s)", name, failure_reason(e)
            )
    if not images:
        raise UserError("none of the given images could be read")
    imgs = torch.stack(images).to(device)
    g = torch.Generator().manual_seed(seed)
    return method.picture(model, imgs, Path(out), g, mask_ratio, **options)


def model_step_flops(model: nn.Module) -> tuple[float, str]:
    """(training FLOPs per image, formula) in closed form: a pretraining model's from its
    method, a ViT classifier's from ``flops.vit_step_flops``."""
    from ..flops import FORMULA_VIT, vit_step_flops

    method = method_for(model)
    found = method.flops_formula(model) if method is not None else None
    if found is not None:
        return found
    c = model.arch_config()
    args = (c["img_size"], c["patch_size"], c["embed_dim"], c["depth"], c.get("num_classes", 0))
    return vit_step_flops(*args, c["in_chans"], c["mlp_ratio"]), FORMULA_VIT
