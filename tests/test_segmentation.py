"""Semantic segmentation: pyramid strides, heads and losses, training steps, sliding windows,
mIoU against hand counts / torchmetrics / 2 gloo ranks, the three data layouts from real
files, every bad-input error, mmseg's transforms, pictures."""

from __future__ import annotations

import colorsys
import copy
import json
import math

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.models.vision_transformer import VisionTransformer

import mimkit
from mimkit import segmentation as seg
from mimkit.errors import UserError
from mimkit.segmentation import transforms as T
from mimkit.utils.rng import seeded

from .conftest import SHARED_DIR


def _vit(img: int = 64, patch: int = 16, depth: int = 4) -> VisionTransformer:
    return VisionTransformer(
        img_size=img, patch_size=patch, embed_dim=32, depth=depth, num_heads=2, num_classes=0
    )


def _one_line_naming(e: pytest.ExceptionInfo, *names: str) -> str:
    text = str(e.value)
    assert "\n" not in text, text
    for name in names:
        assert name in text, text
    return text


# ---------------------------------------------------------------- backbone adapters


def test_block_indices_rule():
    assert seg.default_block_indices(12) == (3, 5, 7, 11)  # BEiT-B ADE20K
    assert seg.default_block_indices(24) == (7, 11, 15, 23)  # BEiT-L ADE20K
    assert seg.default_block_indices(4) == (0, 1, 2, 3)
    assert seg.default_block_indices(32) == (10, 15, 20, 31)
    assert seg.ViTPyramid(_vit(), indices=(1, 1, 2, -1)).indices == (1, 1, 2, 3)
    with pytest.raises(UserError):
        seg.ViTPyramid(_vit(), indices=(0, 1, 2, 9))


