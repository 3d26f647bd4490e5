"""Plain ViTs as segmentation backbones: block features through timm's
``forward_intermediates``, BEiT's four-level pyramid, frozen token maps for the linear
probe, and raw pixel patches as the probe's floor.

Every adapter maps (N, 3, H, W) to a list of maps and says what it gives:
``channels`` (per map), ``strides`` (image pixels per map pixel, per map) and
``size_divisor`` (the patch size: inputs are padded to a multiple of it by
``SegmentationModel``).

Input sizes. A timm ``VisionTransformer`` (mimkit's ViT is one) is switched to timm's own
``dynamic_img_size`` mode: the patch embedding accepts any multiple of the patch size and
``_pos_embed`` resamples the table (bicubic) to the token grid of each input, square or
not; the parameters stay the same tensors. Backbones without that mode (timm's ``Beit``:
its relative position tables are built for one grid) take their built size only, and a
different input is a one-line ``UserError`` (train on crops of that size and evaluate by
sliding windows of it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import Format
from torch import nn

from ..errors import UserError


def default_block_indices(depth: int) -> tuple[int, ...]:
    """Blocks (0-based) whose outputs feed the pyramid: after 1/3, 1/2, 2/3 and all of the
    depth, rounded half up. Depth 12 -> (3, 5, 7, 11) and 24 -> (7, 11, 15, 23), BEiT's
    ADE20K configurations; 4 -> (0, 1, 2, 3)."""
    if depth < 1:
        raise UserError(f"a backbone with {depth} blocks has no features to segment from")
    return tuple(max(math.floor(depth * k / 6 + 0.5) - 1, 0) for k in (2, 3, 4, 6))


def _patch_size(vit: nn.Module) -> int:
    p = vit.patch_embed.patch_size
    p = tuple(p) if isinstance(p, (tuple, list)) else (p, p)
    if p[0] != p[1]:
        raise UserError(f"non-square patches {p} are not supported for segmentation")
    return int(p[0])


def _embed_dim(vit: nn.Module) -> int:
    return int(getattr(vit, "embed_dim", None) or vit.num_features)


def enable_dynamic_size(vit: nn.Module) -> bool:
    """Turn on timm's ``dynamic_img_size`` on a built ``VisionTransformer`` (what its
    constructor does for ``dynamic_img_size=True``: the patch embedding keeps NHWC and
    accepts any multiple of the patch, ``_pos_embed`` resamples the table per input).
    Returns whether the backbone now takes any size; False for backbones without it."""
    if not hasattr(vit, "dynamic_img_size"):
        return False
    if not vit.dynamic_img_size:
        pe = vit.patch_embed
        pe.strict_img_size, pe.flatten, pe.output_fmt = False, False, Format.NHWC
        vit.dynamic_img_size = True
    return True


def _freeze_unused(vit: nn.Module, keep_norm: bool) -> None:
    """The classification parts segmentation never runs (the final norm unless used,
    ``fc_norm``, pooling, head) get no gradient: frozen, so DDP needs no
    ``find_unused_parameters`` and the optimizer no groups for them."""
    names = ("fc_norm", "attn_pool", "head") + (() if keep_norm else ("norm",))
    for name in names:
        module = getattr(vit, name, None)
        if isinstance(module, nn.Module):
            module.requires_grad_(False)


def _normalise(indices: Sequence[int], depth: int) -> tuple[int, ...]:
    out = []
    for i in indices:
        if not -depth <= i < depth:
            raise UserError(f"block index {i} is out of range for a backbone of depth {depth}")
        out.append(i % depth)
    return tuple(out)


class BlockFeatures(nn.Module):
    """The outputs of chosen blocks as maps, through ``forward_intermediates``.

    (N, 3, H, W) -> [(N, D, H/p, W/p)] per index, and with ``prefix=True`` also the cls
    token after each block [(N, D)]. ``norm`` applies the backbone's final norm to each.
    The ViT runs without autograd when none of its parameters is trainable (a frozen
    probe), so no activations are kept for a backward that never reaches it.
    """

    def __init__(self, vit: nn.Module, indices: Sequence[int], norm: bool = False):
        super().__init__()
        if not hasattr(vit, "forward_intermediates"):
            raise UserError(
                f"{type(vit).__name__} has no forward_intermediates: segmentation needs a "
                "timm ViT-like backbone (VisionTransformer, Beit)"
            )
        self.vit = vit
        self.depth = len(vit.blocks)
        self.indices = _normalise(indices, self.depth)
        self.norm = norm
        self.patch_size = _patch_size(vit)
        self.dynamic = enable_dynamic_size(vit)
        _freeze_unused(vit, keep_norm=norm)
        img = vit.patch_embed.img_size
        self.built_size = tuple(img) if img is not None else None
        # the only input size a backbone without dynamic mode takes (smaller inputs, e.g.
        # the last sliding window of a small image, are padded up to it by the model)
        self.fixed_size = None if self.dynamic else self.built_size

    def _check_size(self, x: torch.Tensor) -> None:
        h, w = x.shape[-2:]
        p = self.patch_size
        if h % p or w % p:  # SegmentationModel pads; a direct caller must
            raise UserError(f"input {h}x{w} is not a multiple of the patch size {p}")
        if not self.dynamic and self.built_size and (h, w) != self.built_size:
            bh, bw = self.built_size
            raise UserError(
                f"{type(self.vit).__name__} was built for {bh}x{bw} inputs and cannot take "
                f"{h}x{w} (its position tables are fixed): use crops of {bh}x{bw} and "
                "sliding-window inference with that crop"
            )

    def forward(self, x: torch.Tensor, prefix: bool = False):
        self._check_size(x)
        wanted = sorted(set(self.indices))
        trainable = any(p.requires_grad for p in self.vit.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            outs = self.vit.forward_intermediates(
                x,
                indices=wanted,
                norm=self.norm,
                output_fmt="NCHW",
                intermediates_only=True,
                return_prefix_tokens=prefix,
            )
        by_index = dict(zip(wanted, outs))
        maps = [by_index[i] for i in self.indices]
        if not prefix:
            return maps
        return [m for m, _ in maps], [t[:, 0] for _, t in maps]


class ViTPyramid(nn.Module):
    """BEiT's segmentation backbone: four blocks' maps at 4x, 2x, 1x and 0.5x the token grid.

    (N, 3, H, W) -> [(N, D, 4h, 4w), (N, D, 2h, 2w), (N, D, h, w), (N, D, h/2, w/2)] with
    h, w = H/p, W/p: strides 4, 8, 16, 32 for p = 16 (p/4, p/2, p, 2p in general).
    fpn1: 2x2 transposed conv, BatchNorm, GELU, 2x2 transposed conv; fpn2: one 2x2
    transposed conv; fpn3: identity; fpn4: 2x2 max-pool. Channels stay D. The features
    are the blocks' raw outputs (no final norm), as BEiT's ``forward_features``.
    """

    def __init__(self, vit: nn.Module, indices: Sequence[int] | None = None):
        super().__init__()
        depth = len(vit.blocks)
        indices = default_block_indices(depth) if indices is None else tuple(indices)
        if len(indices) != 4:
            raise UserError(f"the pyramid takes 4 blocks, got indices {list(indices)}")
        self.features = BlockFeatures(vit, indices, norm=False)
        d = _embed_dim(vit)
        self.fpn1 = nn.Sequential(
            nn.ConvTranspose2d(d, d, 2, 2),
            nn.BatchNorm2d(d),
            nn.GELU(),
            nn.ConvTranspose2d(d, d, 2, 2),
        )
        self.fpn2 = nn.ConvTranspose2d(d, d, 2, 2)
        self.fpn3 = nn.Identity()
        self.fpn4 = nn.MaxPool2d(2, 2)
        p = self.features.patch_size
        self.channels = (d, d, d, d)
        self.strides = tuple(_exact(p * s) for s in (0.25, 0.5, 1.0, 2.0))
        # inputs padded to a multiple of p; on an odd token grid the max-pool drops the
        # last row/column of the 0.5x level, as BEiT's
        self.size_divisor = p
        self.fixed_size = self.features.fixed_size

    @property
    def vit(self) -> nn.Module:
        return self.features.vit

    @property
    def indices(self) -> tuple[int, ...]:
        return self.features.indices

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = self.features(x)
        return [f(m) for f, m in zip((self.fpn1, self.fpn2, self.fpn3, self.fpn4), maps)]


class ViTTokens(nn.Module):
    """Token maps for the linear probe (DINOv2's linear protocol, iBOT's linear head).

    (N, 3, H, W) -> [(N, D or 2D, H/p, W/p)] per chosen block (default: the last; the
    DINOv2 '+ms'/'linear4' variant takes the last four), with the final norm (``norm``)
    and the cls token concatenated to every patch token (``with_cls``), as DINOv2's
    ``BNHead`` receives them. Stride p.
    """

    def __init__(
        self,
        vit: nn.Module,
        indices: Sequence[int] = (-1,),
        norm: bool = True,
        with_cls: bool = True,
    ):
        super().__init__()
        if with_cls and not getattr(vit, "num_prefix_tokens", 0):
            raise UserError(
                f"{type(vit).__name__} has no cls token: use with_cls=False for the probe"
            )
        self.features = BlockFeatures(vit, indices, norm=norm)
        self.with_cls = with_cls
        d = _embed_dim(vit) * (2 if with_cls else 1)
        p = self.features.patch_size
        self.channels = tuple(d for _ in self.features.indices)
        self.strides = tuple(p for _ in self.features.indices)
        self.size_divisor = p
        self.fixed_size = self.features.fixed_size

    @property
    def vit(self) -> nn.Module:
        return self.features.vit

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if not self.with_cls:
            return self.features(x)
        maps, cls = self.features(x, prefix=True)
        return [torch.cat([m, c[:, :, None, None].expand_as(m)], 1) for m, c in zip(maps, cls)]


class PixelPatches(nn.Module):
    """The raw-pixel floor of the linear probe: each p x p patch's pixels as its feature.

    (N, C, H, W) -> [(N, C*p*p, H/p, W/p)] (``pixel_unshuffle`` order: channel, row, col),
    stride p, no parameters. A linear head on it is a per-patch linear classifier of the
    normalised pixels, the number any learned representation must beat.
    """

    def __init__(self, patch_size: int = 16, in_chans: int = 3):
        super().__init__()
        self.patch_size = patch_size
        self.channels = (in_chans * patch_size * patch_size,)
        self.strides = (patch_size,)
        self.size_divisor = patch_size

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [F.pixel_unshuffle(x, self.patch_size)]


def _exact(v: float) -> int | float:
    """An integral stride as an int (4, 8, ...), a fractional one (patch 14: 3.5) as is."""
    return int(v) if float(v).is_integer() else v
