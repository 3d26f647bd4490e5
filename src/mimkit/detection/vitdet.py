"""ViTDet backbone (Li et al., 2022): a plain, MAE-pretrained ViT adapted at fine-tuning
time only, and the simple feature pyramid built from its last map.

Adaptations (the pretrained weights load unchanged; parameter names are timm's/MAE's):
- window attention without shift in most blocks, global attention in a few evenly spaced
  ones; the token grid is padded to a multiple of the window and cropped back;
- decomposed relative position bias (per-axis tables of size 2S-1 x head dim, zero at init,
  interpolated when sizes differ), as detectron2's ``use_rel_pos``;
- the pretraining absolute position embedding (e.g. 14x14 + cls) resized bicubically to
  the detection grid at run time, cls entry dropped;
- optional residual bottleneck blocks (1x1, 3x3, 1x1 convs with LayerNorm + GELU, last
  norm zero-initialised so each starts as identity) after chosen blocks;
- drop path rising linearly with depth.

Window partition/unpartition, the decomposed relative-position bias and the windowed
blocks are timm's (``timm.models.vision_transformer_sam``, the SAM image encoder, same
parameter names); written here: the residual blocks, the run-time position-embedding
resize and the simple feature pyramid, which timm and torchvision do not have.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d, PatchEmbed, resample_abs_pos_embed
from timm.models.vision_transformer_sam import Attention, Block, get_decomposed_rel_pos_bias
from timm.models.vision_transformer_sam import window_partition as window_partition
from timm.models.vision_transformer_sam import window_unpartition as window_unpartition
from torch import nn

from ..layers.attention import attention
from ..models.vit import LayerNorm6

# Global-attention blocks of the published models (all others use windows).
GLOBAL_BLOCKS = {12: (2, 5, 8, 11), 24: (5, 11, 17, 23), 32: (7, 15, 23, 31)}


class RelPosAttention(Attention):
    """Multi-head attention on a (B, H, W, C) map with the decomposed relative position
    bias of MViTv2/ViTDet (per-axis tables of 2S-1 x head dim, zero at init, linearly
    interpolated for other sizes): timm's SAM attention."""

    def __init__(self, dim: int, num_heads: int, size: tuple[int, int], rel_pos: bool = True):
        super().__init__(dim, num_heads, qkv_bias=True, use_rel_pos=rel_pos, input_size=size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        """timm's SAM attention with the product through ``layers.attention`` (SDPA, or
        the explicit form on a CPU in bf16, where it is several times faster)."""
        b, h, w, _ = x.shape
        n = h * w
        qkv = self.qkv(x.reshape(b, n, -1)).view(b, n, 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, N, d)
        q, k = self.q_norm(q), self.k_norm(k)
        bias = None
        if self.use_rel_pos:
            flat = q.reshape(b * self.num_heads, n, -1)
            bias = get_decomposed_rel_pos_bias(flat, self.rel_pos_h, self.rel_pos_w, (h, w), (h, w))
            bias = bias.view(b, self.num_heads, n, n).to(q.dtype)
        drop = self.attn_drop.p if self.training else 0.0
        x = attention(q, k, v, self.scale, bias, drop, self.fused_attn)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, h, w, -1)))


