"""One code path for every precision (nanoGPT style): autocast and a GradScaler that is
enabled only for fp16."""

from __future__ import annotations

import contextlib

import torch

from ..errors import UserError

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 on CUDA, fp32 on CPU."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in _DTYPES:
        raise UserError(f"precision must be auto, fp32, bf16 or fp16, got '{precision}'")
    if precision == "fp16" and device.type != "cuda":
        raise UserError("precision fp16 needs a CUDA device; on CPU use fp32 or bf16")
    return precision


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A scaler that is a no-op unless fp16 (bf16 has fp32's range)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
