"""Rank logic (who am I, how many are we, joining and leaving the process group) and
wrapping a model for several processes (DDP, FSDP2) and torch.compile.

Launch with ``torchrun``; a plain ``python`` is world size 1 and every helper is a no-op.
"""

from __future__ import annotations

import atexit
import datetime
import os

import torch
import torch.distributed as tdist
from torch import nn

from ..errors import UserError


def is_initialized() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    return tdist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return tdist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def launched() -> bool:
    """Started by torchrun (or Slurm through submitit) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", 1)) > 1


def init(device: torch.device, timeout_min: float = 10.0) -> None:
    """Join the process group when launched with several processes (NCCL on GPU, gloo on
    CPU). A collective that waits longer than ``timeout_min`` fails instead of hanging."""
    if not launched() or is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    tdist.init_process_group(
        backend=backend,
        device_id=device if device.type == "cuda" else None,
        timeout=datetime.timedelta(minutes=timeout_min),
    )
    # The CLI leaves the group itself; a script calling the Python API under torchrun
    # leaves it at exit (no barrier there: another rank may have failed).
    atexit.register(shutdown, failed=True)


def shutdown(failed: bool = False) -> None:
    """Leave the process group. After a failure no collective is entered (the other ranks
    may be waiting in another one): the group is destroyed and the caller exits non-zero,
    so torchrun stops the remaining processes."""
    if not is_initialized():
        return
    if not failed:
        tdist.barrier()
    tdist.destroy_process_group()


def barrier() -> None:
    if is_initialized():
        tdist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_initialized():
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if is_initialized():
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    return all_reduce_sum(t).div_(world_size()) if is_initialized() else t


def all_gather_object(obj) -> list:
    if not is_initialized():
        return [obj]
    out = [None] * world_size()
    tdist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    if not is_initialized():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def interleave(parts: list[torch.Tensor]) -> torch.Tensor:
    """Undo the ``rank::world`` sharding of an unpadded, unshuffled sampler: rank r held
    items r, r + world, ...; returns them in the original order."""
    world = len(parts)
    n = sum(len(p) for p in parts)
    ref = next((p for p in parts if p.numel()), parts[0])
    out = torch.empty((n, *ref.shape[1:]), dtype=ref.dtype)
    for r, p in enumerate(parts):
        if len(p):
            out[r::world] = p
    return out


def resolve_device(spec: str) -> torch.device:
    """'auto' -> this rank's GPU when CUDA works, else CPU."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(
                f"device '{spec}' asked for, but CUDA is not available: use --device cpu "
                "(device='cpu' in Python)"
            )
        if spec == "cuda":
            spec = f"cuda:{local_rank()}"
    try:
        return torch.device(spec)
    except RuntimeError:
        raise UserError(f"unknown device '{spec}': use auto, cpu, cuda or cuda:N") from None


# ---------------------------------------------------------------------------- wrapping


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def wrap(model: nn.Module, device: torch.device, fsdp: bool = False, compile: bool = False):
    """DDP (or FSDP2 sharding per transformer block) when distributed, then torch.compile."""
    if fsdp:
        if not is_initialized():
            raise UserError("train.fsdp needs several processes: launch with torchrun")
        from torch.distributed.fsdp import fully_shard

        for name in ("blocks", "decoder_blocks"):
            for block in getattr(model, name, []):
                fully_shard(block)
        fully_shard(model)
    elif world_size() > 1:
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return torch.compile(model) if compile else model


def is_fsdp(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # older torch
        return False
    return isinstance(unwrap(model), FSDPModule)
