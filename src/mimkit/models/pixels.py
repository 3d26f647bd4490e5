"""Raw pixels as a 'backbone': the floor any learned representation must beat under the
same kNN / linear-probe protocol (``--model raw_pixels --checkpoint none``)."""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model


class RawPixels(nn.Module):
    """Features = the normalised image, flattened: (N, C, S, S) -> (N, C*S*S)."""

    def __init__(self, img_size: int = 32, in_chans: int = 3, num_classes: int = 0, **_):
        super().__init__()
        self.img_size, self.in_chans = img_size, in_chans
        self.num_features = in_chans * img_size * img_size
        self.num_classes = 0

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)

    def arch_config(self) -> dict:
        return {"img_size": self.img_size, "in_chans": self.in_chans}

    def no_weight_decay(self) -> set[str]:
        return set()


@register_model(model_cls=RawPixels)
def raw_pixels(**kw) -> RawPixels:
    """The image itself (32 px unless img_size says otherwise)."""
    return RawPixels(**kw)
