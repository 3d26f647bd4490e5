"""Detection on the one training loop: the task (loss dict), large-scale-jitter data, and
COCO evaluation with pycocotools (bbox and segm AP), counting every image once."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..data.datasets import seeded
from ..engine import precision as precision_lib
from ..utils import distributed as dist

STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def lsj_transform(size: int, scale: tuple[float, float] = (0.1, 2.0)):
    """Large-scale jitter (ViTDet): resize by a random factor of ``size`` in ``scale``,
    crop or pad to ``size`` x ``size``, horizontal flip; boxes and masks follow."""
    return v2.Compose(
        [
            v2.ScaleJitter((size, size), scale_range=scale, antialias=True),
            v2.RandomCrop(size, pad_if_needed=True),
            v2.RandomHorizontalFlip(),
            v2.SanitizeBoundingBoxes(labels_getter=lambda s: (s[1]["labels"], s[1]["masks"])),
        ]
    )


class Transformed(torch.utils.data.Dataset):
    """A COCO dataset with a joint image/target transform (tv_tensors keep them aligned)."""

    def __init__(self, dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        # the sampler's (index, seed): the jitter of each image is seeded, so runs resume exactly
        index, seed = item if isinstance(item, tuple) else (item, None)
        img, t = self.dataset[index]
        h, w = img.shape[1:]
        t = dict(t)
        t["boxes"] = tv_tensors.BoundingBoxes(t["boxes"], format="XYXY", canvas_size=(h, w))
        t["masks"] = tv_tensors.Mask(t["masks"])
        with seeded(seed) if seed is not None else contextlib.nullcontext():
            img, t = self.transform(tv_tensors.Image(img), t)
        return img.as_subclass(torch.Tensor), {
            k: v.as_subclass(torch.Tensor) if torch.is_tensor(v) else v for k, v in t.items()
        }


def detection_collate(batch) -> dict:
    images, targets = zip(*batch)
    return {"image": list(images), "targets": list(targets)}


class DetectTask:
    """torchvision detectors return their loss dict in train mode: the loop sums it."""

    def __init__(
        self,
        val_loader,
        annotations: str | Path,
        label_to_cat: list[int],
        device,
        precision: str,
        masks: bool = True,
    ):
        self.val_loader, self.annotations, self.masks = val_loader, str(annotations), masks
        self.label_to_cat, self.device, self.precision = label_to_cat, device, precision
        self.last_metrics: dict = {}

    def training_step(self, model, batch: dict) -> dict[str, torch.Tensor]:
        losses = model(batch["image"], batch["targets"])
        return {"loss": sum(losses.values())}

    @torch.no_grad()
    def evaluate(self, model, epoch: int) -> dict[str, float]:
        results, ids = predict_coco(
            model, self.val_loader, self.label_to_cat, self.device, self.precision
        )
        self.last_metrics = coco_evaluate(self.annotations, ids, results, self.masks)
        return {f"val/{k}": v for k, v in self.last_metrics.items() if k in ("bbox_AP", "segm_AP")}


@torch.no_grad()
def predict_coco(model, loader, label_to_cat: list[int], device, precision: str):
    """COCO result dicts of every rank's images, gathered, and the evaluated image ids."""
    from pycocotools import mask as coco_mask

    model.eval()
    results, ids = [], []
    for batch in loader:
        images = [im.to(device) for im in batch["image"]]
        with precision_lib.autocast(precision, device):
            outputs = model(images)
        for out, target in zip(outputs, batch["targets"]):
            image_id = int(target["image_id"])
            ids.append(image_id)
            boxes = out["boxes"].float().cpu()
            boxes[:, 2:] -= boxes[:, :2]  # xyxy -> xywh
            masks = out.get("masks")
            for k in range(len(boxes)):
                r = {
                    "image_id": image_id,
                    "category_id": label_to_cat[int(out["labels"][k])],
                    "bbox": [round(float(v), 2) for v in boxes[k]],
                    "score": float(out["scores"][k]),
                }
                if masks is not None:
                    m = (masks[k, 0] > 0.5).cpu().numpy().astype(np.uint8)
                    rle = coco_mask.encode(np.asfortranarray(m))
                    rle["counts"] = rle["counts"].decode("ascii")
                    r["segmentation"] = rle
                results.append(r)
    parts = dist.all_gather_object((results, ids))
    return [r for p in parts for r in p[0]], sorted({i for p in parts for i in p[1]})


def coco_evaluate(
    annotations: str, image_ids: list[int], results: list[dict], segm: bool = True
) -> dict:
    """pycocotools COCOeval on ``image_ids``: bbox, and segm (``segm``, Mask R-CNN)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(annotations)
    metrics: dict = {"num_images": len(image_ids), "num_detections": len(results)}
    types = ["bbox"] + (["segm"] if segm else [])
    for iou_type in types:
        if not results:
            metrics.update({f"{iou_type}_{s}": 0.0 for s in STATS})
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes(json.loads(json.dumps(results)))
            ev = COCOeval(gt, dt, iou_type)
            ev.params.imgIds = image_ids
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        metrics.update(
            {
                f"{iou_type}_{s}": round(100 * max(float(v), 0.0), 3)
                for s, v in zip(STATS, ev.stats[:6])
            }
        )
    return metrics
