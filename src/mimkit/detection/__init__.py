"""ViTDet-style detection: plain-ViT backbone adaptation and the simple feature pyramid."""

from .vitdet import SimpleFeaturePyramid, ViTDetBackbone, window_partition, window_unpartition

__all__ = ["SimpleFeaturePyramid", "ViTDetBackbone", "window_partition", "window_unpartition"]
