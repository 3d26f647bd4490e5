"""``mimkit segment train / evaluate / predict`` as a job: both heads from the CLI and from
Python on COCO128 drawn as semantic masks, a mask-folder layout and an ADE20K layout; the
backbones mimkit reads (its MAE checkpoint, official iBOT and SimMIM files, timm models,
random init) at the crop size; bad input stopped before training; 2 gloo processes scoring
the same as one; the benchmark timing the segmentation step."""

from __future__ import annotations

import json
import math
import os
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mimkit
from mimkit import segmentation as seg
from mimkit.cli import main
from mimkit.errors import UserError
from mimkit.recipes import segment as job

from .conftest import SHARED_DIR, TORCHRUN_MIMKIT

COCO128 = SHARED_DIR / "data" / "coco128.tar.gz"
TINY = "upernet_vit_tiny_coco128"
INTEROP = SHARED_DIR / "interop"

# tiny everything: 32 px crops, test images at a short side of 32, 1 epoch, fp32 (so the
# training's validation and a later evaluation compute the same numbers)
SMALL = [
    "data.img_size=32",
    "data.batch_size=4",
    "data.num_workers=0",
    "segment.scale=[64,32]",
    "segment.channels=16",
    "segment.aux_channels=8",
    "segment.warmup_iters=2",
    "segment.pictures=1",
    "train.precision=fp32",
    "train.tensorboard=false",
    "train.log_every=1",
]


def _values(items: list[str]) -> dict:
    """SMALL as keyword arguments of the Python API."""
    out = {}
    for item in items:
        key, value = item.split("=", 1)
        out[key] = json.loads(value) if value[0] in "[0123456789" else value
    out["train.tensorboard"] = False
    return out


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """COCO128 images with our split: train.json (first 8 images), val.json (next 4)."""
    if not COCO128.is_file():
        pytest.skip(f"{COCO128} not present")
    root = tmp_path_factory.mktemp("coco128")
    with tarfile.open(COCO128) as tar:
        tar.extractall(root, filter="data")
    data = json.loads((root / "annotations" / "instances_train2017.json").read_text())
    images = sorted(data["images"], key=lambda im: im["id"])
    for name, part in (("train", images[:8]), ("val", images[8:12])):
        ids = {im["id"] for im in part}
        sub = {
            **data,
            "images": part,
            "annotations": [a for a in data["annotations"] if a["image_id"] in ids],
        }
        (root / f"{name}.json").write_text(json.dumps(sub))
    return root / "train2017", root / "train.json", root / "val.json"


@pytest.fixture(scope="module")
def mask_folder(coco, tmp_path_factory):
    """The same images as an image folder + palette-PNG mask folder + class list."""
    images, train_ann, val_ann = coco
    root = tmp_path_factory.mktemp("folder")
    for split, ann in (("train", train_ann), ("val", val_ann)):
        src = seg.CocoSemantic(images, ann)
        for i in range(len(src)):
            img, label = src.load(i)
            (root / split / "images").mkdir(parents=True, exist_ok=True)
            (root / split / "masks").mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(root / split / "images" / f"{i}.png")
            seg.save_mask(label, root / split / "masks" / f"{i}.png", seg.palette(81))
    (root / "classes.txt").write_text("\n".join(src.classes) + "\n")
    return root


def _metrics(out) -> dict:
    return json.loads((out / "metrics.json").read_text())


# ---------------------------------------------------------------------------- fast units


def test_poly_schedule_is_mmcvs_with_linear_warmup():
    lr = job.poly_lr(1e-4, 0.0, total=1000, warmup=100, ratio=1e-6, power=1.0)
    assert lr(0, 0) == pytest.approx(1e-4 * 1e-6)  # mmcv: regular x warmup_ratio at step 0
    regular = 1e-4 * (1 - 50 / 1000)
    assert lr(50, 0) == pytest.approx(regular * (1 - 0.5 * (1 - 1e-6)))
    assert lr(100, 0) == pytest.approx(1e-4 * 0.9)  # warm-up over: the poly value itself
    assert lr(1000, 0) == 0.0 and lr(500, 0) == pytest.approx(0.5e-4)
    # without segment.iters the run's planned steps are the length
    assert job.poly_lr(1.0, 0.0, 0, 0, 1e-6, 1.0)(25, 100) == pytest.approx(0.75)


