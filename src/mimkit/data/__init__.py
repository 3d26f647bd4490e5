from . import hf, shards  # noqa: F401  (register their --data schemes)
from .datasets import ImageDataset, collate
from .labeled import Splits, open_splits
from .loader import EpochSampler, build_loader
from .sources import ImageSource, file_list_source, folder_source, open_source
from .transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, pretrain_transform

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EpochSampler",
    "file_list_source",
    "folder_source",
    "ImageDataset",
    "ImageSource",
    "Splits",
    "open_splits",
    "build_loader",
    "collate",
    "eval_transform",
    "open_source",
    "pretrain_transform",
]
