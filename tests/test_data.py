import shutil

import pytest
import torch
from PIL import Image

from mimkit.data import (
    EpochSampler,
    ImageDataset,
    collate,
    file_list_source,
    folder_source,
    pretrain_transform,
)
from mimkit.data.datasets import load_rgb
from mimkit.errors import UserError


def test_folder_source_is_recursive_sorted_and_labelled(image_folder):
    (image_folder / "cat" / "nested").mkdir()
    shutil.copy(next((image_folder / "cat").glob("*.jpg")), image_folder / "cat/nested/x.JPEG")
    (image_folder / "cat" / "notes.txt").write_text("not an image")
    src = folder_source(image_folder)
    assert len(src) == 65
    assert src.paths == sorted(src.paths, key=lambda p: p)  # deterministic order
    assert src.classes == ["airplane", "cat", "ship", "truck"]
    assert src.labels[src.paths.index(str(image_folder / "cat/nested/x.JPEG"))] == 1


def test_flat_folder_has_no_labels(tmp_path, image_folder):
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in list(image_folder.rglob("*.jpg"))[:3]:
        shutil.copy(f, flat / f.name)
    src = folder_source(flat)
    assert len(src) == 3 and src.labels is None


def test_empty_or_missing_source_is_clear(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(UserError, match="no images found under .*empty"):
        folder_source(tmp_path / "empty")
    with pytest.raises(UserError, match="data folder not found"):
        folder_source(tmp_path / "nope")


def test_file_list_source(tmp_path, image_folder):
    files = sorted(image_folder.rglob("*.jpg"))[:4]
    lst = tmp_path / "train.txt"
    lst.write_text("\n".join(str(f.relative_to(image_folder)) for f in files) + "\n")
    src = file_list_source(image_folder, lst)
    assert src.paths == [str(f) for f in files] and src.labels is None
    lst.write_text("\n".join(f"{f.relative_to(image_folder)} {i % 2}" for i, f in enumerate(files)))
    assert file_list_source(image_folder, lst).labels == [0, 1, 0, 1]
    with pytest.raises(UserError, match="file list not found"):
        file_list_source(image_folder, tmp_path / "missing.txt")


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16"])
def test_any_mode_becomes_rgb(tmp_path, mode):
    path = tmp_path / f"img_{mode.replace(';', '')}.png"
    img = Image.new("RGB", (10, 8), (200, 30, 40)).convert(mode)
    img.save(path if mode != "CMYK" else path.with_suffix(".jpg"))
    out = load_rgb(str(path if mode != "CMYK" else path.with_suffix(".jpg")))
    assert out.mode == "RGB" and out.size == (10, 8)


def test_corrupt_images_are_skipped_and_reported(image_folder):
    bad = image_folder / "cat" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    truncated = image_folder / "cat" / "truncated.jpg"
    good = next((image_folder / "ship").glob("*.jpg")).read_bytes()
    truncated.write_bytes(good[: len(good) // 3])
    src = folder_source(image_folder)
    ds = ImageDataset(src, pretrain_transform(32))
    items = [ds[i] for i in range(len(ds))]
    batch = collate(items)
    assert batch["image"].shape == (len(src), 3, 32, 32)  # the batch keeps its size
    # counted once each by the trainer; each entry carries why it was skipped
    assert {path for path, _ in batch["bad"]} == {str(bad), str(truncated)}
    assert all(reason for _, reason in batch["bad"])


def test_augmentation_depends_only_on_seed(image_folder):
    ds = ImageDataset(folder_source(image_folder), pretrain_transform(32))
    a, _, _ = ds[(3, 1234)]
    torch.rand(100)  # global RNG use in between must not matter
    b, _, _ = ds[(3, 1234)]
    c, _, _ = ds[(3, 999)]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sampler_shards_cover_every_index_once():
    n, world = 103, 2
    shards = [EpochSampler(n, seed=5, rank=r, world=world) for r in range(world)]
    for s in shards:
        s.set_epoch(3)
    idx = [i for s in shards for i, _ in s]
    assert len(idx) == 104 and set(idx) == set(range(n))  # one wrap-around pad
    assert len(shards[0]) == 52
    again = EpochSampler(n, seed=5, rank=0, world=world)
    again.set_epoch(3)
    assert list(again) == list(shards[0])
    again.set_epoch(4)
    assert list(again) != list(shards[0])  # a new order each epoch