def test_position_table_fitted_to_a_non_square_crop_and_beit_refused(tmp_path):
    from mimkit.models import create_model

    vit = create_model("vit_tiny_cifar", depth=1, embed_dim=32, num_heads=2)  # 32 px, 8x8
    before = vit.pos_embed.detach().clone()
    job.fit_to_crop(vit, (32, 48))
    assert vit.pos_embed.shape == (1, 1 + 8 * 12, 32) and vit.patch_embed.grid_size == (8, 12)
    assert torch.equal(vit.pos_embed[:, 0], before[:, 0])  # cls entry kept
    model = seg.upernet(vit, 3, channels=8, aux_channels=8)
    assert model(torch.randn(2, 3, 32, 48)).shape == (2, 3, 32, 48)
    with pytest.raises(UserError, match="multiple of the patch size 4"):
        job.fit_to_crop(vit, (30, 48))
    beit = create_model("beit", img_size=32, patch_size=4, embed_dim=32, depth=1, num_heads=2)
    with pytest.raises(UserError, match="square crops only"):
        job.fit_to_crop(beit, (32, 48))
    # a window smaller than the crop (a small image's) is padded up to BEiT's built size
    small = seg.upernet(beit, 3, channels=8, aux_channels=8).eval()
    assert small(torch.randn(1, 3, 20, 28)).shape == (1, 3, 20, 28)


def test_bad_masks_stop_the_run_before_training_with_one_line(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)).save(images / f"{i}.png")
        Image.fromarray(np.full((16, 24), i % 3, np.uint8), mode="L").save(masks / f"{i}.png")
    (tmp_path / "classes.txt").write_text("sky\nroad\ncar\n")
    Image.fromarray(np.zeros((5, 7), np.uint8), mode="L").save(masks / "3.png")  # wrong size
    out = tmp_path / "run"
    values = {
        "segment.masks": str(masks),
        "segment.classes": str(tmp_path / "classes.txt"),
        "segment.val_split": 2,
        "segment.pixels": True,
        "segment.head": "linear",
    }
    with pytest.raises(UserError) as e:
        mimkit.segment.train(TINY, data=images, out=out, **values)
    text = str(e.value)
    assert "\n" not in text and "3.png" in text and "7x5" in text and "24x16" in text
    assert not (out / "checkpoint-last.pth").exists()  # nothing trained
    Image.fromarray(np.full((16, 24), 7, np.uint8), mode="L").save(masks / "3.png")
    with pytest.raises(UserError, match=r"3\.png holds the value 7, beyond the 3 classes"):
        mimkit.segment.train(TINY, data=images, out=out, **values)
    (masks / "3.png").unlink()
    with pytest.raises(UserError, match=r"no mask for image .*3\.png"):
        mimkit.segment.train(TINY, data=images, out=out, **values)


# ---------------------------------------------------------------------------- the job


