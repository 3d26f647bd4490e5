"""Data at scale: webdataset shards (folders, brace patterns, pipe: commands) and
Hugging Face datasets (save_to_disk, Parquet) as sources."""

import json

import numpy as np
import pytest
import torch
from torchvision.transforms import v2 as T

from mimkit.cli import main
from mimkit.data import ImageDataset, collate, folder_source, open_source, open_splits
from mimkit.data.images import open_rgb
from mimkit.data.pipelines import build_pretrain_loader, open_pretrain_data
from mimkit.data.shards import ShardDataset, ShardLoader, open_shards, write_shards
from mimkit.errors import UserError

from .conftest import CIFAR_MINI, TINY_MAE

TO_TENSOR = T.Compose([T.PILToTensor()])


def _labels(ds, workers=2):
    loader = torch.utils.data.DataLoader(
        ds, batch_size=4, num_workers=workers, collate_fn=lambda items: [i[1] for i in items]
    )
    return [label for batch in loader for label in batch]


@pytest.fixture
def indexed_shards(tmp_path, image_folder):
    """8 shards of 8 samples; label = sample index."""
    src = folder_source(image_folder)
    src.labels = list(range(len(src)))
    write_shards(src, tmp_path / "shards", shard_size=8)
    return tmp_path / "shards"


def test_pipe_url_with_num_samples_covers_every_sample_once(indexed_shards):
    url = f"pipe:cat {indexed_shards}/shard-{{000000..000007}}.tar"
    with pytest.raises(UserError, match="data.num_samples"):
        open_shards(url)
    seen = []
    for rank in range(2):
        ds = ShardDataset(url, TO_TENSOR, seed=3, rank=rank, world=2, num_samples=64)
        ds.set_epoch(1)
        labels = _labels(ds)
        assert len(labels) == len(ds) == 32
        seen += labels
    assert sorted(seen) == list(range(64))


def test_brace_pattern_beside_an_index_needs_no_count(indexed_shards):
    shards = open_shards(f"{indexed_shards}/shard-{{000000..000003}}.tar")
    assert len(shards.urls) == 4 and shards.num_samples == 32
    assert shards.classes == ["airplane", "cat", "ship", "truck"]
    data = open_pretrain_data("files", str(indexed_shards), None)  # a shard folder: shards
    assert data.pipeline == "shards" and data.num_images == 64
    with pytest.raises(UserError, match="shard not found"):
        open_shards(f"{indexed_shards}/shard-{{000000..000009}}.tar")


def test_shard_epochs_are_seeded_and_unreadable_samples_named(tmp_path, image_folder):
    src = folder_source(image_folder)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    src.paths = [*src.paths[:3], str(bad), *src.paths[4:16]]
    src.labels = list(range(16))
    write_shards(src, tmp_path / "sh", shard_size=8)
    transform = T.Compose([T.PILToTensor(), T.RandomResizedCrop(8, antialias=True)])
    ds = ShardDataset(tmp_path / "sh", transform, seed=0, rank=0, world=1)
    loader = ShardLoader(ds, 5, 0, False, collate)
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    reasons = [b for batch in batches for b in batch["bad"]]
    assert reasons and reasons[0][0] == "shard-000000.tar:000000003"
    again = list(ShardLoader(ds, 5, 0, False, collate))
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(batches, again))
    ds.set_epoch(1)
    other = list(ShardLoader(ds, 5, 0, False, collate))
    assert not torch.equal(batches[0]["image"], other[0]["image"])


def test_persistent_workers_follow_set_epoch(indexed_shards):
    def order(loader):
        return [label for batch in loader for label in batch["label"].tolist()]

    ds = ShardDataset(indexed_shards, TO_TENSOR, seed=0, rank=0, world=1)
    loader = ShardLoader(ds, 8, 2, False, collate)
    first = order(loader)
    ds.set_epoch(1)
    second = order(loader)  # the same (persistent) workers, told the epoch through ds
    fresh = ShardDataset(indexed_shards, TO_TENSOR, seed=0, rank=0, world=1)
    fresh.set_epoch(1)
    assert second == order(ShardLoader(fresh, 8, 2, False, collate)) != first
    assert sorted(first) == sorted(second) == list(range(64))


def test_too_few_shards_for_the_workers_is_one_line(indexed_shards):
    ds = ShardDataset(indexed_shards, TO_TENSOR, rank=0, world=8)
    with pytest.raises(UserError, match="8 shards for 8 processes x 2 workers"):
        ShardLoader(ds, 4, 2, False, collate)


