from .datasets import ImageDataset, collate
from .loader import EpochSampler, build_loader
from .sources import FileListSource, FolderSource, ImageSource, open_source
from .transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, pretrain_transform

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EpochSampler",
    "FileListSource",
    "FolderSource",
    "ImageDataset",
    "ImageSource",
    "build_loader",
    "collate",
    "eval_transform",
    "open_source",
    "pretrain_transform",
]
