"""Labeled train/val splits for evaluation: ROOT/train + ROOT/val (or ROOT/test) class
folders, or file lists of ``path label`` lines."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .sources import ImageSource, file_list_source, folder_source

_LAYOUT = "ROOT/train/<class>/*.jpg and ROOT/val/<class>/*.jpg (or ROOT/test/...)"


@dataclass
class Splits:
    train: ImageSource
    val: ImageSource
    classes: list[str]


def open_splits(
    root: str | None,
    train_list: str | None = None,
    val_list: str | None = None,
    image_key: str | None = None,
    label_key: str | None = None,
) -> Splits:
    """Both splits with one class list; a missing split or mismatched classes is an error.
    ``hf:DIR`` / ``hf:parquet:DIR``: train and validation splits of a Hugging Face dataset
    (``image_key`` / ``label_key`` name its columns; found when None)."""
    if not root:
        raise UserError(f"no data given: pass --data ROOT (data= in Python) laid out as {_LAYOUT}")
    if str(root).startswith("hf:"):
        from .hf import open_hf_splits

        return Splits(*open_hf_splits(str(root), image_key, label_key))
    if train_list or val_list:
        if not (train_list and val_list):
            raise UserError("file lists need both data.file_list (train) and data.val_list")
        return _from_lists(root, train_list, val_list)
    base = Path(root)
    if not base.is_dir():
        raise UserError(f"data folder not found: {base}")
    train_dir = base / "train"
    val_dir = next((base / n for n in ("val", "test") if (base / n).is_dir()), None)
    if not train_dir.is_dir() or val_dir is None:
        missing = "train" if not train_dir.is_dir() else "val (or test)"
        raise UserError(f"{base} has no {missing} split: expected {_LAYOUT}")
    train, val = folder_source(train_dir), folder_source(val_dir)
    for split, src in (("train", train), (val_dir.name, val)):
        if src.labels is None:
            raise UserError(f"{base / split} has images outside class folders: expected {_LAYOUT}")
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise UserError(
            f"class folders differ between {train_dir} and {val_dir}: only in train: "
            f"{', '.join(only_train) or '-'}; only in {val_dir.name}: {', '.join(only_val) or '-'}"
        )
    return Splits(train, val, train.classes)


def _from_lists(root: str, train_list: str, val_list: str) -> Splits:
    train, val = file_list_source(root, train_list), file_list_source(root, val_list)
    for name, src in ((train_list, train), (val_list, val)):
        if src.labels is None:
            raise UserError(f"{name} has no labels: write 'relative/path.jpg LABEL' per line")
    only_val = sorted(set(val.labels) - set(train.labels))
    if only_val:
        raise UserError(
            f"{val_list} has labels that never occur in {train_list}: "
            f"{', '.join(map(str, only_val[:10]))}{' ...' if len(only_val) > 10 else ''} "
            "(a classifier cannot learn them; are the two lists from the same dataset?)"
        )
    n = max(max(train.labels), max(val.labels)) + 1
    classes = [str(i) for i in range(n)]
    train.classes = val.classes = classes
    return Splits(train, val, classes)
