"""COCO-format data (``instances_*.json`` + an image folder) as torchvision detection targets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..data.images import read_rgb_tensor
from ..errors import UserError


class CocoDetection(torch.utils.data.Dataset):
    """Images (3, H, W) float in [0, 1] and targets {boxes (K, 4) xyxy, labels (K,),
    masks (K, H, W) uint8, image_id}. Category ids map to contiguous labels 1..C (0 is
    background); crowd annotations and empty boxes are left out of training targets.
    Polygons and RLE masks are decoded with pycocotools."""

    def __init__(self, images: str | Path, annotations: str | Path, ids: list[int] | None = None):
        self.root = Path(images)
        path = Path(annotations)
        if not path.is_file():
            raise UserError(f"COCO annotations not found: {path}")
        data = json.loads(path.read_text())
        self.categories = sorted(c["id"] for c in data["categories"])
        self.label_of = {cid: i + 1 for i, cid in enumerate(self.categories)}
        self.names = {c["id"]: c["name"] for c in data["categories"]}
        self.images = {im["id"]: im for im in data["images"]}
        self.anns: dict[int, list] = {i: [] for i in self.images}
        for a in data["annotations"]:
            self.anns.setdefault(a["image_id"], []).append(a)
        self.ids = sorted(self.images) if ids is None else list(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        i = i[0] if isinstance(i, tuple) else i  # the sampler's (index, seed)
        info = self.images[self.ids[i]]
        img = read_rgb_tensor(self.root / info["file_name"])
        h, w = img.shape[1:]
        anns = [a for a in self.anns[info["id"]] if not a.get("iscrowd", 0)]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        anns = [a for a, k in zip(anns, keep.tolist()) if k]
        target = {
            "boxes": boxes[keep],
            "labels": torch.tensor(
                [self.label_of[a["category_id"]] for a in anns], dtype=torch.int64
            ),
            "masks": _masks(anns, h, w),
            "image_id": info["id"],
        }
        return img.float() / 255, target


def _masks(anns: list[dict], h: int, w: int) -> torch.Tensor:
    from pycocotools import mask as coco_mask

    out = np.zeros((len(anns), h, w), dtype=np.uint8)
    for k, a in enumerate(anns):
        seg = a["segmentation"]
        if isinstance(seg, list):  # polygons
            rle = coco_mask.merge(coco_mask.frPyObjects(seg, h, w))
        elif isinstance(seg.get("counts"), list):  # uncompressed RLE
            rle = coco_mask.frPyObjects(seg, h, w)
        else:
            rle = seg
        out[k] = coco_mask.decode(rle)
    return torch.from_numpy(out)


def collate(batch):
    return tuple(zip(*batch))
