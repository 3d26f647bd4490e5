"""ViTDet backbone pieces: window partition, window vs global attention, zero-init relative
bias keeps the pretrained ViT's outputs, MAE weights load unchanged, pyramid strides."""

import pytest
import torch

import mimkit
from mimkit.detection import SimpleFeaturePyramid, ViTDetBackbone
from mimkit.detection.vitdet import RelPosAttention, window_partition, window_unpartition

from .conftest import SHARED_DIR


def test_window_partition_round_trip_with_padding():
    x = torch.randn(2, 13, 10, 8)
    win, padded = window_partition(x, 4)
    assert padded == (16, 12) and win.shape == (2 * 4 * 3, 4, 4, 8)
    assert torch.equal(window_unpartition(win, 4, (13, 10), padded), x)
    # the first window holds the top-left 4x4 block
    assert torch.equal(win[0], x[0, :4, :4])


def test_window_equal_to_grid_is_global_attention():
    torch.manual_seed(0)
    attn = RelPosAttention(16, 2, (6, 6))
    torch.nn.init.normal_(attn.rel_pos_h)
    torch.nn.init.normal_(attn.rel_pos_w)
    x = torch.randn(2, 6, 6, 16)
    win, padded = window_partition(x, 6)
    torch.testing.assert_close(window_unpartition(attn(win), 6, (6, 6), padded), attn(x))


def _small_backbone(**kw):
    args = dict(
        img_size=64,
        patch_size=16,
        embed_dim=32,
        depth=4,
        num_heads=2,
        drop_path_rate=0.0,
        window_size=2,
        global_blocks=(1, 3),
        pretrain_img_size=64,
    )
    return ViTDetBackbone(**(args | kw))


