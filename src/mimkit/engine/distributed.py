"""All rank logic lives here. Launch with ``torchrun``; a plain ``python`` is world size 1."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def init(device: torch.device) -> None:
    """Join the process group when started by torchrun (NCCL on GPU, gloo on CPU)."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1 or is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)


def shutdown() -> None:
    if is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_object(obj) -> list:
    if not is_initialized():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def resolve_device(spec: str) -> torch.device:
    """'auto' -> this rank's GPU when CUDA works, else CPU."""
    from ..errors import UserError

    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(
                f"device '{spec}' asked for, but CUDA is not available: use --device cpu"
            )
        if spec == "cuda":
            spec = f"cuda:{local_rank()}"
    try:
        return torch.device(spec)
    except RuntimeError:
        raise UserError(f"unknown device '{spec}': use auto, cpu, cuda or cuda:N") from None


def wrap(model: nn.Module, device: torch.device, fsdp: bool = False, compile: bool = False):
    """DDP (or FSDP2 sharding per transformer block) when distributed, then torch.compile."""
    if fsdp:
        if not is_initialized():
            from ..errors import UserError

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
