"""JPEG files decoded on the device: workers only read bytes; the batch is decoded with
``torchvision.io.decode_jpeg(list, device=...)`` (batched nvJPEG on CUDA, libjpeg on
CPU), turned upright by each file's EXIF orientation (read from the header in the
workers), then cropped, resized and flipped per image on the device.

Files that are not JPEG fall back to CPU decoding; unreadable ones are counted and
their slots filled with another image of the batch (batch shapes stay fixed for DDP).
"""

from __future__ import annotations

import io
import warnings

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file

from .device_aug import normalize, sample_crops
from .images import exif_orientation, orient
from .loader import EpochSampler, build_loader, sample_seed
from .sources import ImageSource

# torchvision 0.29 deprecates its decoders in favour of TorchCodec; they still work and are
# the batched nvJPEG path this module is for.
warnings.filterwarnings(
    "ignore", message="The image decoding and encoding", category=DeprecationWarning
)


class EncodedDataset(torch.utils.data.Dataset):
    """Items: (raw file bytes as a uint8 tensor, label, path, EXIF orientation); nothing
    decoded here (the orientation tag is read from the header, in the worker)."""

    def __init__(self, source: ImageSource):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item):
        i = item[0] if isinstance(item, tuple) else item
        path = self.source.paths[i]
        label = self.source.labels[i] if self.source.labels is not None else -1
        try:
            data = read_file(path)
        except Exception:  # unreadable file: counted after decoding
            return torch.zeros(0, dtype=torch.uint8), label, path, 1
        return data, label, path, _orientation(data)


def _orientation(data: torch.Tensor) -> int:
    try:
        with Image.open(io.BytesIO(data.numpy())) as header:  # the header only, no pixels
            return exif_orientation(header)
    except Exception:  # not an image: the decoder says so later
        return 1


def collate_encoded(items):
    """One flat byte tensor + offsets per batch: a tensor per image would cost a shared-memory
    file descriptor each between worker and main process (and run out of them)."""
    data, labels, paths, orientations = zip(*items)
    sizes = torch.tensor([len(d) for d in data])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
    return {
        "bytes": torch.cat(data),
        "offsets": offsets,
        "label": torch.tensor(labels),
        "paths": list(paths),
        "orientation": torch.tensor(orientations),
    }


def split_encoded(batch: dict) -> list[torch.Tensor]:
    o = batch["offsets"].tolist()
    return [batch["bytes"][o[k] : o[k + 1]] for k in range(len(o) - 1)]


def decode_encoded(batch: dict, device: torch.device) -> list[torch.Tensor | None]:
    """A collated batch decoded on ``device`` (None where unreadable) and turned upright
    by each file's EXIF orientation, as ``images.open_rgb`` does on the CPU paths."""
    decoded = decode_batch(split_encoded(batch), device)
    turns = batch["orientation"].tolist()
    return [None if img is None else orient(img, o) for img, o in zip(decoded, turns)]


def decode_batch(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Decode a list of encoded images to RGB uint8 (3, H, W) on ``device``; None if unreadable."""
    try:
        return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
    except Exception:  # one bad or non-JPEG file fails the batch call: go one by one
        return [_decode_one(d, device) for d in data]


def _decode_one(data: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    if data.numel() == 0:
        return None
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except Exception:
        pass
    try:
        return decode_image(data, mode=ImageReadMode.RGB).to(device)
    except Exception:
        return None


def crop_resize_flip(
    images: list[torch.Tensor], size: int, scale, hflip: bool, generator: torch.Generator
) -> torch.Tensor:
    """Per-image random resized crop (bicubic, antialiased) + flip -> (N, 3, size, size) float."""
    out = []
    flips = torch.rand(len(images), generator=generator, device=generator.device) < 0.5
    for k, img in enumerate(images):
        top, left, h, w = (
            int(v)
            for v in sample_crops(1, img.shape[1], img.shape[2], scale, generator=generator)[
                0
            ].tolist()
        )
        crop = img[None, :, top : top + h, left : left + w].float()
        x = F.interpolate(
            crop, size=(size, size), mode="bicubic", align_corners=False, antialias=True
        ).clamp_(0, 255)
        out.append(x.flip(-1) if hflip and flips[k] else x)
    return torch.cat(out)


class DeviceJpegLoader:
    """A DataLoader of encoded bytes (CPU workers read files) + decode/augment on device."""

    def __init__(
        self,
        source: ImageSource,
        batch_size: int,
        sampler: EpochSampler,
        num_workers: int,
        device: torch.device,
        img_size: int,
        scale=(0.2, 1.0),
        hflip: bool = True,
    ):
        self.loader = build_loader(
            EncodedDataset(source),
            batch_size,
            sampler,
            num_workers,
            drop_last=True,
            pin_memory=False,
            collate_fn=collate_encoded,
        )
        self.batch_size, self.sampler, self.device = batch_size, sampler, device
        self.img_size, self.scale, self.hflip = img_size, tuple(scale), hflip

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        first = self.sampler.start // self.batch_size  # a mid-epoch resume starts there
        for b, batch in enumerate(self.loader, start=first):
            decoded = decode_encoded(batch, self.device)
            good = [k for k, img in enumerate(decoded) if img is not None]
            bad = [
                (batch["paths"][k], "not a decodable JPEG")
                for k, img in enumerate(decoded)
                if img is None
            ]
            if not good:
                raise RuntimeError(f"no decodable image in a batch (first: {batch['paths'][0]})")
            slots = [
                k if decoded[k] is not None else good[j % len(good)]
                for j, k in enumerate(range(len(decoded)))
            ]
            g = torch.Generator(device=self.device)
            g.manual_seed(sample_seed(self.sampler.seed, self.sampler.epoch, b))
            x = crop_resize_flip(
                [decoded[k] for k in slots], self.img_size, self.scale, self.hflip, g
            )
            labels = batch["label"][slots].to(self.device)
            yield {"image": normalize(x), "label": labels, "bad": bad}
