"""Segmentation data: image + class-id mask pairs from three layouts, checked before use.

Layouts:
- ADE20K (SceneParsing release, ``ADEChallengeData2016``): ``images/{training,validation}/
  *.jpg`` and ``annotations/{training,validation}/*.png``; mask value 0 is "other" and
  ignored, 1..150 are the classes (``reduce_zero_label``: l -> l - 1, 0 -> ignore);
- a generic folder pair: ``images/<rel>.<jpg|png|...>`` and ``masks/<rel>.png``, a class
  list and an ignore index (optionally ``reduce_zero_label``);
- COCO instance annotations turned into semantic masks: class 0 background, one class
  per category (by id order), a smaller instance drawn over a larger one, crowd regions
  ignored unless an instance covers them.

Masks hold class ids: a palette PNG's pixel is its palette *index* (never its colour),
8-bit grey and 16-bit PNGs their value. Colour (RGB) masks and JPEG masks are refused.
Nothing becomes background or ignore silently: a mask missing for an image, a mask whose
size differs from its image, or an id beyond the class list (other than the ignore index)
is a one-line ``UserError`` naming the file and the fix; ``scan`` finds them all before
training.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.images import failure_reason, read_rgb_tensor
from ..errors import UserError
from ..utils.rng import seeded

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_MASK_MODES = ("P", "L", "1", "I", "I;16", "I;16B", "I;16L", "I;16N")

# The 150 classes of the SceneParsing benchmark (ADE20K), in label order 1..150.
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea",
    "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe",
    "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine",
    "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel",
    "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike",
    "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
    "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file -> (H, W) int64 class ids: palette index, grey value or 16-bit value.

    An RGB file whose three channels are equal is read as grey; a colour one is refused
    (its colours would need a colour -> class table), and so are JPEGs (lossy: ids change
    along every edge)."""
    path = Path(path)
    try:
        with Image.open(path) as m:
            fmt, mode = m.format, m.mode
            a = np.array(m)
    except Exception as e:  # PIL raises many types
        raise UserError(f"mask {path}: {failure_reason(e)}") from None
    if fmt == "JPEG":
        raise UserError(
            f"mask {path} is a JPEG (lossy: class ids change along edges): save it as PNG"
        )
    if mode == "RGB" and (a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all():
        return a[..., 0].astype(np.int64)
    if mode not in _MASK_MODES:
        raise UserError(
            f"mask {path} is a {mode} image: masks hold one class id per pixel (palette, "
            "8-bit grey or 16-bit grey PNG), not colours"
        )
    return a.astype(np.int64)


def read_class_names(path: str | Path) -> list[str]:
    """A text file with one class name a line (blank lines skipped) -> the class list."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"class list {path} not found: give a text file with one name a line")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise UserError(f"class list {path} is empty: give one class name a line")
    return names


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the file header (no decoding)."""
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except Exception as e:
        raise UserError(f"image {path}: {failure_reason(e)}") from None


def _check_classes(num_classes: int, ignore_index: int) -> None:
    if 0 <= ignore_index < num_classes:
        raise UserError(
            f"ignore index {ignore_index} is also a class id ({num_classes} classes): "
            f"choose an ignore index of {num_classes} or more (e.g. 65535 for 16-bit masks)"
        )


class MaskPairs:
    """Image / mask file pairs, a class list and the label rules.

    ``load(i)`` -> (image (3, H, W) uint8, label (H, W) int64 in 0..K-1 or ignore).
    ``check(i)`` validates pair i from the image header and the decoded mask (what
    ``scan`` runs over the whole set)."""

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        classes: Sequence[str],
        ignore_index: int = 255,
        reduce_zero_label: bool = False,
    ):
        _check_classes(len(classes), ignore_index)
        self.pairs = [(Path(a), Path(b)) for a, b in pairs]
        self.classes, self.ignore_index = list(classes), ignore_index
        self.reduce_zero_label = reduce_zero_label

    def __len__(self) -> int:
        return len(self.pairs)

    def name(self, i: int) -> str:
        return self.pairs[i][0].stem

    def image_path(self, i: int) -> Path:
        return self.pairs[i][0]

    def label(self, i: int, size: tuple[int, int]) -> torch.Tensor:
        """Mask i as class ids, checked against the image size (H, W) and the class list."""
        path = self.pairs[i][1]
        raw = read_mask(path)
        if raw.shape != tuple(size):
            raise UserError(
                f"mask {path} is {raw.shape[1]}x{raw.shape[0]} but its image "
                f"{self.pairs[i][0]} is {size[1]}x{size[0]} (width x height): masks must "
                "match their images pixel for pixel"
            )
        label = self._map(raw)
        self._check_ids(label, raw, path)
        return torch.from_numpy(label)

    def _map(self, raw: np.ndarray) -> np.ndarray:
        if not self.reduce_zero_label:
            return raw
        # mmseg's reduce_zero_label: 0 ("other") -> ignore, l -> l - 1, ignore stays ignore
        out = raw - 1
        out[(raw == 0) | (raw == self.ignore_index)] = self.ignore_index
        return out

    def _check_ids(self, label: np.ndarray, raw: np.ndarray, path: Path) -> None:
        k = len(self.classes)
        bad = ((label < 0) | (label >= k)) & (label != self.ignore_index)
        if bad.any():
            value = int(raw[bad][0])
            rule = ", value l is class l-1 (reduce_zero_label)" if self.reduce_zero_label else ""
            raise UserError(
                f"mask {path} holds the value {value}, beyond the {k} classes (ids "
                f"{int(self.reduce_zero_label)}..{k - 1 + int(self.reduce_zero_label)}"
                f"{rule}, {self.ignore_index} = ignore): fix the mask or the class list"
            )

    def load(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.pairs[i][0]
        try:
            img = read_rgb_tensor(path)
        except Exception as e:
            raise UserError(f"image {path}: {failure_reason(e)}") from None
        return img, self.label(i, tuple(img.shape[-2:]))

    def check(self, i: int) -> None:
        self.label(i, image_size(self.pairs[i][0]))


def _images_under(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def mask_folder(
    images: str | Path,
    masks: str | Path,
    classes: Sequence[str],
    ignore_index: int = 255,
    reduce_zero_label: bool = False,
    mask_suffix: str = ".png",
) -> MaskPairs:
    """Every image under ``images`` paired with ``masks/<same relative path><mask_suffix>``.
    An image without its mask is an error (named, with how many more lack one)."""
    images, masks = Path(images), Path(masks)
    for what, folder in (("image", images), ("mask", masks)):
        if not folder.is_dir():
            raise UserError(f"{what} folder {folder} not found")
    found = _images_under(images)
    if not found:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {images}")
    pairs = [(p, masks / p.relative_to(images).with_suffix(mask_suffix)) for p in found]
    missing = [(p, m) for p, m in pairs if not m.is_file()]
    if missing:
        (img, mask), more = missing[0], len(missing) - 1
        extra = f"; {more} more images have no mask" if more else ""
        raise UserError(f"no mask for image {img}: expected {mask}{extra}")
    return MaskPairs(pairs, classes, ignore_index, reduce_zero_label)


def ade20k(root: str | Path, split: str = "training") -> MaskPairs:
    """The ADE20K SceneParsing release (``root`` = ``ADEChallengeData2016``): 150 classes,
    0 ignored (``reduce_zero_label``), ignore index 255."""
    root = Path(root)
    images, masks = root / "images" / split, root / "annotations" / split
    if not images.is_dir() or not masks.is_dir():
        raise UserError(
            f"{root} is not the ADE20K layout: expected {images} and {masks} "
            "(give the ADEChallengeData2016 folder)"
        )
    return mask_folder(images, masks, ADE20K_CLASSES, 255, reduce_zero_label=True)


class CocoSemantic:
    """COCO instance annotations as semantic masks: 0 background, category c -> its index
    in id order + 1; instances painted largest first so a smaller one lies on top; crowd
    regions (``iscrowd``) are ``ignore_index`` where no instance covers them.

    ``load(i)`` -> (image (3, H, W) uint8, label (H, W) int64); ``check(i)`` compares the
    image header with the annotated size."""

    def __init__(
        self,
        images: str | Path,
        annotations: str | Path,
        ids: Sequence[int] | None = None,
        ignore_index: int = 255,
    ):
        self.root, path = Path(images), Path(annotations)
        if not path.is_file():
            raise UserError(f"COCO annotations not found: {path}")
        try:
            data = json.loads(path.read_text())
            cats = sorted(data["categories"], key=lambda c: c["id"])
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{path} is not a COCO instances file ({e})") from None
        self.classes = ["background"] + [c["name"] for c in cats]
        self.label_of = {c["id"]: k + 1 for k, c in enumerate(cats)}
        _check_classes(len(self.classes), ignore_index)
        self.ignore_index, self.annotation_file = ignore_index, path
        self.images = {im["id"]: im for im in data["images"]}
        self.anns: dict[int, list] = {i: [] for i in self.images}
        for a in data.get("annotations", []):
            self._check_annotation(a)
            self.anns[a["image_id"]].append(a)
        self.ids = sorted(self.images) if ids is None else list(ids)

    def _check_annotation(self, a: dict) -> None:
        where = f"{self.annotation_file}: annotation {a.get('id')}"
        if a.get("category_id") not in self.label_of:
            raise UserError(f"{where} has category {a.get('category_id')}, not in its categories")
        if a.get("image_id") not in self.images:
            raise UserError(f"{where} refers to image {a.get('image_id')}, not in its images")
        if not a.get("segmentation"):
            raise UserError(
                f"{where} has no segmentation: semantic masks need polygons or RLE for "
                "every instance"
            )

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, i: int) -> Path:
        return self.root / self.images[self.ids[i]]["file_name"]

    def name(self, i: int) -> str:
        return Path(self.images[self.ids[i]]["file_name"]).stem

    def _check_size(self, i: int, size: tuple[int, int]) -> None:
        info = self.images[self.ids[i]]
        if tuple(size) != (info["height"], info["width"]):
            raise UserError(
                f"image {self.image_path(i)} is {size[1]}x{size[0]} but "
                f"{self.annotation_file} says {info['width']}x{info['height']}: the "
                "annotations do not describe this file"
            )

    def label(self, i: int) -> torch.Tensor:
        info = self.images[self.ids[i]]
        return torch.from_numpy(
            coco_semantic_mask(
                self.anns[info["id"]],
                info["height"],
                info["width"],
                self.label_of,
                self.ignore_index,
            )
        )

    def load(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.image_path(i)
        try:
            img = read_rgb_tensor(path)
        except Exception as e:
            raise UserError(f"image {path}: {failure_reason(e)}") from None
        self._check_size(i, tuple(img.shape[-2:]))
        return img, self.label(i)

    def check(self, i: int) -> None:
        self._check_size(i, image_size(self.image_path(i)))


def _decode(seg, h: int, w: int) -> np.ndarray:
    from pycocotools import mask as coco_mask

    if isinstance(seg, list):  # polygons
        rle = coco_mask.merge(coco_mask.frPyObjects(seg, h, w))
    elif isinstance(seg.get("counts"), list):  # uncompressed RLE
        rle = coco_mask.frPyObjects(seg, h, w)
    else:
        rle = seg
    return coco_mask.decode(rle).astype(bool)


def coco_semantic_mask(
    anns: Sequence[dict], h: int, w: int, label_of: dict[int, int], ignore_index: int = 255
) -> np.ndarray:
    """One image's instances -> (h, w) int64: 0 background, crowd regions ``ignore_index``,
    then instances from the largest (pixel count) to the smallest, each over the last."""
    out = np.zeros((h, w), dtype=np.int64)
    things = []
    for a in sorted(anns, key=lambda a: a.get("id", 0)):
        m = _decode(a["segmentation"], h, w)
        if a.get("iscrowd", 0):
            out[m] = ignore_index
        else:
            things.append((int(m.sum()), a, m))
    for _, a, m in sorted(things, key=lambda t: -t[0]):  # stable: equal areas in id order
        out[m] = label_of[a["category_id"]]
    return out


def scan(source, indices: Sequence[int] | None = None, workers: int = 4) -> None:
    """Check every pair (``source.check``) before training, in a few threads (decoding
    releases the GIL); raises the first problem in index order as one line, with the
    number of other bad items."""
    indices = range(len(source)) if indices is None else indices

    def one(i: int) -> str | None:
        try:
            source.check(i)
        except UserError as e:
            return str(e)
        return None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        problems = [p for p in pool.map(one, indices) if p]
    if problems:
        more = f" ({len(problems) - 1} more bad items)" if len(problems) > 1 else ""
        raise UserError(problems[0] + more)


class SegmentationDataset(torch.utils.data.Dataset):
    """Training items: ``source.load(i)`` through ``transform`` (e.g. ``TrainTransform``),
    which runs under the sampler's per-sample seed (``data.loader.EpochSampler`` gives
    ``(index, seed)``), so augmentations resume exactly and ignore the worker count."""

    def __init__(self, source, transform):
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        img, label = self.source.load(index)
        if seed is None:
            return self.transform(img, label)
        with seeded(seed):
            return self.transform(img, label)


def train_collate(items) -> dict:
    """[(image (3, h, w), label (h, w))] -> {'image': (N, 3, h, w), 'label': (N, h, w)}"""
    images, labels = zip(*items)
    return {"image": torch.stack(images), "label": torch.stack(labels)}


class EvalDataset(torch.utils.data.Dataset):
    """Evaluation items as stored: {'image': (3, H, W) uint8, 'label': (H, W), 'name'};
    resizing, normalising and windows happen in ``inference`` (per scale, on the device)."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item):
        index = item[0] if isinstance(item, tuple) else item
        img, label = self.source.load(index)
        return {"image": img, "label": label, "name": self.source.name(index)}


def eval_collate(items) -> dict:
    """Images of different sizes stay lists: {'image': [...], 'label': [...], 'name': [...]}"""
    return {k: [it[k] for it in items] for k in ("image", "label", "name")}
