"""ConvMixer ("Patches Are All You Need?", Trockman & Kolter 2022) on timm's ``ConvMixer``.

Patch embedding = conv (kernel = stride = p) -> act -> BN; then ``depth`` blocks of
[residual: depthwise conv (k, 'same') -> act -> BN] -> pointwise conv -> act -> BN;
global average pooling and a linear head. Key names are timm's (``stem.*``,
``blocks.N.*``, ``head.*``). Same backbone contract as the ViT (timm's), so kNN, linear
probe, fine-tuning, predict and export work unchanged.
"""

from __future__ import annotations

import torch
from timm.models.convmixer import ConvMixer as _TimmConvMixer
from torch import nn

from ..errors import UserError
from .registry import register_model

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


class ConvMixer(_TimmConvMixer):
    # Depthwise convs run faster in NHWC: ConvMixer-256/8 trains 1.4x faster on a 2-core
    # CPU (17 -> 24 img/s, batch 128), and cuDNN prefers it under AMP. Commands that
    # build a backbone put such models in channels_last.
    channels_last = True

    def __init__(
        self,
        dim: int = 256,
        depth: int = 8,
        kernel_size: int = 5,
        patch_size: int = 2,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        act: str = "gelu",
        img_size: int = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        if act not in ACTIVATIONS:
            raise UserError(f"ConvMixer act must be one of {', '.join(ACTIVATIONS)}, got '{act}'")
        if drop_path_rate:
            raise UserError("ConvMixer has no drop path: set model.drop_path=0")
        if global_pool not in ("avg", "max", "avgmax", ""):
            global_pool = "avg"  # 'token' (ViT's default) means nothing here; pool as published
        super().__init__(
            dim,
            depth,
            kernel_size=kernel_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=num_classes,
            global_pool=global_pool,
            drop_rate=drop_rate,
            act_layer=ACTIVATIONS[act],
        )
        self.dim, self.depth, self.kernel_size = dim, depth, kernel_size
        self.patch_size, self.act, self.img_size = patch_size, act, img_size

    def arch_config(self) -> dict:
        """Constructor arguments that rebuild this model (saved in checkpoints)."""
        return dict(
            dim=self.dim,
            depth=self.depth,
            kernel_size=self.kernel_size,
            patch_size=self.patch_size,
            in_chans=self.in_chans,
            num_classes=self.num_classes,
            global_pool=self.global_pool.pool_type or "",
            act=self.act,
            img_size=self.img_size,
        )

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()  # BN and biases are 1-D: the optimizer groups exclude them already

    def patch_filters(self) -> torch.Tensor:
        """Patch-embedding filters (dim, in_chans, p, p)."""
        return self.stem[0].weight.detach()

    def depthwise_kernels(self, layer: int) -> torch.Tensor:
        """Depthwise kernels of block ``layer``: (dim, 1, k, k)."""
        if not 0 <= layer < self.depth:
            raise UserError(f"layer must be in [0, {self.depth - 1}], got {layer}")
        return self.blocks[layer][0].fn[0].weight.detach()


def _named(dim, depth, kernel, patch, act="gelu", **defaults):
    """A named configuration whose arguments can all be overridden (e.g. dim=32)."""
    base = dict(dim=dim, depth=depth, kernel_size=kernel, patch_size=patch, act=act) | defaults

    def build(**kw) -> ConvMixer:
        return ConvMixer(**(base | kw))

    return build


@register_model(model_cls=ConvMixer)
def convmixer(**kw):
    """Any ConvMixer by explicit arguments (dim, depth, kernel_size, patch_size, act, ...)."""
    return ConvMixer(**kw)


@register_model(model_cls=ConvMixer)
def convmixer_1536_20(**kw):
    """ConvMixer-1536/20, kernel 9, patch 7 (ImageNet, 224 px)."""
    return _named(1536, 20, 9, 7)(**kw)


@register_model(model_cls=ConvMixer)
def convmixer_768_32(**kw):
    """ConvMixer-768/32, kernel 7, patch 7, ReLU as published (ImageNet, 224 px)."""
    return _named(768, 32, 7, 7, act="relu")(**kw)


@register_model(model_cls=ConvMixer)
def convmixer_1024_20_ks9_p14(**kw):
    """ConvMixer-1024/20, kernel 9, patch 14 (ImageNet, 224 px)."""
    return _named(1024, 20, 9, 14)(**kw)


@register_model(model_cls=ConvMixer)
def convmixer_256_8(**kw):
    """ConvMixer-256/8, kernel 5, patch 2: the CIFAR-10 model (32 px, 10 classes)."""
    return _named(256, 8, 5, 2, img_size=32, num_classes=10)(**kw)
