"""What every reader of weights returns: a state dict in mimkit's layout and its metadata."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)  # model_name, model_args, epoch, config, ...
    path: str = "<memory>"
