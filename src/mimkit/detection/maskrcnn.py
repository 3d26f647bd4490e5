"""torchvision's Mask R-CNN / Faster R-CNN on the ViTDet backbone + simple feature pyramid."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign

from .vitdet import SimpleFeaturePyramid, ViTDetBackbone


class ViTDetWithPyramid(nn.Module):
    """Images -> OrderedDict of 5 maps (p2..p6) with ``out_channels``, as torchvision's
    detectors expect from a backbone."""

    def __init__(self, vit: ViTDetBackbone, out_channels: int = 256):
        super().__init__()
        self.vit = vit
        self.pyramid = SimpleFeaturePyramid(vit.embed_dim, vit.patch_size, out_channels)
        self.out_channels = out_channels

    @property
    def img_size(self) -> int:
        """The backbone's input size (``models.input_size`` and the benchmark read it)."""
        return self.vit.patch_embed.img_size[0]

    def forward(self, imgs: torch.Tensor) -> OrderedDict:
        return self.pyramid(self.vit(imgs))


class _LayerDecay:
    """Layer-wise lr decay through timm's ``param_groups_layer_decay`` (as fine-tuning):
    patch and position embeddings are layer 0, ViT block i is layer i + 1, and the
    pyramid and heads stay unmatched, which timm puts in the last group (full lr). No
    weight decay on 1-D parameters and the position embedding (ViTDet's recipe)."""

    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^backbone\.vit\.(?:patch_embed|pos_embed)",
            blocks=[(r"^backbone\.vit\.blocks\.(\d+)", None)],
        )

    def no_weight_decay(self) -> set[str]:
        return {"backbone.vit.pos_embed"}


class ViTDetMaskRCNN(_LayerDecay, MaskRCNN):
    pass


class ViTDetFasterRCNN(_LayerDecay, FasterRCNN):
    pass


def build_detector(
    vit: ViTDetBackbone,
    num_classes: int,
    masks: bool = True,
    img_size: int = 1024,
    out_channels: int = 256,
) -> nn.Module:
    """Mask R-CNN (``masks``) or Faster R-CNN with one anchor size per level (32..512 at
    strides 4..64, three aspect ratios) and RoIAlign on p2-p5. ``num_classes`` includes
    the background. Images are resized so the long side is ``img_size`` (padded to it
    inside torchvision's transform); the detector normalises with ImageNet mean/std."""
    backbone = ViTDetWithPyramid(vit, out_channels)
    anchors = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
    levels = ["p2", "p3", "p4", "p5"]
    common = dict(
        num_classes=num_classes,
        min_size=img_size,
        max_size=img_size,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(levels, 7, 0),
        size_divisible=vit.patch_size,
    )
    if masks:
        return ViTDetMaskRCNN(backbone, mask_roi_pool=MultiScaleRoIAlign(levels, 14, 0), **common)
    return ViTDetFasterRCNN(backbone, **common)
