"""Layers timm does not have. Everything else comes from timm."""

from .attention import Attention
from .irpe import IRPEAttention
from .pos_embed import get_2d_sincos_pos_embed

__all__ = ["Attention", "IRPEAttention", "get_2d_sincos_pos_embed"]
