"""Parameter groups and optimizers, built on timm's helpers."""

from __future__ import annotations

import torch
from timm.optim import param_groups_weight_decay
from torch import nn


def no_decay_names(model: nn.Module) -> set[str]:
    fn = getattr(model, "no_weight_decay", None)
    return set(fn()) if fn else set()


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No decay for norms, biases (1-D tensors) and the model's ``no_weight_decay`` set
    (tokens, position embeddings); frozen parameters are left out."""
    return param_groups_weight_decay(
        model, weight_decay=weight_decay, no_weight_decay_list=no_decay_names(model)
    )


def adamw(groups: list[dict], lr: float, betas, device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused on CUDA (one kernel for all parameters)."""
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fused)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Apply ``lr`` to every group, times its ``lr_scale`` (layer-wise decay) if present."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
