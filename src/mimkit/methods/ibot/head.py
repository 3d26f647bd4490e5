"""iBOT's projection head (the official ``iBOTHead``) and the backbone + head wrapper."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from .backbone import IBOTViT


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight ``g * v / ||v||`` (norm per output row).

    The state-dict keys are ``weight_g`` (out, 1) and ``weight_v`` (out, in), those of
    the deprecated ``torch.nn.utils.weight_norm`` used by the official head; written as a
    module (same kernel, ``torch._weight_norm``) so that it deep-copies, wraps in
    DDP/FSDP and compiles like any layer. ``g`` starts at 1, as the official head sets it.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        v = nn.Linear(in_features, out_features, bias=False).weight.detach()  # default init
        self.weight_g = nn.Parameter(torch.ones(out_features, 1))
        self.weight_v = nn.Parameter(v.clone())

    @property
    def weight(self) -> torch.Tensor:
        return torch._weight_norm(self.weight_v, self.weight_g, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class IBOTHead(nn.Module):
    """MLP (``nlayers`` >= 2 linears, GELU) -> bottleneck -> L2 normalise -> weight-normalised
    ``last_layer`` to K prototypes. [CLS] goes through ``last_layer``, patches through
    ``last_layer2`` (the same module when ``shared_head``). ``norm_last_layer`` freezes
    ``weight_g`` at 1 (cosine prototypes)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 8192,
        patch_out_dim: int | None = None,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        norm_last_layer: bool = True,
        shared_head: bool = True,
    ):
        super().__init__()
        if nlayers < 2:
            raise ValueError(f"the iBOT head needs at least 2 layers, got {nlayers}")
        dims = [in_dim] + [hidden_dim] * (nlayers - 1)
        layers: list[nn.Module] = []
        for a, b in zip(dims, dims[1:]):
            layers += [nn.Linear(a, b), nn.GELU()]
        layers.append(nn.Linear(dims[-1], bottleneck_dim))
        self.mlp = nn.Sequential(*layers)  # keys mlp.0, mlp.2, mlp.4 for 3 layers
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = self._last(bottleneck_dim, out_dim, norm_last_layer)
        if shared_head:
            self.last_layer2 = self.last_layer  # stored twice in the state dict, as official
        else:
            self.last_layer2 = self._last(bottleneck_dim, patch_out_dim or out_dim, norm_last_layer)
        self.shared_head = shared_head

    @staticmethod
    def _last(dim: int, out: int, norm_last_layer: bool) -> WeightNormLinear:
        layer = WeightNormLinear(dim, out)
        layer.weight_g.requires_grad_(not norm_last_layer)
        return layer

    def forward(self, x: torch.Tensor):
        """x: (N, D) -> (N, K); or (N, 1 + L, D) -> ((N, K) [CLS], (N, L, K) patches)."""
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        if x.ndim == 2:
            return self.last_layer(x)
        return self.last_layer(x[:, 0]), self.last_layer2(x[:, 1:])


class IBOTNet(nn.Module):
    """Backbone + head (the official ``MultiCropWrapper``): keys ``backbone.*``, ``head.*``."""

    def __init__(self, backbone: IBOTViT, head: IBOTHead):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        """x: (N, 3, H, W) -> ((N, K), (N, L, K))"""
        return self.head(self.backbone(x, mask))

    def forward_cls(self, x: torch.Tensor) -> torch.Tensor:
        """[CLS] only (local crops): (N, 3, h, w) -> (N, K)."""
        return self.head(self.backbone(x)[:, 0])
