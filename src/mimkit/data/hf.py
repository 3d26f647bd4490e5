"""Hugging Face ``datasets`` as image sources, read in place (memory-mapped Arrow).

- ``hf:DIR``: a ``Dataset`` or ``DatasetDict`` written by ``save_to_disk``;
- ``hf:parquet:DIR``: Parquet files (a file, a folder of ``*.parquet``, or per-split
  ``DIR/train/`` + ``DIR/validation|val|test/`` folders or ``train-*.parquet`` +
  ``validation-*.parquet`` files, also under ``DIR/data/`` as the Hub lays them out).
  Parquet cannot be memory-mapped: ``datasets`` converts it once into an Arrow file in
  the mimkit cache (``$MIMKIT_CACHE/hf-datasets``) and maps that.

The image column is ``data.image_key`` or found: a ``datasets.Image`` feature, a struct
with ``bytes``, or a column named image/img/jpg/png/webp. Images stay encoded in the table
and are decoded by ``images.open_rgb``, like files. Labels (``data.label_key``, or the
``ClassLabel`` column) are read for the labeled commands.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import UserError
from ..utils import distributed as dist
from ..utils.cache import cache_root
from .sources import ImageSource, Scheme, register_scheme

_IMAGE_NAMES = ("image", "img", "jpg", "jpeg", "png", "webp")
_VAL_SPLITS = ("validation", "val", "test")


class Names(Sequence):
    """``prefix[i]`` for each row, made on demand (no list of millions of strings)."""

    def __init__(self, prefix: str, n: int):
        self.prefix, self.n = prefix, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return f"{self.prefix}[{i % self.n}]"


class Reader:
    """Row index -> encoded image bytes (or a file path the row refers to). Picklable:
    DataLoader workers get the memory-mapped table, not a copy."""

    def __init__(self, ds, column: str):
        from datasets import Image

        ds = ds.select_columns([column])
        if isinstance(ds.features[column], Image):
            ds = ds.cast_column(column, Image(decode=False))  # bytes, not PIL images
        self.ds, self.column = ds, column

    def __call__(self, i: int) -> bytes | str:
        value = self.ds[i][self.column]
        if isinstance(value, dict):  # Image / {'bytes', 'path'}
            return value.get("bytes") or value["path"]
        return value


# ---------------------------------------------------------------------------- opening


def open_hf_source(
    spec: str, image_key: str | None = None, label_key: str | None = None
) -> ImageSource:
    """Pretraining data: a Dataset, or the train split (or only split) of a DatasetDict."""
    loaded = _load(spec)
    if isinstance(loaded, dict):
        name = "train" if "train" in loaded else next(iter(loaded)) if len(loaded) == 1 else None
        if name is None:
            raise UserError(
                f"{spec} holds splits {', '.join(loaded)} and none is 'train': pass one split"
            )
        loaded = loaded[name]
    label_col = _label_column(loaded, label_key)
    labels, classes = _labels([loaded], label_col)
    return _source(spec, loaded, image_key, labels[0], classes)


def open_hf_splits(
    spec: str, image_key: str | None = None, label_key: str | None = None
) -> tuple[ImageSource, ImageSource, list[str]]:
    """(train, val, classes) from a DatasetDict with train and validation|val|test splits."""
    loaded = _load(spec, splits=True)
    if not isinstance(loaded, dict):
        raise UserError(
            f"{spec} is a single dataset: labeled commands need train and validation splits "
            "(save a DatasetDict(train=..., validation=...) with save_to_disk)"
        )
    val_name = next((n for n in _VAL_SPLITS if n in loaded), None)
    if "train" not in loaded or val_name is None:
        raise UserError(
            f"{spec} has splits {', '.join(loaded) or 'none'}: expected train and "
            f"{' or '.join(_VAL_SPLITS)}"
        )
    train, val = loaded["train"], loaded[val_name]
    label_col = _label_column(train, label_key)
    if label_col is None:
        raise UserError(
            f"{spec}: no label column found (columns: {', '.join(train.column_names)}): "
            "set data.label_key"
        )
    (train_labels, val_labels), classes = _labels([train, val], label_col)
    for name, labels in (("train", train_labels), (val_name, val_labels)):
        if any(y < 0 for y in labels):
            raise UserError(f"{spec}: split {name} has rows without a label (-1)")
    return (
        _source(f"{spec}/train", train, image_key, train_labels, classes),
        _source(f"{spec}/{val_name}", val, image_key, val_labels, classes),
        classes,
    )


def _source(name: str, ds, image_key, labels, classes) -> ImageSource:
    if len(ds) == 0:
        raise UserError(f"{name} has no rows")
    column = _image_column(ds, image_key, name)
    return ImageSource(Names(name, len(ds)), labels, classes, name, reader=Reader(ds, column))


def _load(spec: str, splits: bool = False):
    """A Dataset, or a dict of split name -> Dataset."""
    try:
        import datasets
    except ImportError:
        raise UserError(
            f"--data {spec} needs the datasets package: pip install 'mimkit[datasets]'"
        ) from None
    rest = spec.removeprefix("hf:")
    if rest.startswith("parquet:"):
        return _load_parquet(rest.removeprefix("parquet:"), splits)
    path = Path(rest).expanduser()
    if not path.exists():
        raise UserError(
            f"hf:{rest} is not a local dataset; download it with "
            f"datasets.load_dataset('{rest}').save_to_disk(DIR) and pass hf:DIR"
        )
    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise UserError(
            f"{path} is not a dataset written by save_to_disk (for Parquet files pass "
            f"hf:parquet:{rest})"
        ) from None
    return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else loaded


def _load_parquet(folder: str, splits: bool):
    root = Path(folder).expanduser()
    if not root.exists():
        raise UserError(f"Parquet data not found: {root}")
    found = _parquet_splits(root)
    if not found:
        files = [root] if root.is_file() else sorted(root.rglob("*.parquet"))
        if not files:
            raise UserError(f"no .parquet files under {root}")
        if splits:
            raise UserError(
                f"{root}: no train and validation Parquet splits (expected train/ and "
                "validation/ folders, or train-*.parquet and validation-*.parquet files)"
            )
        found = {"train": files}
    return {name: _from_parquet(files) for name, files in found.items()}


def _parquet_splits(root: Path) -> dict[str, list[Path]]:
    """Split name -> files: ``train/*.parquet`` folders or ``train-*.parquet`` names."""
    if root.is_file():
        return {}
    for base in (root, root / "data"):
        found = {}
        for name in ("train", *_VAL_SPLITS):
            files = sorted((base / name).rglob("*.parquet")) if (base / name).is_dir() else []
            files = files or sorted(base.glob(f"{name}-*.parquet")) + sorted(
                base.glob(f"{name}.parquet")
            )
            if files:
                found[name] = files
        if "train" in found:
            return found
    return {}


def _from_parquet(files: list[Path]):
    """Parquet -> memory-mapped Arrow in the cache (rank 0 converts, the others wait)."""
    from datasets import Dataset

    if not dist.is_main():
        dist.barrier()
    try:
        ds = Dataset.from_parquet(
            [str(f) for f in files], cache_dir=str(cache_root() / "hf-datasets")
        )
    finally:
        if dist.is_main():
            dist.barrier()
    return ds


# ---------------------------------------------------------------------------- columns


def _image_column(ds, image_key: str | None, name: str) -> str:
    from datasets import Image

    cols, feats = ds.column_names, ds.features
    if image_key:
        if image_key not in cols:
            raise UserError(
                f"{name}: no column '{image_key}' (data.image_key); columns: {', '.join(cols)}"
            )
        return image_key
    for test in (
        lambda c: isinstance(feats[c], Image),
        lambda c: isinstance(feats[c], dict) and "bytes" in feats[c],
        lambda c: c.lower() in _IMAGE_NAMES,
    ):
        found = [c for c in cols if test(c)]
        if found:
            return found[0]
    raise UserError(
        f"{name}: no image column found (columns: {', '.join(cols)}): set data.image_key"
    )


def _label_column(ds, label_key: str | None) -> str | None:
    from datasets import ClassLabel

    cols, feats = ds.column_names, ds.features
    if label_key:
        if label_key not in cols:
            raise UserError(f"no column '{label_key}' (data.label_key); columns: {', '.join(cols)}")
        return label_key
    found = [c for c in cols if isinstance(feats[c], ClassLabel)]
    return ("label" if "label" in found else found[0]) if found else None


def _labels(parts: list, column: str | None) -> tuple[list[list[int] | None], list[str]]:
    """Integer labels of each part and one class list: ClassLabel names, the sorted
    names of a string column, or 0..max of an integer column."""
    from datasets import ClassLabel

    if column is None:
        return [None] * len(parts), []
    values = [_column(ds, column) for ds in parts]
    feature = parts[0].features[column]
    if isinstance(feature, ClassLabel):
        return values, list(feature.names)
    flat = [v for vs in values for v in vs]
    if any(v is None for v in flat):
        raise UserError(f"label column '{column}' has empty rows")
    if all(isinstance(v, str) for v in flat):
        classes = sorted(set(flat))
        index = {c: i for i, c in enumerate(classes)}
        return [[index[v] for v in vs] for vs in values], classes
    if all(isinstance(v, int) and not isinstance(v, bool) for v in flat):
        return values, [str(i) for i in range(max(flat) + 1)]
    raise UserError(f"label column '{column}' holds neither integers nor class names")


def _column(ds, column: str) -> list:
    """One column as a Python list, read from the Arrow table (respects row selections)."""
    return ds.select_columns([column]).with_format("arrow")[:][column].to_pylist()


register_scheme(
    Scheme(
        "hf",
        kind="table",
        matches=lambda spec: spec.startswith("hf:"),
        open=open_hf_source,
        open_splits=open_hf_splits,
    )
)
