"""Where images come from: a folder searched recursively, or a file list.

A source is a list of paths plus optional integer labels (class subfolders or a
``path label`` file list). Empty sources fail here, before any model is built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class ImageSource:
    paths: list[str]
    labels: list[int] | None = None
    classes: list[str] = field(default_factory=list)
    root: str = ""

    def __len__(self) -> int:
        return len(self.paths)


def FolderSource(root: str | Path) -> ImageSource:  # noqa: N802  (reads like a class)
    """All images below ``root`` (sorted, recursive). Labels come from the first-level
    subfolder when every image sits in one (ImageFolder layout); otherwise none."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data folder not found: {root}")
    paths = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        paths += [
            os.path.join(dirpath, f)
            for f in sorted(filenames)
            if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
        ]
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


def FileListSource(root: str | Path, list_file: str | Path) -> ImageSource:  # noqa: N802
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
    if labels and len(labels) != len(paths):
        raise UserError(f"{list_file}: some lines have a label and some do not; give all or none")
    classes = [str(c) for c in range(max(labels) + 1)] if labels else []
    return ImageSource(paths, labels or None, classes, str(root))


def _is_int(s: str) -> bool:
    try:
        int(s)
        return True
    except ValueError:
        return False


def open_source(path: str | None, file_list: str | None = None) -> ImageSource:
    if not path:
        raise UserError("no data given: pass --data PATH (a folder of images) or data.path=PATH")
    return FileListSource(path, file_list) if file_list else FolderSource(path)
