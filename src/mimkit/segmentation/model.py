"""The segmentation model (backbone adapter + decode head + optional auxiliary head), its
loss, builders for the two protocols (UperNet fine-tuning, frozen linear probe) and the
optimizer groups with BEiT's layer-wise lr decay."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import PixelPatches, ViTPyramid, ViTTokens
from .heads import FCNHead, LinearHead, UperNetHead, resize


def cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = 255,
    avg_non_ignore: bool = False,
) -> torch.Tensor:
    """logits: (N, K, H, W), labels: (N, H, W) -> scalar, computed in float32.

    mmseg's ``CrossEntropyLoss`` averages over *all* pixels, ignored ones counting zero
    (``avg_non_ignore=False``, its default and what the BEiT / MAE numbers were trained
    with); ``avg_non_ignore=True`` divides by the labelled pixels only (PyTorch's mean)."""
    loss = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="none")
    if avg_non_ignore:
        return loss.sum() / (labels != ignore_index).sum().clamp(min=1)
    return loss.mean()


class SegmentationModel(nn.Module):
    """imgs (N, 3, H, W), normalised -> logits (N, K, H, W) at input resolution; with
    ``labels`` (N, H, W) -> the loss dict {'loss', 'loss_decode', 'loss_aux', 'acc'}.

    The input is padded (zeros, bottom/right) to a multiple of ``backbone.size_divisor``
    and the logits, upsampled bilinearly from the head's resolution, are cropped back, so
    every pixel keeps its place on the token grid. ``frozen_backbone`` freezes the ViT
    (the adapter's ``vit``; parameter-free adapters have nothing to freeze) and keeps it in
    eval mode (no drop path, fixed statistics) whatever ``train()`` asks.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        aux_head: nn.Module | None = None,
        frozen_backbone: bool = False,
        ignore_index: int = 255,
        aux_weight: float = 0.4,
        avg_non_ignore: bool = False,
    ):
        super().__init__()
        self.backbone, self.head, self.aux_head = backbone, head, aux_head
        self.frozen_backbone = frozen_backbone
        self.ignore_index, self.aux_weight = ignore_index, aux_weight
        self.avg_non_ignore = avg_non_ignore
        self.num_classes = head.num_classes
        if frozen_backbone:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    @property
    def encoder(self) -> nn.Module:
        """The pretrained part: the ViT inside the adapter (the adapter if it has none)."""
        return getattr(self.backbone, "vit", self.backbone)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen_backbone:
            self.encoder.eval()
        return self

    def _pad(self, imgs: torch.Tensor) -> torch.Tensor:
        """Zeros at the bottom/right up to a multiple of the patch, and up to the built size
        of a fixed-size backbone (BEiT's relative position tables) when smaller."""
        d = int(getattr(self.backbone, "size_divisor", 1))
        h, w = imgs.shape[-2:]
        ph, pw = (-h) % d, (-w) % d
        fixed = getattr(self.backbone, "fixed_size", None)
        if fixed:
            ph, pw = max(ph, fixed[0] - h), max(pw, fixed[1] - w)
        return F.pad(imgs, (0, pw, 0, ph)) if ph or pw else imgs

    def forward_logits(self, imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, 3, H, W) -> decode logits and auxiliary logits (training only), both
        (N, K, H, W)."""
        h, w = imgs.shape[-2:]
        padded = self._pad(imgs)
        feats = self.backbone(padded)
        size = padded.shape[-2:]
        logits = resize(self.head(feats), size)[..., :h, :w]
        aux = None
        if self.aux_head is not None and self.training:
            aux = resize(self.aux_head(feats), size)[..., :h, :w]
        return logits, aux

    def forward(self, imgs: torch.Tensor, labels: torch.Tensor | None = None):
        logits, aux = self.forward_logits(imgs)
        if labels is None:
            return logits
        return self.losses(logits, aux, labels)

    def losses(
        self, logits: torch.Tensor, aux: torch.Tensor | None, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        ce = dict(ignore_index=self.ignore_index, avg_non_ignore=self.avg_non_ignore)
        out = {"loss_decode": cross_entropy(logits, labels, **ce)}
        loss = out["loss_decode"]
        if aux is not None:
            out["loss_aux"] = cross_entropy(aux, labels, **ce)
            loss = loss + self.aux_weight * out["loss_aux"]
        with torch.no_grad():  # mmseg's acc_seg: pixel accuracy on labelled pixels, %
            valid = labels != self.ignore_index
            hits = (logits.argmax(1) == labels) & valid
            out["acc"] = 100.0 * hits.sum() / valid.sum().clamp(min=1)
        out["loss"] = loss
        return out


def upernet(
    vit: nn.Module,
    num_classes: int,
    channels: int | None = None,
    indices: Sequence[int] | None = None,
    aux: bool = True,
    aux_channels: int = 256,
    dropout: float = 0.1,
    ignore_index: int = 255,
    avg_non_ignore: bool = False,
) -> SegmentationModel:
    """The BEiT / MAE / iBOT ADE20K model: ViT -> 4-level pyramid -> UperNet + FCN aux head.

    ``channels=None`` is the ViT's width, as BEiT's ADE20K configs (768 for ViT-B, 1024
    for ViT-L; mmseg's generic UperNet default is 512). The aux head reads level 2."""
    backbone = ViTPyramid(vit, indices)
    width = backbone.channels[-1] if channels is None else channels
    head = UperNetHead(backbone.channels, num_classes, width, dropout=dropout)
    aux_head = (
        FCNHead(backbone.channels[2], num_classes, aux_channels, dropout=dropout) if aux else None
    )
    return SegmentationModel(
        backbone, head, aux_head, ignore_index=ignore_index, avg_non_ignore=avg_non_ignore
    )


def linear_probe(
    vit: nn.Module | None,
    num_classes: int,
    last_blocks: int = 1,
    norm: bool = True,
    with_cls: bool = True,
    patch_size: int = 16,
    ignore_index: int = 255,
) -> SegmentationModel:
    """The frozen linear probe: BatchNorm + 1x1 conv on the last ``last_blocks`` blocks'
    tokens (DINOv2 'linear': 1, 'linear4'/'+ms': 4). ``vit=None`` gives the raw-pixel
    floor: the same head on each ``patch_size`` patch's pixels."""
    if vit is None:
        backbone: nn.Module = PixelPatches(patch_size)
    else:
        depth = len(vit.blocks)
        backbone = ViTTokens(vit, range(depth - last_blocks, depth), norm=norm, with_cls=with_cls)
    head = LinearHead(backbone.channels, num_classes)
    return SegmentationModel(backbone, head, frozen_backbone=True, ignore_index=ignore_index)


def _layer_id(name: str, depth: int) -> int:
    """BEiT's ``get_num_layer_for_vit``: embeddings 0, block i -> i + 1, the rest depth + 1."""
    if name.startswith(("cls_token", "mask_token", "pos_embed", "reg_token", "patch_embed")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def param_groups(model: SegmentationModel, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW groups as BEiT's ``LayerDecayOptimizerConstructor`` (used by MAE and iBOT too):
    lr scale ``layer_decay^(depth + 1 - layer)`` with the embeddings at layer 0 and block i
    at i + 1, everything else (final norm, shared relative position bias, pyramid, heads) at
    scale 1; weight decay on every tensor but 1-D ones and biases. As in the official code
    ``pos_embed`` and ``cls_token`` are decayed (its exemption compares their bare names with
    the prefixed ``backbone.pos_embed``, so it never applies). Frozen parameters are left
    out. Each group carries ``lr_scale`` (``engine.optim.set_lr`` applies it)."""
    vit = getattr(model.backbone, "vit", None)
    depth = len(vit.blocks) if vit is not None else 0
    layer = {id(p): _layer_id(n, depth) for n, p in vit.named_parameters()} if vit else {}
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lid = layer.get(id(p), depth + 1)
        decay = p.ndim > 1 and not name.endswith(".bias")
        group = groups.setdefault(
            (lid, decay),
            {
                "params": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr_scale": layer_decay ** (depth + 1 - lid),
            },
        )
        group["params"].append(p)
    return [groups[k] for k in sorted(groups)]
