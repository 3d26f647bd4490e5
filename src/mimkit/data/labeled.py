"""Labeled train/val splits for evaluation: ROOT/train + ROOT/val (or ROOT/test) class
folders, or file lists of ``path label`` lines."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .sources import ImageSource, file_list_source, folder_source, scheme_for

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
    scheme = scheme_for(root)
    if scheme is not None and scheme.open_splits is not None:
        found = scheme.open_splits(str(root), image_key, label_key)
        return _one_class_is_no_test(Splits(*found), root)
    if train_list or val_list:
        if not (train_list and val_list):
            raise UserError("file lists need both data.file_list (train) and data.val_list")
        return _one_class_is_no_test(_from_lists(root, train_list, val_list), train_list)
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
    return _one_class_is_no_test(Splits(train, val, train.classes), train_dir)


def _one_class_is_no_test(splits: Splits, where) -> Splits:
    """With one class every prediction is right: kNN, a probe or fine-tuning would report
    100% and mean nothing."""
    present = sorted(set(splits.train.labels or []))
    if len(present) == 1:
        name = splits.classes[present[0]] if present[0] < len(splits.classes) else present[0]
        raise UserError(
            f"{where} has one class ({name}): accuracy means nothing with a single class "
            "(every answer is right); give images of two classes or more"
        )
    return splits


def _from_lists(root: str, train_list: str, val_list: str) -> Splits:
    train, val = file_list_source(root, train_list), file_list_source(root, val_list)
    for name, src in ((train_list, train), (val_list, val)):
        if src.labels is None:
            raise UserError(f"{name} has no labels: write 'relative/path.jpg LABEL' per line")
        _check_labels(name, src.labels)
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


# Labels are class indices 0..C-1 and the largest sets C: a label this high would ask for
# a confusion matrix of C^2 entries (80 GB at 100,000) and a head as wide, which no
# labeled set mimkit evaluates has (ImageNet-21k: 21,841 classes).
MAX_CLASSES = 100_000


def _check_labels(list_file: str, labels: list[int]) -> None:
    """Up front, when the list is read: a negative or huge label would otherwise fail
    only after every feature was extracted, as a traceback."""
    if all(0 <= y < MAX_CLASSES for y in labels):
        return
    lineno, label = _first_bad_label(Path(list_file))
    what = "is negative" if label < 0 else f"is {MAX_CLASSES:,} or more"
    raise UserError(
        f"{list_file}:{lineno}: label {label} {what}: labels are class indices 0, 1, 2, ... "
        f"(below {MAX_CLASSES:,})"
    )


def _first_bad_label(list_file: Path) -> tuple[int, int]:
    """(line number, label) of the first out-of-range label, read as ``file_list_source``
    reads a line (``path label``, the label last)."""
    for lineno, line in enumerate(list_file.read_text().splitlines(), 1):
        parts = line.strip().rsplit(maxsplit=1)
        if len(parts) == 2 and not line.strip().startswith("#"):
            try:
                label = int(parts[1])
            except ValueError:
                continue
            if not 0 <= label < MAX_CLASSES:
                return lineno, label
    return 0, -1  # not reached: the source read the same lines
