"""Where images come from: a folder searched recursively, a file list, or a Hugging Face
dataset (``hf:``, see ``data.hf``).

A source is a list of paths plus optional integer labels (class subfolders or a
``path label`` file list). Empty sources fail here, before any model is built.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

log = logging.getLogger("mimkit")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class ImageSource:
    """``paths`` name the entries (file paths; for a ``reader`` source, names used in
    messages and caches). ``reader``: entry index -> encoded bytes, for entries that are
    not files (rows of an Arrow table); None reads ``paths[i]`` from disk."""

    paths: Sequence[str]
    labels: list[int] | None = None
    classes: list[str] = field(default_factory=list)
    root: str = ""
    reader: Callable[[int], bytes | str] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int) -> str | bytes:
        """What ``images.open_rgb`` opens for entry ``i``: a file path or encoded bytes."""
        return self.paths[i] if self.reader is None else self.reader(i)


def folder_source(root: str | Path) -> ImageSource:
    """All images below ``root`` (sorted, recursive). Labels come from the first-level
    subfolder when every image sits in one (ImageFolder layout); otherwise none."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data folder not found: {root}")
    paths = walk_images(root)
    if not paths:
        raise UserError(
            f"no images found under {root} (searched recursively for {', '.join(IMAGE_EXTENSIONS)})"
        )
    rel_parts = [Path(p).relative_to(root).parts for p in paths]
    if all(len(parts) >= 2 for parts in rel_parts):
        classes = sorted({parts[0] for parts in rel_parts})
        index = {c: i for i, c in enumerate(classes)}
        return ImageSource(paths, [index[p[0]] for p in rel_parts], classes, str(root))
    return ImageSource(paths, None, [], str(root))


def walk_images(root: Path) -> list[str]:
    """Image files below ``root``, sorted. Symlinked folders are followed once each (a
    folder reached again, e.g. through a link to a parent, is not entered: no loops; of a
    real folder and a link to it, the real one is walked), and a file reached through
    several links is listed once; both are counted in one note."""
    seen_dirs, seen_files, paths, dropped, skipped_dirs = set(), set(), [], 0, 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []
            skipped_dirs += 1
            continue
        seen_dirs.add(real)
        kept = []
        for d in dirnames:
            if os.path.realpath(os.path.join(dirpath, d)) in seen_dirs:
                skipped_dirs += 1
            else:
                kept.append(d)
        # real folders before links, so a link to a sibling is the one left out
        dirnames[:] = sorted(kept, key=lambda d: (os.path.islink(os.path.join(dirpath, d)), d))
        for f in sorted(filenames):
            if not f.lower().endswith(IMAGE_EXTENSIONS) or f.startswith("."):
                continue
            path = os.path.join(dirpath, f)
            key = os.path.realpath(path)
            if key in seen_files:
                dropped += 1
                continue
            seen_files.add(key)
            paths.append(path)
    if dropped or skipped_dirs:
        log.info(
            "%s: %d folders reached again through symlinks not entered, %d duplicate files "
            "listed once",
            root,
            skipped_dirs,
            dropped,
        )
    # the order of a walk by name (a folder's files, then its subfolders), whichever of a
    # real folder and a link to it was walked
    return sorted(paths, key=lambda p: _walk_order(os.path.relpath(p, root)))


def _walk_order(rel: str) -> list[tuple[int, str]]:
    *folders, name = Path(rel).parts
    return [(1, d) for d in folders] + [(0, name)]


def file_list_source(root: str | Path, list_file: str | Path) -> ImageSource:
    """EasyCV-style list: one path relative to ``root`` per line, optionally ``path label``."""
    root, list_file = Path(root), Path(list_file)
    if not list_file.is_file():
        raise UserError(f"file list not found: {list_file}")
    paths, labels = [], []
    for line in list_file.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) == 2 and _is_int(parts[1]):
            paths.append(str(root / parts[0]))
            labels.append(int(parts[1]))
        else:
            paths.append(str(root / line))
    if not paths:
        raise UserError(f"file list {list_file} names no images")
    _check_listed_exist(paths, list_file)
    if labels and len(labels) != len(paths):
        raise UserError(f"{list_file}: some lines have a label and some do not; give all or none")
    classes = [str(c) for c in range(max(labels) + 1)] if labels else []
    return ImageSource(paths, labels or None, classes, str(root))


def _check_listed_exist(paths: list[str], list_file: Path, sample: int = 1000) -> None:
    """Up front, before any worker starts: a list whose files are not there (a wrong
    root, say) is one line, not a traceback after many failed reads. Checks up to
    ``sample`` entries spread over the list."""
    step = max(1, len(paths) // sample)
    probe = paths[::step][:sample]
    missing = [p for p in probe if not os.path.isfile(p)]
    if len(missing) == len(probe):
        raise UserError(
            f"none of the files named in {list_file} exists (first: {missing[0]}): paths are "
            "relative to --data, is it the right root?"
        )
    if missing:
        log.warning(
            "%s: %d of %d checked files are missing (first: %s); they will be skipped",
            list_file,
            len(missing),
            len(probe),
            missing[0],
        )


def _is_int(s: str) -> bool:
    try:
        int(s)
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------------------- schemes


@dataclass(frozen=True)
class Scheme:
    """A kind of ``--data`` besides folders and file lists, found by ``matches(spec)``:

    - ``kind='table'``: rows with an image column (Hugging Face datasets, ``hf:DIR``),
      opened as an ``ImageSource`` (``open``) or its labeled splits (``open_splits``);
    - ``kind='shards'``: tar shards streamed by the shards pipeline (no random access).

    A data module registers its scheme (``register_scheme``) when imported; this module
    imports none of them."""

    name: str
    kind: str  # 'table' | 'shards'
    matches: Callable[[str], bool]
    open: Callable | None = None  # (spec, image_key, label_key) -> ImageSource
    open_splits: Callable | None = None  # (spec, image_key, label_key) -> (train, val, classes)


_SCHEMES: list[Scheme] = []


def register_scheme(scheme: Scheme) -> Scheme:
    _SCHEMES.append(scheme)
    return scheme


def scheme_for(spec) -> Scheme | None:
    """The registered scheme of a ``--data`` value; None for a folder or file list."""
    return next((s for s in _SCHEMES if spec and s.matches(str(spec))), None)


def open_source(
    path: str | None,
    file_list: str | None = None,
    image_key: str | None = None,
    label_key: str | None = None,
) -> ImageSource:
    """A folder, a file list under ``path``, or a table scheme's rows (``hf:DIR`` /
    ``hf:parquet:DIR``, with the image and label columns ``image_key`` / ``label_key``,
    found when None)."""
    if not path:
        raise UserError("no data given: pass --data PATH (a folder of images) or data.path=PATH")
    scheme = scheme_for(path)
    if scheme is not None and scheme.open is not None:
        return scheme.open(str(path), image_key, label_key)
    return file_list_source(path, file_list) if file_list else folder_source(path)


def collect_images(items: list[str], limit: int | None = None) -> list[str]:
    """Image files as given; folders contribute their images (searched recursively),
    spread evenly over their sorted contents when ``limit`` caps the count."""
    paths: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = folder_source(p).paths
            step = max(1, len(found) // limit) if limit else 1
            paths += found[::step][:limit] if limit else found
        elif p.is_file():
            if not p.name.lower().endswith(IMAGE_EXTENSIONS):
                raise UserError(f"{p} is not an image ({', '.join(IMAGE_EXTENSIONS)})")
            paths.append(str(p))
        else:
            raise UserError(f"image or folder not found: {p}")
    return paths[:limit] if limit else paths