# ---------------------------------------------------------------------------- Hugging Face

CLASSES = ["airplane", "cat", "ship"]


def _rows(split: str, n: int):
    images, labels, files = [], [], []
    for ci, c in enumerate(CLASSES):
        for f in sorted((CIFAR_MINI / split / c).iterdir())[:n]:
            images.append({"bytes": f.read_bytes(), "path": None})
            labels.append(ci)
            files.append(f)
    return {"image": images, "label": labels}, files


@pytest.fixture(scope="module")
def hf_data(tmp_path_factory):
    """A DatasetDict (train 3x6, validation 3x4) saved with save_to_disk, the same as
    Parquet files (train-*.parquet, validation-*.parquet), and the source files."""
    datasets = pytest.importorskip("datasets")
    root = tmp_path_factory.mktemp("hf")
    feats = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)}
    )
    parts, files = {}, {}
    for split, src, n in (("train", "train", 6), ("validation", "test", 4)):
        rows, files[split] = _rows(src, n)
        parts[split] = datasets.Dataset.from_dict(rows, features=feats)
        parts[split].to_parquet(str(root / "pq" / f"{split}-00000-of-00001.parquet"))
    datasets.DatasetDict(parts).save_to_disk(str(root / "dd"))
    return root, files


def _pixels(src) -> torch.Tensor:
    return torch.from_numpy(np.asarray(open_rgb(src)))


@pytest.mark.parametrize("kind", ["dd", "parquet"])
def test_hf_splits_yield_the_right_images_and_labels(hf_data, kind, monkeypatch, tmp_path):
    monkeypatch.setenv("MIMKIT_CACHE", str(tmp_path / "cache"))
    root, files = hf_data
    spec = f"hf:{root / 'dd'}" if kind == "dd" else f"hf:parquet:{root / 'pq'}"
    splits = open_splits(spec)
    assert splits.classes == CLASSES
    assert len(splits.train) == 18 and len(splits.val) == 12
    assert splits.val.labels == [0] * 4 + [1] * 4 + [2] * 4
    for src, split in ((splits.train, "train"), (splits.val, "validation")):
        for i in (0, 7, len(src) - 1):
            assert torch.equal(_pixels(src.read(i)), _pixels(files[split][i]))
    ds = ImageDataset(splits.val, T.Compose([T.PILToTensor()]))
    loader = torch.utils.data.DataLoader(ds, batch_size=6, num_workers=1, collate_fn=collate)
    batch = next(iter(loader))
    assert batch["image"].shape == (6, 3, 32, 32) and batch["label"].tolist() == [0] * 4 + [1] * 2


def test_hf_pretrain_data_and_errors(hf_data, monkeypatch, tmp_path):
    monkeypatch.setenv("MIMKIT_CACHE", str(tmp_path / "cache"))
    root, _ = hf_data
    data = open_pretrain_data("files", f"hf:{root / 'dd'}", None)
    assert data.hf is not None and data.source is None and data.num_images == 18
    loader = build_pretrain_loader(data, 16, 4, 0, (0.5, 1.0), True, 0, torch.device("cpu"))
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["bad"] == []
    src = open_source(f"hf:parquet:{root / 'pq' / 'train-00000-of-00001.parquet'}")
    assert len(src) == 18 and src.paths[3].endswith("[3]")
    with pytest.raises(UserError, match="hf:cifar10 is not a local dataset; download it"):
        open_source("hf:cifar10")
    with pytest.raises(UserError, match="no column 'pixels'"):
        open_source(f"hf:{root / 'dd'}", image_key="pixels")
    with pytest.raises(UserError, match="data.pipeline=files"):
        open_pretrain_data("tensor_cache", f"hf:{root / 'dd'}", None)