def test_pyramid_strides_shapes_and_features_on_a_non_square_input():
    vit = _vit()
    reference = copy.deepcopy(vit)  # untouched: fixed size, no dynamic mode
    pyr = seg.ViTPyramid(vit).eval()
    assert pyr.strides == (4, 8, 16, 32) and pyr.channels == (32, 32, 32, 32)
    x = torch.randn(2, 3, 64, 96)
    maps = pyr(x)
    assert [tuple(m.shape) for m in maps] == [(2, 32, 64 // s, 96 // s) for s in (4, 8, 16, 32)]
    # level 2 is block 2's raw output: at the built size the dynamic mode changes nothing
    sq = torch.randn(1, 3, 64, 64)
    want = reference.forward_intermediates(sq, indices=[2], intermediates_only=True)[0]
    torch.testing.assert_close(pyr(sq)[2], want)
    # on 64x96 the table is resampled as timm's own set_input_size does it
    reference.set_input_size(img_size=(64, 96))
    want = reference.forward_intermediates(x, indices=[2], intermediates_only=True)[0]
    torch.testing.assert_close(maps[2], want)
    assert maps[3].shape[-2:] == (2, 3)


def test_mimkit_vit_with_small_patches_keeps_relative_scales():
    vit = mimkit.create_model(
        "vit", img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2
    )  # a CIFAR-sized ViT: 8x8 tokens
    pyr = seg.ViTPyramid(vit)
    assert pyr.strides == (1, 2, 4, 8)
    maps = pyr(torch.randn(2, 3, 32, 48))
    assert [tuple(m.shape[-2:]) for m in maps] == [(32, 48), (16, 24), (8, 12), (4, 6)]


def test_beit_runs_at_its_built_size_and_refuses_others_in_one_line():
    beit = timm.create_model(
        "beit_base_patch16_224",
        img_size=64,
        embed_dim=32,
        depth=4,
        num_heads=2,
        num_classes=0,
        use_abs_pos_emb=False,
        use_rel_pos_bias=True,
    )
    model = seg.upernet(beit, 5, channels=16, aux_channels=8).eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5, 64, 64)
    with pytest.raises(UserError) as e:
        model(torch.randn(1, 3, 64, 96))
    _one_line_naming(e, "Beit", "64x64", "64x96")


def test_token_maps_for_the_probe_and_the_pixel_floor():
    tokens = seg.ViTTokens(_vit(), indices=(-2, -1))
    maps = tokens(torch.randn(2, 3, 32, 48))
    assert tokens.channels == (64, 64) and [tuple(m.shape) for m in maps] == [(2, 64, 2, 3)] * 2
    # the cls half is the same vector at every position
    assert torch.equal(maps[1][:, 32:, 0, 0], maps[1][:, 32:, 1, 2])
    pix = seg.PixelPatches(16)
    x = torch.randn(1, 3, 32, 48)
    (feat,) = pix(x)
    assert pix.channels == (768,) and feat.shape == (1, 768, 2, 3)
    assert torch.equal(feat[0, :, 1, 2].view(3, 16, 16), x[0, :, 16:32, 32:48])


# ---------------------------------------------------------------- model, loss, training


def _labels(n: int, h: int, w: int, k: int) -> torch.Tensor:
    """Blocky labels (8x8 cells), a learnable function of position."""
    cells = torch.randint(0, k, (n, h // 8, w // 8))
    return cells.repeat_interleave(8, 1).repeat_interleave(8, 2)


def test_upernet_logits_at_input_size_and_the_loss_dict():
    model = seg.upernet(_vit(), 5, channels=16, aux_channels=8)
    assert model.aux_head.in_index == 2 and model.aux_weight == 0.4
    assert model.head.cls_seg[0].p == 0.1  # dropout before the classifier
    x = torch.randn(2, 3, 70, 90)  # not a multiple of the patch: padded, cropped back
    model.eval()
    assert model(x).shape == (2, 5, 70, 90)
    model.train()
    labels = torch.randint(0, 5, (2, 70, 90))
    labels[:, :10] = 255
    out = model(x, labels)
    assert set(out) == {"loss", "loss_decode", "loss_aux", "acc"}
    torch.testing.assert_close(out["loss"], out["loss_decode"] + 0.4 * out["loss_aux"])
    with pytest.raises(UserError, match="batch size of 2"):
        model(x[:1], labels[:1])  # the 1x1 pooling BatchNorm needs two images


def test_cross_entropy_averages_over_all_pixels_as_mmseg():
    logits = torch.randn(2, 4, 6, 6)
    labels = torch.randint(0, 4, (2, 6, 6))
    labels[0, :3] = 255
    summed = torch.nn.functional.cross_entropy(logits, labels, ignore_index=255, reduction="sum")
    torch.testing.assert_close(seg.cross_entropy(logits, labels), summed / labels.numel())
    valid = (labels != 255).sum()
    torch.testing.assert_close(
        seg.cross_entropy(logits, labels, avg_non_ignore=True), summed / valid
    )


def _fit(model, x, y, steps: int, lr: float) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(x, y)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_a_few_upernet_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = seg.upernet(_vit(), 4, channels=16, aux_channels=8)
    x, y = torch.randn(2, 3, 64, 64), _labels(2, 64, 64, 4)
    losses = _fit(model, x, y, 20, 1e-2)
    assert losses[-1] < 0.75 * losses[0], losses
    # every trainable tensor took part (DDP without find_unused_parameters); the ViT's
    # final norm, which the pyramid never runs, is frozen
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert not model.backbone.vit.norm.weight.requires_grad


def test_linear_probe_keeps_the_vit_frozen_and_the_pixel_floor_learns():
    torch.manual_seed(0)
    vit = _vit()
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    probe = seg.linear_probe(vit, 4, last_blocks=4)
    assert probe.head.bn.num_features == 4 * 64  # 4 blocks x (patch + cls)
    x, y = torch.randn(2, 3, 64, 64), _labels(2, 64, 64, 4)
    _fit(probe, x, y, 3, 1e-2)
    assert not vit.training  # eval whatever train() asked
    assert all(torch.equal(v, vit.state_dict()[k]) for k, v in before.items())
    assert probe.head.cls_seg[1].weight.grad is not None
    floor = seg.linear_probe(None, 4, patch_size=8)
    losses = _fit(floor, x, y, 10, 5e-2)
    assert losses[-1] < losses[0]


def test_param_groups_follow_beit_layer_decay():
    model = seg.upernet(_vit(), 4, channels=16, aux_channels=8)
    groups = seg.param_groups(model, weight_decay=0.05, layer_decay=0.5)
    scale = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    vit = model.backbone.vit
    assert scale[id(vit.blocks[0].attn.qkv.weight)] == (0.5**4, 0.05)
    assert scale[id(vit.blocks[3].attn.qkv.weight)] == (0.5, 0.05)
    assert scale[id(vit.patch_embed.proj.weight)][0] == 0.5**5
    assert scale[id(model.head.cls_seg[1].weight)] == (1.0, 0.05)
    assert scale[id(model.head.cls_seg[1].bias)] == (1.0, 0.0)
    assert scale[id(vit.pos_embed)] == (0.5**5, 0.05)  # decayed, as the official code
    assert scale[id(vit.blocks[1].norm1.weight)] == (0.5**3, 0.0)
    assert len(scale) == sum(1 for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------- inference


def test_window_grid_is_mmsegs():
    boxes = seg.window_boxes(512, 683, (512, 512), (341, 341))
    assert boxes == [(0, 512, 0, 512), (0, 512, 171, 683)]
    boxes = seg.window_boxes(40, 70, (32, 32), (20, 20))
    assert boxes[-1] == (8, 40, 38, 70) and len(boxes) == 2 * 3
    assert seg.window_boxes(20, 30, (32, 32), (20, 20)) == [(0, 20, 0, 30)]


def test_sliding_windows_equal_whole_image_inference():
    torch.manual_seed(0)
    model = seg.upernet(_vit(), 4, channels=16, aux_channels=8).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        whole = model(x)
        torch.testing.assert_close(seg.slide_logits(model, x, (64, 96), (32, 32)), whole)
        torch.testing.assert_close(seg.slide_logits(model, x, (128, 128), (64, 64)), whole)
    # overlapping windows are averaged: a per-pixel model gives the whole-image answer
    pointwise = torch.nn.Conv2d(3, 4, 1)
    with torch.no_grad():
        slid = seg.slide_logits(pointwise, x, (32, 32), (20, 20), window_batch=3)
        torch.testing.assert_close(slid, pointwise(x))


def test_predict_probs_multiscale_and_flip():
    model = seg.upernet(_vit(), 4, channels=16, aux_channels=8).eval()
    img = torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8)
    probs = seg.predict_probs(
        model, img, scale=(64, 32), crop=(32, 32), stride=(16, 16), ratios=(1.0, 1.5), flip=True
    )
    assert probs.shape == (4, 40, 56)
    torch.testing.assert_close(probs.sum(0), torch.ones(40, 56))


# ---------------------------------------------------------------- metrics


def test_scores_match_a_hand_counted_confusion_matrix():
    label = torch.tensor([[0, 0, 1], [1, 2, 255]])
    pred = torch.tensor([[0, 3, 1], [1, 0, 2]])  # the last pixel is ignored
    cm = seg.ConfusionMatrix(5)
    cm.update(pred[:1], label[:1])  # two updates = one over the union
    cm.update(pred[1:], label[1:])
    assert cm.matrix[0].tolist() == [1, 0, 0, 1, 0] and cm.matrix[2].tolist() == [1, 0, 0, 0, 0]
    s = cm.compute()
    # IoU: 1/3, 2/2, 0/1, 0/1 (predicted, never labelled), NaN (in neither)
    assert s["IoU"][:4] == pytest.approx([100 / 3, 100, 0, 0]) and math.isnan(s["IoU"][4])
    assert s["mIoU"] == pytest.approx(100 / 3)  # (1/3 + 1 + 0 + 0) / 4
    # Acc: 1/2, 1, 0, NaN, NaN
    assert s["Acc"][:3] == pytest.approx([50, 100, 0]) and math.isnan(s["Acc"][3])
    assert s["mAcc"] == pytest.approx(50)
    assert s["aAcc"] == pytest.approx(60) and s["num_pixels"] == 5


def test_scores_match_torchmetrics_on_random_masks():
    tm = pytest.importorskip("torchmetrics.classification")
    g = torch.Generator().manual_seed(0)
    k = 7
    label = torch.randint(0, k - 1, (4, 40, 40), generator=g)  # 6 in neither masks
    noise = torch.randint(0, k - 2, (4, 40, 40), generator=g)
    pred = torch.where(torch.rand(4, 40, 40, generator=g) < 0.6, label, noise)
    pred[pred == 5] = 4  # 5 is labelled, never predicted
    label[torch.rand(4, 40, 40, generator=g) < 0.1] = 255
    cm = seg.ConfusionMatrix(k)
    for i in range(4):
        cm.update(pred[i], label[i])
    s = cm.compute()
    iou = tm.MulticlassJaccardIndex(k, average="none", ignore_index=255)(pred, label)
    acc = tm.MulticlassAccuracy(k, average="none", ignore_index=255)(pred, label)
    micro = tm.MulticlassAccuracy(k, average="micro", ignore_index=255)(pred, label)
    present = slice(0, k - 1)
    np.testing.assert_allclose(s["IoU"][present], 100 * iou[present].numpy(), rtol=1e-5)
    np.testing.assert_allclose(s["Acc"][present], 100 * acc[present].numpy(), rtol=1e-5)
    assert math.isnan(s["IoU"][k - 1]) and s["IoU"][5] == 0.0
    assert s["mIoU"] == pytest.approx(100 * iou[present].mean().item(), rel=1e-5)
    assert s["aAcc"] == pytest.approx(100 * micro.item(), rel=1e-5)


def _rank_confusion(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as tdist

    tdist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        pred, label = _shared_masks()
        cm = seg.ConfusionMatrix(5)
        for i in range(rank, len(label), world):  # this rank's share
            cm.update(pred[i], label[i])
        with open(f"{out}.{rank}", "w") as f:
            json.dump(cm.compute()["IoU"] + [cm.compute()["aAcc"]], f)
    finally:
        tdist.destroy_process_group()


def _shared_masks() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    label = torch.randint(0, 5, (6, 16, 16), generator=g)
    label[:, :2] = 255
    return torch.randint(0, 5, (6, 16, 16), generator=g), label


@pytest.mark.slow
def test_two_gloo_ranks_sum_to_the_single_process_scores(tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "scores")
    mp.spawn(_rank_confusion, args=(2, f"file://{tmp_path / 'init'}", out), nprocs=2)
    pred, label = _shared_masks()
    cm = seg.ConfusionMatrix(5)
    cm.update(pred, label)
    single = cm.compute()
    for rank in range(2):
        got = json.loads((tmp_path / f"scores.{rank}").read_text())
        assert got == pytest.approx(single["IoU"] + [single["aAcc"]])


# ---------------------------------------------------------------- data


def _jpeg(path, h: int, w: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=95)


def _palette_png(path, ids: np.ndarray) -> None:
    """Class ids as palette indices, with colours unrelated to the ids."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(ids.astype(np.uint8), mode="P")
    im.putpalette([(i * 37) % 256 for i in range(768)])
    im.save(path)


def _ade_root(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    raw = np.zeros((24, 32), dtype=np.uint8)
    raw[:, 8:16], raw[:, 16:24], raw[:, 24:] = 1, 150, 13
    _jpeg(root / "images/training/a.jpg", 24, 32)
    (root / "annotations/training").mkdir(parents=True)
    Image.fromarray(raw, mode="L").save(root / "annotations/training/a.png")
    _jpeg(root / "images/training/b.jpg", 24, 32, seed=1)
    _palette_png(root / "annotations/training/b.png", raw)
    return root, raw


def test_ade20k_layout_reduces_zero_label(tmp_path):
    root, raw = _ade_root(tmp_path)
    src = seg.ade20k(root, "training")
    assert len(src) == 2 and len(src.classes) == 150 and src.classes[0] == "wall"
    seg.scan(src)
    for i in range(2):  # 8-bit grey and palette masks read the same ids
        img, label = src.load(i)
        assert img.shape == (3, 24, 32) and img.dtype == torch.uint8
        assert label[0, :8].eq(255).all() and label[0, 8:16].eq(0).all()
        assert label[0, 16:24].eq(149).all() and label[0, 24:].eq(12).all()
    with pytest.raises(UserError) as e:
        seg.ade20k(root, "validation")
    _one_line_naming(e, "images/validation")


def test_mask_folder_reads_palette_indices_and_16_bit_ids(tmp_path):
    images, masks = tmp_path / "img", tmp_path / "msk"
    ids = np.arange(20 * 30).reshape(20, 30) % 300
    ids[0, 0] = 65535  # the ignore index of a 16-bit mask
    _jpeg(images / "sub/x.jpg", 20, 30)
    (masks / "sub").mkdir(parents=True)
    Image.fromarray(ids.astype(np.uint16)).save(masks / "sub/x.png")
    src = seg.mask_folder(images, masks, [f"c{i}" for i in range(300)], ignore_index=65535)
    seg.scan(src)
    _, label = src.load(0)
    assert torch.equal(label, torch.from_numpy(ids))
    assert label.max() == 65535 and label[label != 65535].max() == 299
    pal = np.full((20, 30), 3, dtype=np.uint8)
    _palette_png(masks / "sub/x.png", pal)  # the colour of index 3 is (111, 148, 185)
    assert seg.read_mask(masks / "sub/x.png").max() == 3


def _folder(tmp_path, n: int = 2):
    images, masks = tmp_path / "img", tmp_path / "msk"
    for i in range(n):
        _jpeg(images / f"{i}.jpg", 16, 24, seed=i)
        _palette_png(masks / f"{i}.png", np.full((16, 24), i % 3, dtype=np.uint8))
    return images, masks


def test_bad_inputs_are_one_line_errors_naming_the_file(tmp_path):
    classes = ["a", "b", "c"]
    images, masks = _folder(tmp_path, 3)
    _jpeg(images / "lonely.jpg", 16, 24)
    with pytest.raises(UserError) as e:  # a mask missing for an image
        seg.mask_folder(images, masks, classes)
    _one_line_naming(e, "lonely.jpg", "lonely.png")
    (images / "lonely.jpg").unlink()

    _palette_png(masks / "1.png", np.zeros((16, 20), dtype=np.uint8))  # size differs
    _palette_png(masks / "2.png", np.full((16, 24), 7, dtype=np.uint8))  # id 7 of 3 classes
    src = seg.mask_folder(images, masks, classes)
    with pytest.raises(UserError) as e:  # found by the scan, before any training
        seg.scan(src)
    text = _one_line_naming(e, "1.png", "20x16", "24x16")
    assert "1 more bad item" in text
    with pytest.raises(UserError) as e:
        src.load(2)  # the same check when an item is read
    _one_line_naming(e, "2.png", "value 7", "3 classes")
    with pytest.raises(UserError) as e:
        seg.mask_folder(images, masks, [f"c{i}" for i in range(300)])  # 255 is a class
    _one_line_naming(e, "ignore index 255")

    Image.fromarray(np.zeros((16, 24, 3), np.uint8) + np.uint8([1, 2, 3])).save(masks / "1.png")
    with pytest.raises(UserError) as e:  # colours are not ids
        seg.read_mask(masks / "1.png")
    _one_line_naming(e, "1.png", "RGB")
    Image.fromarray(np.zeros((16, 24), np.uint8)).save(tmp_path / "m.jpg")
    with pytest.raises(UserError) as e:
        seg.read_mask(tmp_path / "m.jpg")
    _one_line_naming(e, "m.jpg", "JPEG")


COCO128 = SHARED_DIR / "data" / "coco128.tar.gz"


@pytest.fixture(scope="module")
def coco128(tmp_path_factory):
    import tarfile

    if not COCO128.is_file():
        pytest.skip(f"{COCO128} not present")
    out = tmp_path_factory.mktemp("coco128")
    with tarfile.open(COCO128) as tar:
        tar.extractall(out, filter="data")
    return out / "train2017", out / "annotations" / "instances_train2017.json"


def test_coco_instances_become_semantic_masks(coco128):
    from pycocotools.coco import COCO

    images, ann = coco128
    src = seg.CocoSemantic(images, ann)
    assert len(src) == 128 and len(src.classes) == 81 and src.classes[0] == "background"
    seg.scan(src, indices=range(8))
    coco = COCO(str(ann))
    for i in range(4):
        img, label = src.load(i)
        assert label.shape == img.shape[1:]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=src.ids[i]))
        things = [coco.annToMask(a).astype(bool) for a in anns if not a["iscrowd"]]
        crowd = [coco.annToMask(a).astype(bool) for a in anns if a["iscrowd"]]
        covered = np.any(things, 0) if things else np.zeros(label.shape, bool)
        lab = label.numpy()
        assert np.array_equal((lab != 0) & (lab != 255), covered)
        assert not crowd or not ((lab == 255) & ~np.any(crowd, 0)).any()
        assert lab[lab != 255].max() <= 80


def _square(x: int, y: int, s: int) -> list[list[float]]:
    return [[x, y, x + s, y, x + s, y + s, x, y + s]]


def test_coco_overlaps_by_area_crowds_ignored_and_bad_sizes(coco128, tmp_path):
    images, ann = coco128
    info = json.loads(ann.read_text())["images"][0]
    h, w = info["height"], info["width"]

    def write(width: int, anns: list[dict]):
        image = dict(info, width=width)
        data = {
            "images": [image],
            "categories": [{"id": 5, "name": "big"}, {"id": 9, "name": "small"}],
            "annotations": anns,
        }
        path = tmp_path / "instances.json"
        path.write_text(json.dumps(data))
        return path

    anns = [  # the small instance comes first: drawing order is by area, not by id
        {
            "id": 1,
            "image_id": info["id"],
            "category_id": 9,
            "segmentation": _square(20, 20, 10),
            "iscrowd": 0,
        },
        {
            "id": 2,
            "image_id": info["id"],
            "category_id": 5,
            "segmentation": _square(10, 10, 40),
            "iscrowd": 0,
        },
        {
            "id": 3,
            "image_id": info["id"],
            "category_id": 5,
            "segmentation": _square(40, 40, 30),
            "iscrowd": 1,
        },
    ]
    src = seg.CocoSemantic(images, write(w, anns))
    assert src.classes == ["background", "big", "small"]
    _, label = src.load(0)
    assert label[25, 25] == 2 and label[15, 15] == 1  # small on top of big
    assert label[45, 45] == 1 and label[60, 60] == 255  # an instance over a crowd; crowd alone
    assert label[h - 1, w - 1] == 0 and set(label.unique().tolist()) == {0, 1, 2, 255}

    src = seg.CocoSemantic(images, write(w + 1, anns))
    with pytest.raises(UserError) as e:
        seg.scan(src)
    _one_line_naming(e, info["file_name"], f"{w}x{h}", f"{w + 1}x{h}")
    anns[0]["category_id"] = 77
    with pytest.raises(UserError) as e:
        seg.CocoSemantic(images, write(w, anns))
    _one_line_naming(e, "instances.json", "annotation 1", "77")


# ---------------------------------------------------------------- transforms


def test_train_transform_shapes_padding_and_seeded_randomness(tmp_path):
    t = seg.TrainTransform(crop=(32, 32), scale=(64, 16), ratio_range=(1.0, 1.0))
    img = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
    label = torch.randint(0, 3, (20, 30))
    x, y = t(img, label)  # rescaled to 16x24 (long side <= 64, short <= 16), padded
    assert x.shape == (3, 32, 32) and y.shape == (32, 32) and x.dtype == torch.float32
    assert y[16:].eq(255).all() and y[:, 24:].eq(255).all() and y[:16, :24].lt(3).all()
    assert x[:, 16:].eq(0).all()
    assert T.rescale_size(375, 500, (2048, 512)) == (512, 683)

    images, masks = _folder(tmp_path, 1)
    ds = seg.SegmentationDataset(
        seg.mask_folder(images, masks, ["a", "b", "c"]),
        seg.TrainTransform(crop=(16, 16), scale=(48, 16)),
    )
    a, b, c = ds[(0, 11)], ds[(0, 11)], ds[(0, 12)]
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])
    batch = seg.train_collate([a, c])
    assert batch["image"].shape == (2, 3, 16, 16) and batch["label"].shape == (2, 16, 16)


def test_random_crop_redraws_crops_dominated_by_one_class():
    img = torch.zeros(3, 8, 64, dtype=torch.uint8)
    label = torch.zeros(8, 64, dtype=torch.long)
    label[:, 32:] = 1  # a 32-wide crop is mixed enough at offsets 9..23 only (15 of 33)

    def mixed(ratio: float, seed: int) -> bool:
        with seeded(seed):
            _, y = T.random_crop(img, label, (8, 32), cat_max_ratio=ratio)
        share = y.eq(1).float().mean().item()
        return max(share, 1 - share) < 0.75

    with_rule = sum(mixed(0.75, s) for s in range(20))
    without = sum(mixed(1.0, s) for s in range(20))
    assert with_rule == 20 and without < 15


def test_hsv_conversion_follows_opencv_8_bit_rules():
    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (3, 1, 500), dtype=torch.uint8, generator=g)
    hsv = T.rgb_to_hsv(rgb)
    for k in range(500):
        r, gg, b = (rgb[:, 0, k].float() / 255).tolist()
        h, s, v = colorsys.rgb_to_hsv(r, gg, b)
        want = (round(h * 180) % 180, round(s * 255), round(v * 255))
        got = hsv[:, 0, k].tolist()
        assert abs(got[1] - want[1]) <= 1 and got[2] == want[2]
        assert min(abs(got[0] - want[0]), 180 - abs(got[0] - want[0])) <= 1
    back = T.hsv_to_rgb(hsv).int()
    assert (back - rgb.int()).abs().max() <= 5  # H is kept in 2-degree steps
    with seeded(3):
        out = T.photometric_distortion(rgb)
    with seeded(3):
        assert torch.equal(out, T.photometric_distortion(rgb))
    assert out.dtype == torch.uint8 and not torch.equal(out, rgb)


# ---------------------------------------------------------------- evaluation end to end


class _Oracle(torch.nn.Module):
    """Logits = the image itself: a pixel coloured in channel c is class c."""

    def forward(self, x):
        return x


def test_evaluate_an_oracle_through_the_loader_scores_100(tmp_path):
    from mimkit.data.loader import eval_loader

    images, masks = tmp_path / "img", tmp_path / "msk"
    ids = np.zeros((32, 48), np.uint8)
    ids[:, 16:], ids[20:, :] = 1, 2
    rgb = np.eye(3, dtype=np.uint8)[ids] * 255
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.roll(rgb, 8 * i, 1)).save(images / f"{i}.png")  # lossless
        lab = np.roll(ids, 8 * i, 1)
        lab[0, 0] = 255
        _palette_png(masks / f"{i}.png", lab)
    loader = eval_loader(
        seg.EvalDataset(seg.mask_folder(images, masks, ["r", "g", "b"])),
        2,
        0,
        collate_fn=seg.eval_collate,
    )
    kw = dict(scale=(48, 32), crop=(16, 16), stride=(8, 8), mean=(0, 0, 0), std=(1, 1, 1))
    s = seg.evaluate(_Oracle(), loader, 3, torch.device("cpu"), ["r", "g", "b"], **kw)
    assert s["mIoU"] == 100 and s["aAcc"] == 100 and s["num_pixels"] == 3 * (32 * 48 - 1)
    task = seg.SegmentTask(loader, 3, torch.device("cpu"), scale=(48, 32), crop=None)
    assert set(task.evaluate(seg.upernet(_vit(), 3, channels=8, aux_channels=8), 0)) == {
        "val/mIoU",
        "val/mAcc",
        "val/aAcc",
    }


# ---------------------------------------------------------------- pictures and prediction


def test_pictures_and_predicted_mask_files(tmp_path):
    colors = seg.palette(300)
    assert len({tuple(c) for c in colors[:255]}) == 255 and colors[0].any()
    pred = torch.randint(0, 5, (24, 32))
    label = pred.clone()
    label[:4] = 255
    img = torch.randint(0, 256, (3, 24, 32), dtype=torch.uint8)
    fig = seg.prediction_figure(img, pred, label, colors, tmp_path / "o.png", list("abcde"))
    with Image.open(fig) as im:
        assert im.size[0] > 300
    bars = seg.plot_class_iou([50.0, float("nan"), 80.0], ["a", "b", "c"], tmp_path / "iou.png")
    with Image.open(bars) as im:
        assert im.format == "PNG"
    path = seg.save_mask(pred, tmp_path / "m.png", colors)
    with Image.open(path) as im:
        assert im.mode == "P"
    assert torch.equal(torch.from_numpy(seg.read_mask(path)), pred)
    big = seg.save_mask(torch.full((4, 4), 299), tmp_path / "big.png", colors)
    assert seg.read_mask(big).max() == 299

    for sub in ("a", "b"):  # same file name in two folders: both kept
        _jpeg(tmp_path / sub / "0001.jpg", 24, 32)
    model = seg.upernet(_vit(), 5, channels=8, aux_channels=8)
    out = seg.predict_files(
        model,
        [tmp_path / "a/0001.jpg", tmp_path / "b/0001.jpg"],
        tmp_path / "pred",
        torch.device("cpu"),
        colors,
        scale=(32, 32),
        crop=(32, 32),
        stride=(16, 16),
    )
    assert len(set(out)) == 2 and all(seg.read_mask(p).shape == (24, 32) for p in out)
    assert len(list((tmp_path / "pred").glob("*_overlay.png"))) == 2
    assert model.training  # mode restored