@pytest.mark.slow
def test_cli_upernet_on_coco_train_evaluate_predict(coco, tiny_mae_ckpt, tmp_path, capsys):
    images, train_ann, val_ann = coco
    out = tmp_path / "run"
    code = main(
        ["segment", "train", "--config", "upernet_vit_tiny_coco128", "--data", str(images),
         "--ann", str(train_ann), f"segment.val_ann={val_ann}", "--checkpoint", str(tiny_mae_ckpt),
         "--out", str(out), "--epochs", "2", "--device", "cpu", *SMALL]
    )  # fmt: skip
    assert code == 0
    assert "mIoU" in capsys.readouterr().out
    m = _metrics(out)
    assert len(m["IoU"]) == 81 and m["IoU"]["background"] is not None
    assert m["best_mIoU"] == max(h["mIoU"] for h in m["history"])
    assert [h["epoch"] for h in m["history"]] == [1, 2]
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["kind"] == "class_iou"] == [1, 2]
    assert all("val/mIoU" in r for r in rows if r["kind"] == "epoch")
    for name in ("checkpoint-best.pth", "predictions.png", "class_iou.png", "config.yaml"):
        assert (out / name).is_file(), name
    state = torch.load(out / "checkpoint-best.pth", weights_only=True)
    assert state["task"] == "segment" and state["segmenter"]["head"] == "upernet"
    # the backbone was built at the crop: the checkpoint's 8x8 table stays 8x8 at 32 px
    assert state["model"]["backbone.features.vit.pos_embed"].shape[1] == 1 + 64

    ev = tmp_path / "eval"
    code = main(
        ["segment", "evaluate", "--checkpoint", str(out / "checkpoint-last.pth"), "--data",
         str(images), "--ann", str(val_ann), "--out", str(ev), "--device", "cpu"]
    )  # fmt: skip
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["images"] == 4
    assert printed["mIoU"] == pytest.approx(m["mIoU"], abs=1e-9)  # same model, same windows
    assert (ev / "class_iou.png").is_file()

    pred = tmp_path / "pred"
    one = sorted(images.iterdir())[0]
    code = main(
        ["segment", "predict", "--checkpoint", str(out / "checkpoint-best.pth"), "--images",
         str(one), "--out", str(pred), "--device", "cpu"]
    )  # fmt: skip
    assert code == 0
    mask = seg.read_mask(pred / f"{one.stem}.png")
    with Image.open(one) as im:
        assert mask.shape == (im.height, im.width) and mask.max() < 81
    assert (pred / f"{one.stem}_overlay.png").is_file()


@pytest.mark.slow
def test_python_linear_probe_on_a_mask_folder_keeps_the_backbone(mask_folder, tiny_mae_ckpt):
    from mimkit.interop.checkpoint import model_from_checkpoint

    result = mimkit.segment.train(
        TINY,
        data=mask_folder / "train" / "images",
        checkpoint=tiny_mae_ckpt,
        out=mask_folder / "linear",
        epochs=1,
        device="cpu",
        **_values(SMALL),
        **{
            "segment.head": "linear",
            "segment.last_blocks": 1,
            "segment.masks": str(mask_folder / "train" / "masks"),
            "segment.val_images": str(mask_folder / "val" / "images"),
            "segment.val_masks": str(mask_folder / "val" / "masks"),
            "segment.classes": str(mask_folder / "classes.txt"),
            "optim.lr": 1e-3,
        },
    )
    assert 0 <= result["mIoU"] <= 100 and result["head"] == "linear"
    assert result._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"  # a notebook shows it
    state = torch.load(result.checkpoint, weights_only=True)
    encoder, _ = model_from_checkpoint(tiny_mae_ckpt, kind="encoder")
    key = "backbone.features.vit.blocks.0.attn.qkv.weight"
    assert torch.equal(state["model"][key], encoder.blocks[0].attn.qkv.weight)  # frozen
    assert state["segmenter"]["backbone"]["args"]["depth"] == 1

    again = mimkit.segment.evaluate(
        result.checkpoint,
        mask_folder / "val" / "images",
        masks=mask_folder / "val" / "masks",
        out=mask_folder / "linear-eval",
        device="cpu",
    )
    assert again["mIoU"] == pytest.approx(result["mIoU"], abs=1e-9)
    rows = mimkit.segment.predict(
        result.checkpoint, mask_folder / "val" / "images", mask_folder / "pred", device="cpu"
    )
    assert len(rows) == 4 and all(
        set(r["classes"]) <= set(state["segmenter"]["classes"]) for r in rows
    )
    one = result.predict([rows[0]["image"]])  # the result's own shortcut, into its folder
    assert Path(one[0]["mask"]).parent == result.out / "predictions"