def test_knn_and_pretrain_commands_read_hf_data(hf_data, tiny_mae_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("MIMKIT_CACHE", str(tmp_path / "cache"))
    root, _ = hf_data
    spec = f"hf:parquet:{root / 'pq'}"
    common = ["--out", str(tmp_path / "knn"), "data.num_workers=0", "eval.knn_k=[3]"]
    assert main(["knn", "--checkpoint", str(tiny_mae_ckpt), "--data", spec, *common]) == 0
    m = json.loads((tmp_path / "knn" / "metrics.json").read_text())
    assert m["num_train"] == 18 and m["num_images"] == 12 and set(m["per_class"]) == set(CLASSES)
    run = ["--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "6", *TINY_MAE]
    assert main(["pretrain", "--data", f"hf:{root / 'dd'}", *run]) == 0
    assert (tmp_path / "run" / "checkpoint-last.pth").is_file()


def test_shards_from_an_hf_dataset_hold_its_bytes_and_labels(hf_data, monkeypatch, tmp_path):
    monkeypatch.setenv("MIMKIT_CACHE", str(tmp_path / "cache"))
    root, files = hf_data
    src = open_source(f"hf:{root / 'dd'}")
    write_shards(src, tmp_path / "shards", shard_size=8)
    shards = open_shards(str(tmp_path / "shards"))
    assert shards.num_samples == 18 and shards.classes == CLASSES
    ds = ShardDataset(str(tmp_path / "shards"), TO_TENSOR, seed=0, rank=0, world=1)
    ds.set_epoch(0)
    loader = torch.utils.data.DataLoader(ds, batch_size=18, collate_fn=lambda items: items)
    items = next(iter(loader))
    assert sorted(item[1] for item in items) == [0] * 6 + [1] * 6 + [2] * 6
    # the bytes went in as they were: decoded pixels equal the source files' (as a set)
    want = sorted(_pixels(f).sum().item() for f in files["train"])
    assert sorted(int(item[0].sum()) for item in items) == want


def test_shards_command_takes_the_label_column_of_a_parquet_set(tmp_path, monkeypatch, mimkit_log):
    """A Parquet set whose labels are strings in a column of another name: ``mimkit
    shards --label-key`` keeps them; without it the shards are unlabelled, and it says so."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("MIMKIT_CACHE", str(tmp_path / "cache"))
    rows, _ = _rows("train", 2)
    rows = {"image": rows["image"], "kind": [CLASSES[i] for i in rows.pop("label")]}
    feats = datasets.Features({"image": datasets.Image(), "kind": datasets.Value("string")})
    datasets.Dataset.from_dict(rows, features=feats).to_parquet(str(tmp_path / "pq" / "t.parquet"))
    spec = f"hf:parquet:{tmp_path / 'pq'}"
    assert main(["shards", "--data", spec, "--out", str(tmp_path / "a")]) == 0
    assert "no labels found" in mimkit_log.text and "--label-key" in mimkit_log.text
    assert open_shards(str(tmp_path / "a")).classes == []
    argv = ["shards", "--data", spec, "--out", str(tmp_path / "b"), "--label-key", "kind"]
    assert main(argv) == 0
    assert open_shards(str(tmp_path / "b")).classes == CLASSES


_SHARD_DDP = r"""
import sys, torch, torch.distributed as tdist
from torchvision.transforms import v2 as T
from mimkit.data.shards import ShardDataset
from mimkit.utils.distributed import all_gather_object, init, rank

init(torch.device("cpu"))
ds = ShardDataset(sys.argv[1], T.Compose([T.PILToTensor()]), seed=5)  # rank, world: the group's
loader = torch.utils.data.DataLoader(
    ds, batch_size=4, num_workers=2, collate_fn=lambda items: [i[1] for i in items]
)
for epoch in (0, 1):
    ds.set_epoch(epoch)
    mine = [label for batch in loader for label in batch]
    every = all_gather_object(mine)
    if rank() == 0:
        flat = sorted(l for part in every for l in part)
        print("EPOCH", epoch, "ranks", ds.world, "sizes", [len(p) for p in every],
              "once", flat == list(range(64)), "order", every[0][:4])
tdist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_processes_read_every_shard_sample_once_per_epoch(indexed_shards, tmp_path):
    """Under torchrun (2 gloo ranks x 2 workers, 8 shards of 8): the rank and world come
    from the process group, and each epoch every sample is read exactly once."""
    import subprocess
    import sys

    script = tmp_path / "shards_ddp.py"
    script.write_text(_SHARD_DDP)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    r = subprocess.run(
        [*cmd, str(script), str(indexed_shards)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [line for line in r.stdout.splitlines() if line.startswith("EPOCH")]
    assert len(lines) == 2, r.stdout
    for line in lines:
        assert "ranks 2 sizes [32, 32] once True" in line, line
    assert lines[0].split("order")[1] != lines[1].split("order")[1]  # reshuffled per epoch
