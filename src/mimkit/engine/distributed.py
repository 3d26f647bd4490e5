"""Model wrapping for several processes (DDP, FSDP2) and torch.compile. The rank helpers
live in ``mimkit.utils.distributed`` and are re-exported here for the engine's callers."""

from __future__ import annotations

import torch
from torch import nn

from ..utils.distributed import (  # noqa: F401  (re-exported)
    all_gather_object,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    broadcast_object,
    init,
    interleave,
    is_initialized,
    is_main,
    launched,
    local_rank,
    rank,
    resolve_device,
    shutdown,
    world_size,
)


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
