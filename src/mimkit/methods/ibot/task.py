"""iBOT's training schedules and hooks on the one loop."""

from __future__ import annotations

import torch
from torch import nn

from ...engine.optim import clip_grad_per_param_
from ...engine.schedule import cosine_iter_array, per_epoch_warmup
from ...utils import distributed as dist


class IBOTTask:
    """iBOT on the one loop: the per-iteration weight decay (decayed group 0 only) and
    EMA momentum, per-epoch teacher temperatures, per-parameter gradient clipping, the
    last layer frozen for the first ``freeze_last_layer`` epochs, and the EMA after each
    step. Use with ``LoopConfig(schedule='cosine_iter', clip_grad=None)`` and an
    optimizer on ``IBOT.param_groups`` (decayed group first).

    ``steps_per_epoch`` = optimizer steps per epoch (``len(loader) // accum_iter``).
    """

    def __init__(
        self,
        epochs: int,
        steps_per_epoch: int,
        weight_decay: float = 0.04,
        weight_decay_end: float = 0.4,
        momentum_teacher: float = 0.996,
        warmup_teacher_temp: float = 0.04,
        teacher_temp: float = 0.04,
        warmup_teacher_patch_temp: float = 0.04,
        teacher_patch_temp: float = 0.07,
        warmup_teacher_temp_epochs: int = 30,
        clip_grad: float | None = 3.0,
        freeze_last_layer: int = 1,
    ):
        self._rates = dict(
            wd=(weight_decay, weight_decay_end),
            momentum=(momentum_teacher, 1.0),
            cls_temp=(warmup_teacher_temp, teacher_temp),
            patch_temp=(warmup_teacher_patch_temp, teacher_patch_temp),
            warmup=warmup_teacher_temp_epochs,
        )
        self.on_plan(epochs * steps_per_epoch, steps_per_epoch)
        self.clip_grad = clip_grad
        self.freeze_last_layer = freeze_last_layer
        self.logged: dict[str, float] = {}

    def on_plan(self, total_steps: int, steps_per_epoch: int) -> None:
        """Size the schedules by the run's length: per-step cosine arrays over
        ``total_steps`` (the official ``cosine_scheduler`` for whole epochs), per-epoch
        temperatures over the epochs it spans (the last may be partial)."""
        r = self._rates
        self.wd = cosine_iter_array(*r["wd"], total_steps, 1)
        self.momentum = cosine_iter_array(*r["momentum"], total_steps, 1)
        epochs = -(-total_steps // steps_per_epoch)
        self.cls_temp = per_epoch_warmup(*r["cls_temp"], r["warmup"], epochs)
        self.patch_temp = per_epoch_warmup(*r["patch_temp"], r["warmup"], epochs)

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        epochs: int,
        steps_per_epoch: int,
        weight_decay: float,
        clip_grad: float | None,
    ) -> IBOTTask:
        return cls(
            epochs,
            steps_per_epoch,
            weight_decay,
            clip_grad=clip_grad,
            **dist.unwrap(model).recipe(),
        )

    def training_step(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        out = model(batch)
        loss = out["loss"]
        for key, value in self.logged.items():  # logged with the losses
            out[key] = loss.new_tensor(value).detach()
        return out

    def on_step_start(self, model: nn.Module, optimizer, step: int, epoch: int) -> None:
        optimizer.param_groups[0]["weight_decay"] = _at(self.wd, step)
        temps = _at(self.cls_temp, epoch), _at(self.patch_temp, epoch)
        dist.unwrap(model).set_teacher_temps(*temps)
        self.logged = {"teacher_temp": temps[0], "ema_momentum": _at(self.momentum, step)}

    def before_optimizer_step(self, model: nn.Module, epoch: int) -> None:
        ibot = dist.unwrap(model)
        if self.clip_grad:
            clip_grad_per_param_(ibot.student.parameters(), self.clip_grad)
        if epoch < self.freeze_last_layer:
            for p in ibot.last_layer_params():
                p.grad = None  # AdamW then skips them entirely (no moments, no decay)

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        dist.unwrap(model).update_teacher(_at(self.momentum, step))


def _at(values: list[float], i: int) -> float:
    return values[min(i, len(values) - 1)]