def test_mae_weights_load_unchanged_and_zero_bias_reproduces_the_vit():
    torch.manual_seed(0)
    mae = mimkit.create_model(
        "mae_vit",
        img_size=64,
        patch_size=16,
        embed_dim=32,
        depth=4,
        num_heads=2,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    det = _small_backbone(window_size=0, global_blocks=(0, 1, 2, 3))  # all global: plain ViT
    report = mimkit.load_checkpoint(det, mimkit.interop.checkpoint.Checkpoint(mae.state_dict()))
    assert not [k for k in report.missing if "rel_pos" not in k]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        vit = mae.blocks(mae.patch_embed(x) + mae.pos_embed[:, 1:])  # no cls: as ViTDet
        ref = vit.reshape(2, 4, 4, 32).permute(0, 3, 1, 2)
        torch.testing.assert_close(det(x), ref, rtol=1e-4, atol=1e-4)


def test_pos_embed_resized_to_detection_grid_and_pyramid_strides():
    det = _small_backbone(img_size=128, pretrain_img_size=64)  # 4x4 table -> 8x8 grid
    x = torch.randn(1, 3, 128, 128)
    feat = det(x)
    assert feat.shape == (1, 32, 8, 8)
    fpn = SimpleFeaturePyramid(32, stride=16, out_channels=24)
    maps = fpn(feat)
    assert list(maps) == ["p2", "p3", "p4", "p5", "p6"]
    for (name, m), stride in zip(maps.items(), (4, 8, 16, 32, 64)):
        assert m.shape == (1, 24, 128 // stride, 128 // stride), name


def test_residual_blocks_start_as_identity():
    torch.manual_seed(0)
    plain = _small_backbone()
    conv = _small_backbone(residual_blocks=(1, 3))
    conv.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(conv(x), plain(x))


COCO128 = SHARED_DIR / "data" / "coco128.tar.gz"


@pytest.fixture(scope="module")
def coco128(tmp_path_factory):
    import tarfile

    if not COCO128.is_file():
        pytest.skip(f"{COCO128} not present")
    out = tmp_path_factory.mktemp("coco128")
    with tarfile.open(COCO128) as tar:
        tar.extractall(out, filter="data")
    ann = next(out.rglob("instances_train2017.json"))
    images = next(p for p in out.rglob("train2017") if p.is_dir())
    return images, ann


def test_coco_targets_and_one_mask_rcnn_step_on_real_images(coco128):
    from mimkit.detection.coco import CocoDetection, collate
    from mimkit.detection.maskrcnn import build_detector

    images, ann = coco128
    ds = CocoDetection(images, ann)
    assert len(ds) == 128 and len(ds.categories) == 80
    img, target = ds[0]
    k = len(target["boxes"])
    assert img.dtype == torch.float32 and img.max() <= 1 and k > 0
    assert target["masks"].shape == (k, *img.shape[1:]) and target["masks"].sum() > 0
    b = target["boxes"]
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    assert target["labels"].min() >= 1 and target["labels"].max() <= 80

    torch.manual_seed(0)
    model = build_detector(
        _small_backbone(img_size=128), num_classes=81, img_size=128, out_channels=32
    )
    imgs, targets = collate([ds[0], ds[1]])
    model.train()
    losses = model(list(imgs), list(targets))
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.vit.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model([imgs[0]])
    assert {"boxes", "labels", "scores", "masks"} <= set(out[0])


@pytest.mark.slow
def test_detect_train_eval_predict_from_an_mae_checkpoint(coco128, tmp_path, capsys):
    import json

    from mimkit.cli import main

    images, ann = coco128
    torch.manual_seed(0)
    mae = mimkit.create_model(
        "mae_vit",
        img_size=64,
        patch_size=16,
        embed_dim=32,
        depth=2,
        num_heads=2,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    ckpt = tmp_path / "mae.pth"
    torch.save({"model": mae.state_dict()}, ckpt)  # the official file layout
    out = tmp_path / "det"
    args = [
        "detect",
        "train",
        "--config",
        "vitdet_tiny_coco128",
        "--data",
        images,
        f"detect.train_ann={ann}",
        "--checkpoint",
        ckpt,
        "--out",
        out,
        "--epochs",
        "1",
        "data.img_size=128",
        "detect.global_blocks=[1]",
        "detect.out_channels=32",
        "detect.val_split=3",
        "train.max_steps=2",
        "data.num_workers=0",
        "train.tensorboard=false",
        "data.batch_size=2",
    ]
    assert main([str(a) for a in args]) == 0
    err = capsys.readouterr().err
    report = next(line for line in err.splitlines() if "loaded" in line and "mae.pth" in line)
    assert "rel_pos_h" in report and "attn.qkv" not in report  # only the rel-pos tables are new
    m = json.loads((out / "metrics.json").read_text())
    assert m["num_images"] == 3 and {"bbox_AP", "segm_AP", "bbox_AP50", "segm_APl"} <= set(m)
    state = torch.load(out / "checkpoint-last.pth", weights_only=True)
    assert state["detector"]["backbone"]["embed_dim"] == 32
    torch.testing.assert_close(  # pretrained weights went in (training moved them a little)
        state["model"]["backbone.vit.blocks.0.attn.qkv.weight"],
        mae.blocks[0].attn.qkv.weight,
        atol=0.05,
        rtol=0,
    )

    ev = tmp_path / "eval"
    assert (
        main(
            [
                "detect",
                "eval",
                "--checkpoint",
                str(out / "checkpoint-last.pth"),
                "--images",
                str(images),
                "--ann",
                str(ann),
                "--out",
                str(ev),
                "--max-images",
                "2",
            ]
        )
        == 0
    )
    assert json.loads((ev / "metrics.json").read_text())["num_images"] == 2
    pics = tmp_path / "pics"
    first = sorted(images.iterdir())[0]
    last = str(out / "checkpoint-last.pth")
    assert (
        main(
            [
                "detect",
                "predict",
                "--checkpoint",
                last,
                "--images",
                str(first),
                "--out",
                str(pics),
                "--score-threshold",
                "0",
            ]
        )
        == 0
    )
    png = pics / (first.stem + ".png")
    assert png.is_file() and png.stat().st_size > 1000


def test_detector_layer_decay_follows_vitdet_through_timm():
    """timm's param_groups_layer_decay with the detector's group_matcher gives ViTDet's
    scales: block i decay^(depth - i), embeddings decay^(depth + 1), pyramid/heads 1;
    no weight decay on 1-D parameters and the position embedding."""
    from mimkit.detection.maskrcnn import build_detector
    from mimkit.eval.classify import layer_decay_groups

    det = build_detector(_small_backbone(), 3, img_size=64)
    names = {id(p): n for n, p in det.named_parameters()}
    scale, decay = {}, {}
    for g in layer_decay_groups(det, 0.1, 0.7):
        for p in g["params"]:
            scale[names[id(p)]], decay[names[id(p)]] = g["lr_scale"], g["weight_decay"]
    depth = 4
    assert scale["backbone.vit.patch_embed.proj.weight"] == pytest.approx(0.7 ** (depth + 1))
    for i in range(depth):
        assert scale[f"backbone.vit.blocks.{i}.attn.qkv.weight"] == pytest.approx(
            0.7 ** (depth - i)
        )
    assert scale["backbone.pyramid.stages.0.0.weight"] == 1.0
    assert all(s == 1.0 for n, s in scale.items() if n.startswith("roi_heads"))
    assert (
        decay["backbone.vit.pos_embed"] == 0.0 and decay["backbone.vit.blocks.0.norm1.weight"] == 0
    )
    assert decay["backbone.vit.blocks.0.attn.qkv.weight"] == 0.1


IBOT_FULL = SHARED_DIR / "interop" / "ibot_official_checkpoint_tiny.pth"


@pytest.mark.skipif(not IBOT_FULL.is_file(), reason="official iBOT fixtures absent")
@pytest.mark.parametrize("network", ["teacher", "student"])
def test_an_official_ibot_checkpoint_becomes_a_vitdet_backbone(network):
    """The detector's backbone from an iBOT file: its shape read from the chosen network
    (teacher by default), the weights loaded as they are (position embedding resized);
    the head count, which no tensor shape holds, from model.args."""
    from mimkit.config import load_config
    from mimkit.interop.checkpoint import network_checkpoint, read_checkpoint
    from mimkit.recipes.detect import backbone_args, make_detector

    overrides = [f"model.checkpoint={IBOT_FULL}", f"model.checkpoint_network={network}"]
    overrides += ["model.args.num_heads=4"]  # a head count the width does not imply
    cfg = load_config("vitdet_tiny_coco128", [*overrides, "data.img_size=64"], task="detect")
    args, ckpt = backbone_args(cfg)
    assert (args["embed_dim"], args["depth"], args["num_heads"], args["patch_size"]) == (
        64,
        2,
        4,
        4,
    )
    detector = make_detector(dict(backbone=args, num_classes=3, masks=False, out_channels=32))
    report = mimkit.load_checkpoint(detector.backbone.vit, ckpt)
    # only ViTDet's own additions start fresh (relative positions, zero at init)
    assert {k.rsplit(".", 1)[-1] for k in report.missing if k.startswith("blocks.")} == {
        "rel_pos_h",
        "rel_pos_w",
    }
    official = network_checkpoint(read_checkpoint(IBOT_FULL), network).state_dict
    for key in ("blocks.1.mlp.fc2.weight", "patch_embed.proj.weight"):
        assert torch.equal(detector.backbone.vit.state_dict()[key], official[key]), key


def test_backbone_heads_come_from_a_mimkit_checkpoint_record(tiny_mae_ckpt):
    """A width of 32 implies 1 head by the usual rule; the tiny MAE was trained with 2 and
    its checkpoint says so: the detector attends as the encoder was trained."""
    from mimkit.config import load_config
    from mimkit.recipes.detect import backbone_args

    cfg = load_config("vitdet_tiny_coco128", [f"model.checkpoint={tiny_mae_ckpt}"], task="detect")
    args, _ = backbone_args(cfg)
    assert (args["embed_dim"], args["num_heads"]) == (32, 2)