class ResBottleneck(nn.Module):
    """Convolutional propagation: 1x1 -> LN -> GELU -> 3x3 -> LN -> GELU -> 1x1 -> LN, added
    to the input; the last norm starts at zero so the block starts as the identity."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.conv1, self.norm1 = nn.Conv2d(dim, hidden, 1, bias=False), LayerNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, padding=1, bias=False)
        self.norm2 = LayerNorm2d(hidden)
        self.conv3, self.norm3 = nn.Conv2d(hidden, dim, 1, bias=False), LayerNorm2d(dim)
        self.zero_last_norm()

    def zero_last_norm(self) -> None:
        nn.init.zeros_(self.norm3.weight)
        nn.init.zeros_(self.norm3.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        y = F.gelu(self.norm1(self.conv1(x)))
        y = F.gelu(self.norm2(self.conv2(y)))
        return x + self.norm3(self.conv3(y))


class ViTDetBlock(Block):
    """timm's windowed SAM block (window attention padded to a multiple of the window,
    relative positions) with LayerNorm eps 1e-6, plus an optional residual conv block."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid: tuple[int, int],
        window: int = 0,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        rel_pos: bool = True,
        residual_conv: bool = False,
    ):
        super().__init__(
            dim,
            num_heads,
            mlp_ratio,
            qkv_bias=True,
            drop_path=drop_path,
            norm_layer=LayerNorm6,
            use_rel_pos=rel_pos,
            window_size=window,
            input_size=(window, window) if window else grid,
        )
        # the same parameters, with the attention product that is fast on every device
        self.attn = RelPosAttention(dim, num_heads, (window, window) if window else grid, rel_pos)
        self.residual = ResBottleneck(dim, dim // 2) if residual_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        x = super().forward(x)
        if self.residual is not None:
            x = self.residual(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x


class ViTDetBackbone(nn.Module):
    """Plain ViT for detection: (B, 3, H, W) -> (B, C, H/p, W/p) (stride p, e.g. 16).

    ``pretrain_img_size`` is the grid of the pretraining ``pos_embed`` (224 -> 14x14 + cls),
    kept at that size so MAE / ViT checkpoints load unchanged and resized at run time.
    """

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        window_size: int = 14,
        global_blocks: tuple[int, ...] | None = None,
        residual_blocks: tuple[int, ...] = (),
        rel_pos: bool = True,
        pretrain_img_size: int = 224,
    ):
        super().__init__()
        self.patch_size, self.embed_dim, self.depth = patch_size, embed_dim, depth
        self.patch_embed = PatchEmbed(
            img_size, patch_size, 3, embed_dim, flatten=False, strict_img_size=False
        )
        pre = pretrain_img_size // patch_size
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + pre * pre, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if global_blocks is None:
            global_blocks = GLOBAL_BLOCKS.get(depth, tuple(range(depth - 1, -1, -(depth // 4))))
        self.global_blocks = tuple(global_blocks)
        grid = (img_size // patch_size, img_size // patch_size)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            ViTDetBlock(
                embed_dim,
                num_heads,
                grid,
                0 if i in self.global_blocks else window_size,
                mlp_ratio,
                dpr[i],
                rel_pos,
                i in residual_blocks,
            )
            for i in range(depth)
        )
        self.apply(_init_weights)
        for m in self.modules():  # after the generic init, which resets every LayerNorm
            if isinstance(m, ResBottleneck):
                m.zero_last_norm()

    def abs_pos(self, size: tuple[int, int]) -> torch.Tensor:
        """Pretraining position embedding without cls, resized to ``size``: (1, H, W, C)."""
        pre = int(math.isqrt(self.pos_embed.shape[1] - 1))
        pos = self.pos_embed[:, 1:]
        if (pre, pre) != tuple(size):
            pos = resample_abs_pos_embed(
                pos,
                list(size),
                [pre, pre],
                num_prefix_tokens=0,
                interpolation="bicubic",
                antialias=False,
            )
        return pos.reshape(1, size[0], size[1], -1)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(imgs).permute(0, 2, 3, 1)  # (B, H, W, C)
        x = x + self.abs_pos(x.shape[1:3])
        for blk in self.blocks:
            x = blk(x)
        return x.permute(0, 3, 1, 2)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class SimpleFeaturePyramid(nn.Module):
    """From the last map only (stride s): scales 4, 2, 1, 0.5 -> 1x1 conv + LN, 3x3 conv + LN
    to ``out_channels``; p6 by stride-2 subsampling of p5. No top-down or lateral paths.
    Returns an ordered dict of 5 maps (strides s/4 .. 4s), torchvision's backbone format."""

    def __init__(self, in_channels: int, stride: int = 16, out_channels: int = 256):
        super().__init__()
        c = in_channels
        self.out_channels = out_channels
        self.stages = nn.ModuleList()
        for scale in (4.0, 2.0, 1.0, 0.5):
            if scale == 4.0:
                layers = [
                    nn.ConvTranspose2d(c, c // 2, 2, 2),
                    LayerNorm2d(c // 2),
                    nn.GELU(),
                    nn.ConvTranspose2d(c // 2, c // 4, 2, 2),
                ]
                dim = c // 4
            elif scale == 2.0:
                layers, dim = [nn.ConvTranspose2d(c, c // 2, 2, 2)], c // 2
            elif scale == 1.0:
                layers, dim = [], c
            else:
                layers, dim = [nn.MaxPool2d(2, 2)], c
            layers += [
                nn.Conv2d(dim, out_channels, 1, bias=False),
                LayerNorm2d(out_channels),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                LayerNorm2d(out_channels),
            ]
            self.stages.append(nn.Sequential(*layers))
        self.strides = [int(stride / s) for s in (4.0, 2.0, 1.0, 0.5)] + [stride * 4]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        from collections import OrderedDict

        maps = [stage(x) for stage in self.stages]
        maps.append(F.max_pool2d(maps[-1], kernel_size=1, stride=2))  # p6
        return OrderedDict((f"p{int(math.log2(s))}", m) for s, m in zip(self.strides, maps))
