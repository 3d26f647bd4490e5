"""Decode heads: UperNet (Xiao et al., 2018) with an FCN auxiliary head, as the BEiT / MAE /
iBOT ADE20K protocol, and the BatchNorm + 1x1 conv linear head of the DINOv2 probe.

Written against the UperNet paper and mmsegmentation 0.x's ``UPerHead``, ``FCNHead``,
``BNHead`` (DINOv2) and ``BaseDecodeHead``; mmsegmentation is not a dependency (it needs
mmcv's compiled ops). Same structure, sizes and initialisation:

- every ``ConvModule`` is conv (no bias) -> BatchNorm -> ReLU, the conv Kaiming-normal
  (fan_out, ReLU gain), BatchNorm weight 1 and bias 0; the classifier ``conv_seg`` is a
  1x1 conv with normal(0, 0.01) weights and zero bias, after ``Dropout2d(dropout)``;
- UperNet: PPM (adaptive average pools of ``pool_scales`` on the last level, each a 1x1
  ConvModule, upsampled bilinearly and concatenated with the level) -> 3x3 bottleneck;
  1x1 lateral ConvModules on the other levels; top-down addition of bilinearly upsampled
  coarser laterals; a 3x3 ConvModule on each but the PPM output; all levels upsampled to
  the finest and concatenated -> 3x3 ``fpn_bottleneck`` -> classifier;
- FCN: ``num_convs`` 3x3 ConvModules on one level (``in_index``, default 2), optional
  ``concat_input`` conv, classifier;
- linear: the maps resized to the first one's size and concatenated
  (``resize_concat``), BatchNorm, classifier (DINOv2 sets dropout 0).

Differences from mmsegmentation: BatchNorm is ``nn.BatchNorm2d`` (its configs say SyncBN;
under DDP convert with ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``), and the heads
return logits at the finest level's size; ``SegmentationModel`` upsamples them to the
image and computes the loss (mmseg does both inside the head). ``align_corners`` is
False everywhere, as in the BEiT / MAE / DINOv2 configs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear, align_corners False (mmseg's ``resize`` as its configs use it)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class ConvModule(nn.Sequential):
    """mmcv's ConvModule with BN + ReLU: conv (no bias, Kaiming fan_out) -> BN -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int = 1):
        conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        super().__init__(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Classifier(nn.Sequential):
    """mmseg's ``cls_seg``: Dropout2d then the 1x1 ``conv_seg`` (normal std 0.01, bias 0)."""

    def __init__(self, channels: int, num_classes: int, dropout: float = 0.1):
        conv = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(conv.weight, std=0.01)
        nn.init.zeros_(conv.bias)
        super().__init__(nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(), conv)


class PPM(nn.ModuleList):
    """Pyramid pooling (PSPNet): x (N, C, h, w) -> [(N, channels, h, w)] per pool scale."""

    def __init__(self, pool_scales: Sequence[int], cin: int, channels: int):
        super().__init__(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(cin, channels, 1))
            for s in pool_scales
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [resize(branch(x), x.shape[-2:]) for branch in self]


class UperNetHead(nn.Module):
    """UperNet on a pyramid: [(N, C_i, H_i, W_i)] (finest first) -> (N, K, H_0, W_0)."""

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ):
        super().__init__()
        in_channels = list(in_channels)
        self.num_classes, self.pool_scales = num_classes, tuple(pool_scales)
        self.psp_modules = PPM(pool_scales, in_channels[-1], channels)
        self.bottleneck = ConvModule(in_channels[-1] + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvModule(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3)
        self.cls_seg = Classifier(channels, num_classes, dropout)

    def _check_batch(self, x: torch.Tensor) -> None:
        # the 1x1 pool's BatchNorm sees one value per channel and image: PyTorch refuses
        # a batch of one in training (SyncBatchNorm counts the images of every process)
        if not self.training or x.shape[0] > 1 or 1 not in self.pool_scales:
            return
        bn = self.psp_modules[self.pool_scales.index(1)][1][1]
        if type(bn) is nn.BatchNorm2d:
            raise UserError(
                "UperNet trains on at least 2 images per step and process (its pooling "
                "BatchNorm needs them): use a batch size of 2 or more, or SyncBatchNorm "
                "under DDP"
            )

    def psp_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(torch.cat([x, *self.psp_modules(x)], 1))

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        self._check_batch(feats[-1])
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        laterals.append(self.psp_forward(feats[-1]))
        for i in range(len(laterals) - 1, 0, -1):  # top-down: coarse context into finer maps
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals[:-1])]
        outs.append(laterals[-1])
        size = outs[0].shape[-2:]
        fused = self.fpn_bottleneck(torch.cat([resize(o, size) for o in outs], 1))
        return self.cls_seg(fused)


class FCNHead(nn.Module):
    """FCN auxiliary head on one level: [(N, C_i, H_i, W_i)] -> (N, K, H_j, W_j), j = in_index.

    mmseg's ADE20K configs: ``in_index=2`` (stride 16), one 3x3 conv of 256 channels,
    ``concat_input=False``, dropout 0.1, loss weight 0.4 (``SegmentationModel.aux_weight``).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 256,
        num_convs: int = 1,
        in_index: int = 2,
        concat_input: bool = False,
        dropout: float = 0.1,
    ):
        super().__init__()
        if num_convs == 0 and channels != in_channels:
            raise ValueError("FCNHead without convs needs channels == in_channels")
        self.num_classes, self.in_index, self.concat_input = num_classes, in_index, concat_input
        convs = [
            ConvModule(in_channels if i == 0 else channels, channels, 3) for i in range(num_convs)
        ]
        self.convs = nn.Sequential(*convs)
        self.conv_cat = ConvModule(in_channels + channels, channels, 3) if concat_input else None
        self.cls_seg = Classifier(channels, num_classes, dropout)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        x = feats[self.in_index]
        y = self.convs(x)
        if self.conv_cat is not None:
            y = self.conv_cat(torch.cat([x, y], 1))
        return self.cls_seg(y)


class LinearHead(nn.Module):
    """The linear probe: [(N, C_i, H_i, W_i)] -> resized to (H_0, W_0), concatenated,
    BatchNorm, 1x1 conv -> (N, K, H_0, W_0). DINOv2's ``BNHead`` (dropout 0)."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, dropout: float = 0.0):
        super().__init__()
        dim = sum(in_channels)
        self.num_classes = num_classes
        self.bn = nn.BatchNorm2d(dim)
        self.cls_seg = Classifier(dim, num_classes, dropout)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[-2:]
        x = torch.cat([resize(f, size) for f in feats], 1)
        return self.cls_seg(self.bn(x))
