"""Decoding one image into RGB, the one way every data path does it.

Grayscale, palette, CMYK and 16-bit images become 8-bit RGB (16-bit values scaled, not
clipped); transparency is composited on white; an EXIF orientation tag is applied (a
phone photo comes out upright, as viewers show it, on every decode path). PIL's
decompression-bomb limit stays on; a large JPEG is decoded at a reduced scale (``draft``)
when the caller only needs ``max_side`` pixels, and other formats are reduced after
decoding.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def open_rgb(src: str | Path | bytes, max_side: int | None = None) -> Image.Image:
    """A path or encoded bytes -> fully decoded RGB image.

    ``max_side``: the smallest side the caller needs at most; larger images are decoded
    or reduced to no less than it (JPEG by DCT scaling, others by ``Image.reduce``)."""
    fp = io.BytesIO(src) if isinstance(src, (bytes, bytearray, memoryview)) else src
    with warnings.catch_warnings():
        # palette-with-transparency and EXIF notices are noise; the decompression-bomb
        # warning is not silenced (PIL's limit is kept, see module docstring).
        warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
        warnings.simplefilter("default", Image.DecompressionBombWarning)
        with Image.open(fp) as img:
            if max_side and img.format == "JPEG" and min(img.size) > 2 * max_side:
                img.draft("RGB", (max_side, max_side))  # decoder picks scale >= requested
            img.load()
            ImageOps.exif_transpose(img, in_place=True)  # phone photos: upright, as shown
            img = _reduce(img, max_side)
            return to_rgb(img)


def read_rgb_tensor(path: str | Path):
    """A file -> (3, H, W) uint8 tensor by ``open_rgb``'s conversion rules: torchvision's
    decoder (libjpeg-turbo, no PIL round trip) for 8-bit RGB and grayscale images,
    ``open_rgb`` for the rest (torchvision returns 16-bit PNGs as uint16 and drops alpha
    instead of compositing it). The decompression-bomb limit applies to both."""
    import torch
    from torchvision.io import ImageReadMode, decode_image

    data = bytearray(Path(path).read_bytes())  # read once, for both decoders
    limit = Image.MAX_IMAGE_PIXELS  # None: the user turned PIL's bomb check off
    with Image.open(io.BytesIO(data)) as header:  # parses the header only: size and mode
        small = limit is None or header.width * header.height <= limit
        mode, orientation = header.mode, exif_orientation(header)
    if small and mode in ("RGB", "L"):  # transparency, palettes, CMYK: open_rgb's rules
        try:
            img = decode_image(torch.frombuffer(data, dtype=torch.uint8), ImageReadMode.RGB)
            if img.dtype == torch.uint8:
                return orient(img, orientation)
        except RuntimeError:  # a variant torchvision does not read: PIL's turn
            pass
    return torch.from_numpy(np.array(open_rgb(data))).permute(2, 0, 1).contiguous()


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1-8; 1 = stored upright) of an opened image, from its
    header: JPEG and WebP keep EXIF there. A PNG's eXIf chunk may follow the pixels, and
    reading it would decode them: a PNG counts only when its header already has it."""
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    try:
        value = img.getexif().get(_ORIENTATION, 1)
    except Exception:  # a damaged EXIF block is no orientation, as PIL treats it
        return 1
    return value if value in range(1, 9) else 1


_ORIENTATION = 0x0112


def orient(img, orientation: int):
    """A decoded (..., H, W) tensor turned upright for an EXIF ``orientation``: the same
    transposes as ``PIL.ImageOps.exif_transpose`` (torchvision's decoders apply none on
    CUDA and only for JPEG on CPU, so every tensor path does it here, one way)."""
    turn = _TURNS.get(orientation)
    return img if turn is None else turn(img).contiguous()


_TURNS = {  # orientation -> what undoes it, on (..., H, W)
    2: lambda x: x.flip(-1),
    3: lambda x: x.flip(-2, -1),
    4: lambda x: x.flip(-2),
    5: lambda x: x.transpose(-2, -1),
    6: lambda x: x.rot90(-1, dims=(-2, -1)),  # stored turned a quarter anticlockwise
    7: lambda x: x.transpose(-2, -1).flip(-2, -1),
    8: lambda x: x.rot90(1, dims=(-2, -1)),
}


def _reduce(img: Image.Image, max_side: int | None) -> Image.Image:
    if not max_side:
        return img
    factor = min(img.size) // (2 * max_side)
    return img.reduce(factor) if factor >= 2 and img.mode in ("RGB", "RGBA", "L") else img


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB."""
    if img.mode in _SIXTEEN_BIT or img.mode == "I":
        a = np.asarray(img).astype(np.int64)
        if img.mode in _SIXTEEN_BIT or a.max(initial=0) > 255:  # 16-bit range
            a = a * 255 // 65535
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":
        a = np.asarray(img, dtype=np.float32)
        scale = 255.0 if a.size and np.nanmax(a) <= 1.0 else 1.0
        a = np.nan_to_num(a * scale)
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, img).convert("RGB")
    return img.convert("RGB")


def failure_reason(e: BaseException) -> str:
    """Why an image was skipped, in a few words (names the decompression-bomb limit)."""
    if isinstance(e, Image.DecompressionBombError):
        return (
            "larger than PIL's decompression-bomb limit "
            f"({Image.MAX_IMAGE_PIXELS * 2:,} pixels; raise PIL.Image.MAX_IMAGE_PIXELS if trusted)"
        )
    if isinstance(e, FileNotFoundError):
        return "file not found"
    if isinstance(e, Image.UnidentifiedImageError):
        return "not a readable image"
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return f"{type(e).__name__}: {text}"[:160]