@pytest.mark.slow
def test_ade20k_layout_with_the_raw_pixel_probe(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    rng = np.random.default_rng(0)
    for split, n in (("training", 4), ("validation", 2)):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(
                root / "images" / split / f"ADE_{i}.jpg"
            )
            raw = np.zeros((40, 56), np.uint8)
            raw[:, 20:], raw[:, 40:] = 3, 150  # 0 is ignored; 3 -> class 2, 150 -> 149
            Image.fromarray(raw, mode="L").save(root / "annotations" / split / f"ADE_{i}.png")
    result = mimkit.segment.train(
        TINY, data=root, out=tmp_path / "run", epochs=1, device="cpu", **_values(SMALL),
        **{"segment.head": "linear", "segment.pixels": True, "segment.pixel_patch": 8},
    )  # fmt: skip
    m = result.metrics
    # reduce_zero_label: 0 ignored, 3 -> class 2 (sky), 150 -> class 149 (flag); accuracy is
    # defined for the classes in the labels only
    assert len(m["IoU"]) == 150 and m["Acc"]["wall"] is None
    assert m["Acc"]["sky"] is not None and m["Acc"]["flag"] is not None
    assert [c for c, v in m["Acc"].items() if v is not None] == ["sky", "flag"]
    state = torch.load(result.checkpoint, weights_only=True)
    assert state["segmenter"]["backbone"] is None and state["segmenter"]["pixel_patch"] == 8


CRAFTED = [  # (name, settings): every backbone mimkit reads, one training step each
    ("official-mae", {"checkpoint": "official MAE layout of the tiny MAE"}),
    ("ibot", {"checkpoint": str(INTEROP / "ibot_official_checkpoint_tiny.pth")}),
    ("simmim", {"checkpoint": str(INTEROP / "simmim_official_checkpoint_tiny.pth")}),
    ("timm", {"checkpoint": "none", "model": "timm:vit_tiny_patch16_224", "data.img_size": 64}),
    ("random", {"checkpoint": "none", "model": "vit_tiny_cifar", "model.args.depth": 1}),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,settings", CRAFTED, ids=[c[0] for c in CRAFTED])
def test_backbones_train_at_the_crop_size(
    coco, tmp_path, name, settings, mimkit_log, tiny_mae_ckpt
):
    if "interop" in settings["checkpoint"] and not INTEROP.is_dir():
        pytest.skip("no official fixtures")
    images, train_ann, val_ann = coco
    values = {**_values(SMALL), "train.max_steps": 1, **settings}
    if name == "official-mae":  # {'model': encoder state dict}, as the released files
        from mimkit.interop.checkpoint import model_from_checkpoint

        encoder, _ = model_from_checkpoint(tiny_mae_ckpt, kind="encoder")
        torch.save({"model": encoder.state_dict()}, tmp_path / "mae_pretrain.pth")
        values["checkpoint"] = str(tmp_path / "mae_pretrain.pth")
        values["data.img_size"] = 48  # 8x8 table -> 12x12 at load
    if name == "simmim":  # BEiT-style: built at 48 px, its 8x8 relative table resized
        values["data.img_size"] = 48
    result = mimkit.segment.train(
        TINY, data=images, out=tmp_path / name, epochs=1, device="cpu",
        **{"segment.train_ann": str(train_ann), "segment.val_ann": str(val_ann)}, **values,
    )  # fmt: skip
    assert math.isfinite(result["mIoU"])
    state = torch.load(result.checkpoint, weights_only=True)
    sd, spec = state["model"], state["segmenter"]
    side = values["data.img_size"]
    patch = 16 if name == "timm" else 4
    if name == "simmim":
        table = sd["backbone.features.vit.rel_pos_bias.relative_position_bias_table"]
        assert table.shape[0] == (2 * side // patch - 1) ** 2 + 3
        assert "resized" in mimkit_log.text and "relative_position_bias_table" in mimkit_log.text
    else:
        assert sd["backbone.features.vit.pos_embed"].shape[1] == 1 + (side // patch) ** 2
    if name == "timm":  # drop path from model.drop_path (the preset default 0.1)
        model = job.make_segmenter(spec)
        assert model.backbone.vit.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)  # ramp
    # the checkpoint alone rebuilds the model, without the pretrained file
    model, _ = job.load_segmenter(result.checkpoint, torch.device("cpu"))
    assert model(torch.randn(1, 3, side, side)).shape == (1, 81, side, side)


# ---------------------------------------------------------------------------- 2 processes


def _rank_buffers(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as tdist

    tdist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        bn = torch.nn.BatchNorm2d(3).train()
        bn(torch.randn(4, 3, 5, 5) + 10 * rank)  # each rank's own running statistics
        job.same_buffers(bn)
        torch.save({k: v for k, v in bn.named_buffers()}, f"{out}.{rank}")
    finally:
        tdist.destroy_process_group()


@pytest.mark.slow
def test_validation_on_every_rank_uses_rank0s_batchnorm_statistics(tmp_path):
    """Plain BatchNorm under DDP on CPUs: each rank's running statistics follow its own
    batches; before a validation split over ranks they are made rank 0's (the saved ones)."""
    import torch.multiprocessing as mp

    out = str(tmp_path / "buffers")
    mp.spawn(_rank_buffers, args=(2, f"file://{tmp_path / 'init'}", out), nprocs=2)
    zero, one = (torch.load(f"{out}.{r}", weights_only=True) for r in range(2))
    assert zero["running_mean"].abs().max() < 0.5  # rank 0 saw mean 0 (rank 1: 10, so ~1)
    for k in zero:
        assert torch.equal(zero[k], one[k]), k


@pytest.mark.slow
def test_two_gloo_processes_score_as_one(coco, tiny_mae_ckpt, tmp_path):
    images, train_ann, val_ann = coco
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "ddp"
    train = [
        *TORCHRUN_MIMKIT, "segment", "train", "--config", "upernet_vit_tiny_coco128",
        "--data", str(images), "--ann", str(train_ann), f"segment.val_ann={val_ann}",
        "--checkpoint", str(tiny_mae_ckpt), "--out", str(out), "--epochs", "1",
        "--device", "cpu", *SMALL,
    ]  # fmt: skip
    proc = subprocess.run(train, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trained = _metrics(out)["mIoU"]  # validation split over the 2 ranks, counts summed
    scores = {}
    for procs, cmd in (("1", ["-m", "mimkit"]), ("2", TORCHRUN_MIMKIT[1:])):
        ev = tmp_path / f"eval{procs}"
        args = [
            "segment", "evaluate", "--checkpoint", str(out / "checkpoint-last.pth"),
            "--data", str(images), "--ann", str(val_ann), "--out", str(ev), "--device", "cpu",
        ]  # fmt: skip
        p = subprocess.run(
            [TORCHRUN_MIMKIT[0], *cmd, *args], capture_output=True, text=True, env=env, timeout=600
        )
        assert p.returncode == 0, p.stderr[-3000:]
        scores[procs] = _metrics(ev)
    assert scores["1"]["num_pixels"] == scores["2"]["num_pixels"] > 0
    assert scores["2"]["mIoU"] == pytest.approx(scores["1"]["mIoU"], abs=1e-9)
    assert trained == pytest.approx(scores["1"]["mIoU"], abs=1e-9)


# ---------------------------------------------------------------------------- benchmark


@pytest.mark.slow
def test_benchmark_times_the_segmentation_step(tmp_path, capsys):
    target = tmp_path / "bench.json"
    code = main(
        ["benchmark", "--config", "upernet_vit_tiny_coco128", "--steps", "1", "--warmup", "0",
         "--device", "cpu", "--json", str(target), "data.img_size=32", "data.batch_size=2",
         "model.args.depth=1", "train.precision=fp32"]
    )  # fmt: skip
    assert code == 0
    r = json.loads(target.read_text())
    assert r["kind"] == "segment" and r["img_size"] == 32 and r["batch"] == 2
    assert r["train_flop_per_image"] > 0 and r["model_img_s"] > 0
