"""Raw pixels as a 'backbone': the floor any learned representation must beat under the
same kNN / linear-probe protocol (``--model raw_pixels --checkpoint none``)."""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model


class RawPixels(nn.Module):
    """Features = the normalised image, flattened: (N, C, S, S) -> (N, C*S*S)."""

    standardize_features = True  # kNN z-scores each dimension with the train statistics

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


class RawPatches(RawPixels):
    """Features = the normalised image cut into patches: (N, C, S, S) -> (N, L, p*p*C),
    the pixel floor of probes that read tokens (the attentive probe); pooled (``forward_head``)
    it is the mean patch."""

    def __init__(self, img_size: int = 32, patch_size: int = 4, in_chans: int = 3, **_):
        super().__init__(img_size, in_chans)
        if img_size % patch_size:
            raise ValueError(f"image size {img_size} is not a multiple of patch {patch_size}")
        self.patch_size = patch_size
        self.num_features = in_chans * patch_size * patch_size

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        n, c, h, w = x.shape
        x = x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(n, (h // p) * (w // p), p * p * c)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x.mean(1)

    def arch_config(self) -> dict:
        return {**super().arch_config(), "patch_size": self.patch_size}


@register_model(model_cls=RawPatches)
def raw_patches(**kw) -> RawPatches:
    """The image's patches as tokens (32 px, 4 px patches unless told otherwise)."""
    return RawPatches(**kw)
