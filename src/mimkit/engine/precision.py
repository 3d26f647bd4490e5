"""One code path for every precision (nanoGPT style): autocast and a GradScaler that is
enabled only for fp16.

``auto`` is bf16 autocast on CUDA and on CPUs with native bf16 arithmetic (AMX-BF16 or
AVX512-BF16, as PyTorch's own CPU feature detection reports them: oneDNN then runs bf16
GEMMs on those units), fp32 on other CPUs, where bf16 is emulated and slower than fp32.
``MIMKIT_CPU_BF16=0`` or ``1`` overrides the detection (tests, or a CPU where bf16 is
unwanted).
"""

from __future__ import annotations

import contextlib
import os
from typing import NamedTuple

import torch

from ..errors import UserError

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_BF16_ENV = "MIMKIT_CPU_BF16"


class Resolved(NamedTuple):
    precision: str  # fp32 | bf16 | fp16
    reason: str  # why, for the run header: 'auto: CPU has AMX-BF16', 'set'

    def describe(self) -> str:
        return f"precision {self.precision} ({self.reason})"


def cpu_bf16() -> tuple[bool, str]:
    """(native bf16 on this CPU, what says so). ``MIMKIT_CPU_BF16`` = 0/1 decides when set."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1", f"{CPU_BF16_ENV}={forced}"
    if forced:
        raise UserError(f"{CPU_BF16_ENV} must be 0 or 1, got '{forced}'")
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    units = [n for k, n in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16")) if caps.get(k)]
    if units:
        return True, f"CPU has {'/'.join(units)}"
    return False, "CPU has no AMX/AVX512-BF16"


def resolve_with_reason(precision: str, device: torch.device) -> Resolved:
    """'auto' -> bf16 on CUDA and on CPUs with native bf16, fp32 on other CPUs; an
    explicit choice is checked against the device."""
    precision = str(precision)
    if precision == "auto":
        if device.type == "cuda":
            return Resolved("bf16", "auto: CUDA")
        if device.type == "cpu":
            native, why = cpu_bf16()
            return Resolved("bf16" if native else "fp32", f"auto: {why}")
        return Resolved("fp32", f"auto: {device.type}")
    if precision not in _DTYPES:
        raise UserError(f"precision must be auto, fp32, bf16 or fp16, got '{precision}'")
    if precision == "fp16" and device.type != "cuda":
        raise UserError("precision fp16 needs a CUDA device; on CPU use fp32 or bf16")
    return Resolved(precision, "set")


def resolve(precision: str, device: torch.device) -> str:
    """The precision a run uses (see ``resolve_with_reason``)."""
    return resolve_with_reason(precision, device).precision


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A scaler that is a no-op unless fp16 (bf16 has fp32's range)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
