"""Fold eval-mode BatchNorm into neighbouring linear layers for inference export.

A BatchNorm in eval mode is a per-channel affine map ``y = a * x + c`` with
``a = gamma / sqrt(var + eps)`` and ``c = beta - mean * a``. It folds exactly into

- a conv directly *before* it: ``w' = w * a`` (per output channel), ``b' = b * a + c``;
- a linear layer *after* it when only average pooling lies between (pooling commutes
  with a per-channel affine map): ``W' = W * a`` (per input feature), ``b' = b + W c``.

Where a nonlinearity sits between the conv and the BN (ConvMixer: conv -> GELU -> BN in
every layer) there is nothing to fold into the conv, and a BN that feeds a residual sum
cannot be moved into the next conv either. In ConvMixer only the last BN folds (into the
classifier head); ``fold_batchnorm`` says what it folded and what it left.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def _affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return a, bn.bias - bn.running_mean * a


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv equal to ``bn(conv(x))`` in eval mode."""
    a, c = _affine(bn)
    fused = copy.deepcopy(conv)
    fused.weight.copy_(conv.weight * a.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(a)
    fused.bias = nn.Parameter(bias * a + c)
    return fused


@torch.no_grad()
def fold_bn_linear(bn: nn.BatchNorm2d, linear: nn.Linear) -> nn.Linear:
    """A linear layer equal to ``linear(avgpool(bn(x)))`` given avgpool(x) (eval mode)."""
    a, c = _affine(bn)
    fused = copy.deepcopy(linear)
    fused.weight.copy_(linear.weight * a.view(1, -1))
    fused.bias.copy_(linear.bias + linear.weight @ c)
    return fused


def fold_batchnorm(model: nn.Module) -> dict[str, list[str]]:
    """Fold every foldable eval BatchNorm of ``model`` in place (call on an eval model).

    Folds conv -> BN pairs that are adjacent in an ``nn.Sequential``, and a ConvMixer's
    last BN into its head (average pooling only). Returns {'folded': [...], 'kept': [...]}
    naming the BatchNorm layers.
    """
    folded: list[str] = []
    for name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
                seq[i] = fold_conv_bn(seq[i], seq[i + 1])
                seq[i + 1] = nn.Identity()
                folded.append(f"{name}.{i + 1}")
    if _is_convmixer_head_foldable(model):
        last = model.blocks[-1]
        model.head = fold_bn_linear(last[3], model.head)
        last[3] = nn.Identity()
        folded.append(f"blocks.{len(model.blocks) - 1}.3")
    kept = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    return {"folded": folded, "kept": kept}


def _is_convmixer_head_foldable(model: nn.Module) -> bool:
    pool = getattr(model, "global_pool", None)
    return (
        hasattr(model, "blocks")
        and hasattr(model, "stem")
        and isinstance(getattr(model, "head", None), nn.Linear)
        and getattr(pool, "pool_type", None) == "avg"
        and isinstance(model.blocks[-1][-1], nn.BatchNorm2d)
    )
