"""Classifiers on a backbone: the linear probe head, fine-tuning models, and the one
classification task (training loss + distributed evaluation) both protocols share."""

from __future__ import annotations

import logging

import torch
from timm.layers import trunc_normal_
from timm.optim import Lars, param_groups_layer_decay
from torch import nn

from ..engine import precision as precision_lib
from ..engine.optim import no_decay_names
from ..errors import UserError
from ..utils import distributed as dist
from .features import encode
from .metrics import classification_metrics

log = logging.getLogger("mimkit")


class LinearProbe(nn.Sequential):
    """BatchNorm without affine (eps 1e-6) + linear layer (truncated normal, std 0.01), as
    the MAE paper; ``batchnorm=False``: the plain linear layer of DINO / iBOT's
    ``eval_linear`` (normal, std 0.01). The linear layer is ``[1]`` in both."""

    def __init__(self, dim: int, num_classes: int, batchnorm: bool = True):
        norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6) if batchnorm else nn.Identity()
        super().__init__(norm, nn.Linear(dim, num_classes))
        if batchnorm:
            trunc_normal_(self[1].weight, std=0.01)
        else:
            nn.init.normal_(self[1].weight, std=0.01)
        nn.init.zeros_(self[1].bias)


def probe_optimizer(head: nn.Module, name: str, lr: float, weight_decay: float):
    """LARS (momentum 0.9, trust 0.001) or SGD (momentum 0.9).

    LARS as MAE's: matrices get weight decay and the trust ratio, 1-D parameters (the
    bias) get neither; timm's ``Lars`` does this with two groups (``always_adapt``).
    """
    matrices = [p for p in head.parameters() if p.ndim > 1]
    vectors = [p for p in head.parameters() if p.ndim <= 1]
    if name == "lars":
        groups = [
            {"params": matrices, "weight_decay": weight_decay, "always_adapt": True},
            {"params": vectors, "weight_decay": 0.0, "always_adapt": False},
        ]
        return Lars(groups, lr=lr, momentum=0.9, trust_coeff=0.001)
    if name == "sgd":
        groups = [
            {"params": matrices, "weight_decay": weight_decay},
            {"params": vectors, "weight_decay": 0.0},
        ]
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    raise UserError(f"linprobe.optimizer must be 'lars' or 'sgd', got '{name}'")


def layer_decay_groups(model: nn.Module, weight_decay: float, layer_decay: float) -> list[dict]:
    """timm's layer-decay groups: scale decay^(depth + 1 - layer), embeddings layer 0,
    norm/fc_norm/head at full lr (as MAE's ``param_groups_lrd``); no decay for 1-D
    parameters and the model's ``no_weight_decay`` set. Frozen parameters are skipped."""
    return param_groups_layer_decay(
        model,
        weight_decay=weight_decay,
        no_weight_decay_list=no_decay_names(model),
        layer_decay=layer_decay,
    )


def freeze_all_but_last(model: nn.Module, k: int) -> None:
    """Partial fine-tuning (MAE paper, sec. 4.3): train the last k blocks, the final norm
    and the head; everything before stays frozen."""
    depth = len(model.blocks)
    if not 0 <= k <= depth:
        raise UserError(f"finetune.trainable_blocks must be between 0 and {depth}, got {k}")
    for name, p in model.named_parameters():
        block = int(name.split(".")[1]) if name.startswith("blocks.") else None
        trainable = (block is not None and block >= depth - k) or name.startswith(
            ("norm.", "fc_norm.", "head.")
        )
        p.requires_grad_(trainable)


def init_head(model: nn.Module, std: float) -> None:
    """MAE fine-tuning starts the new head at trunc_normal(std=2e-5), bias 0."""
    head = model.get_classifier()
    if isinstance(head, nn.Linear):
        trunc_normal_(head.weight, std=std)
        nn.init.zeros_(head.bias)


class FrozenEncoder(nn.Module):
    """A backbone used as a fixed feature extractor: eval mode, no_grad."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)

    def train(self, mode: bool = True):  # stays in eval mode whatever the loop asks
        return super().train(False)

    @torch.no_grad()
    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return encode(self.backbone, imgs).float()


class ClassifyTask:
    """Cross-entropy (or mixup soft targets) training; top-1/top-5 on a validation loader.

    ``encoder`` (optional) turns images into features before ``model`` (the probe head);
    ``mixup`` is timm's Mixup. Evaluation gathers every rank's predictions, so every
    validation image counts exactly once.
    """

    def __init__(
        self,
        criterion: nn.Module,
        val_loader,
        classes: list[str],
        device,
        precision: str,
        encoder: nn.Module | None = None,
        mixup=None,
    ):
        self.criterion, self.val_loader, self.classes = criterion, val_loader, classes
        self.device, self.precision = device, precision
        self.encoder, self.mixup = encoder, mixup
        self.last_metrics: dict = {}

    def training_step(self, model, batch: dict) -> dict[str, torch.Tensor]:
        x, y = batch["image"], batch["label"]
        if self.mixup is not None:
            x, y = self.mixup(x, y)
        if self.encoder is not None:
            x = self.encoder(x)
        return {"loss": self.criterion(model(x), y)}

    @torch.no_grad()
    def evaluate(self, model, epoch: int) -> dict[str, float]:
        model.eval()
        scores, targets = predict_loader(
            model, self.val_loader, self.device, self.precision, self.encoder
        )
        loss = nn.functional.cross_entropy(scores, targets).item() if len(targets) else 0.0
        m = classification_metrics(scores, targets, self.classes)
        self.last_metrics = m
        return {"val/acc1": m["top1"], "val/acc5": m["top5"], "val/loss": loss}


@torch.no_grad()
def predict_loader(model, loader, device, precision: str, encoder=None):
    """Scores (N, C) and targets (N,) over a loader sharded by rank, gathered in order."""
    scores, targets = [], []
    for batch in loader:
        x = batch["image"].to(device, non_blocking=True)
        with precision_lib.autocast(precision, device):
            if encoder is not None:
                x = encoder(x)
            scores.append(model(x).float().cpu())
        targets.append(batch["label"])
    mine = (
        (torch.cat(scores), torch.cat(targets)) if scores else (torch.zeros(0, 0), torch.zeros(0))
    )
    parts = dist.all_gather_object(mine)
    return dist.interleave([p[0] for p in parts]), dist.interleave([p[1] for p in parts]).long()
