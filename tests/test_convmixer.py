"""ConvMixer: published sizes, shapes, the backbone contract, BN folding, one-cycle lr,
filter pictures, export, and supervised training on real images."""

import json

import pytest
import torch
from torch import nn

import mimkit
from mimkit.cli import main
from mimkit.engine.schedule import one_cycle
from mimkit.errors import UserError
from mimkit.interop.fold import fold_batchnorm, fold_conv_bn

# Parameter counts as published (ConvMixer paper, Table 1; timm's model cards).
PUBLISHED_M = {
    "convmixer_1536_20": 51.6,
    "convmixer_768_32": 21.1,
    "convmixer_1024_20_ks9_p14": 24.4,
}


@pytest.mark.parametrize("name", list(PUBLISHED_M))
def test_parameter_counts_match_published(name):
    with torch.device("meta"):
        model = mimkit.create_model(name)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == PUBLISHED_M[name]


def test_cifar_model_size_activation_and_shapes():
    model = mimkit.create_model("convmixer_256_8").eval()
    n = sum(p.numel() for p in model.parameters())
    assert 0.55e6 < n < 0.8e6  # ~0.59 M with the 10-class head
    assert isinstance(mimkit.create_model("convmixer_768_32", num_classes=0).stem[1], nn.ReLU)
    assert isinstance(model.stem[1], nn.GELU)
    for size in (32, 48, 64):
        x = torch.randn(2, 3, size, size)
        feats = model.forward_features(x)
        assert feats.shape == (2, 256, size // 2, size // 2)
        assert model.forward_head(feats, pre_logits=True).shape == (2, 256)
        assert model(x).shape == (2, 10)
    with pytest.raises(UserError, match="act"):
        mimkit.create_model("convmixer", act="swish")


def test_layer_decay_groups_and_partial_training_follow_blocks():
    from mimkit.eval.classify import freeze_all_but_last, layer_decay_groups

    model = mimkit.create_model("convmixer_256_8")
    groups = layer_decay_groups(model, 0.05, 0.5)
    scales = sorted({g["lr_scale"] for g in groups})
    assert len(scales) == 10 and scales[-1] == 1.0  # stem, 8 blocks, head
    freeze_all_but_last(model, 2)
    trainable = {
        n.split(".")[0] + "." + n.split(".")[1]
        for n, p in model.named_parameters()
        if p.requires_grad and n.startswith("blocks.")
    }
    assert trainable == {"blocks.6", "blocks.7"} and model.head.weight.requires_grad


def _randomise_bn(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))


def test_conv_bn_folding_is_exact_in_eval_mode():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()).eval()
    _randomise_bn(seq)
    x = torch.randn(4, 3, 10, 10)
    ref = seq(x)
    fused = fold_conv_bn(seq[0], seq[1])
    torch.testing.assert_close(torch.relu(fused(x)), ref, rtol=1e-5, atol=1e-5)
    report = fold_batchnorm(seq)
    assert report == {"folded": [".1"], "kept": []} and isinstance(seq[1], nn.Identity)
    torch.testing.assert_close(seq(x), ref, rtol=1e-5, atol=1e-5)


def test_convmixer_folds_only_its_last_bn_and_keeps_outputs():
    torch.manual_seed(0)
    model = mimkit.create_model(
        "convmixer", dim=16, depth=3, kernel_size=3, patch_size=2, num_classes=5
    ).eval()
    _randomise_bn(model)
    x = torch.randn(2, 3, 16, 16)
    ref = model(x)
    report = fold_batchnorm(model)
    # BN follows GELU everywhere: no conv -> BN pair; only the last BN folds (into the head)
    assert report["folded"] == ["blocks.2.3"]
    assert len(report["kept"]) == 1 + 3 * 2 - 1  # stem BN + two per block, minus the folded
    torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-5)


def test_one_cycle_schedule_points():
    assert one_cycle(0, 0.05, 25) == 0
    assert one_cycle(10, 0.05, 25) == pytest.approx(0.05)
    assert one_cycle(20, 0.05, 25) == pytest.approx(0.0025)
    assert one_cycle(25, 0.05, 25) == 0
    assert one_cycle(5, 0.05, 25) == pytest.approx(0.025)  # linear in between


@pytest.fixture(scope="module")
def trained(tmp_path_factory, labeled_root):
    out = tmp_path_factory.mktemp("convmixer") / "run"
    args = [
        "train",
        "--config",
        "convmixer_256_8_cifar",
        "--data",
        labeled_root,
        "--out",
        out,
        "--epochs",
        "4",
        "--batch-size",
        "16",
        "model.args.dim=32",
        "model.args.depth=2",
        "data.num_workers=0",
        "train.tensorboard=false",
        "optim.lr=0.01",
    ]
    assert main([str(a) for a in args]) == 0
    return out


def test_supervised_training_lowers_the_loss_on_real_images(trained):
    epochs = [json.loads(x) for x in (trained / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in epochs if r["kind"] == "epoch"]
    assert len(losses) == 4 and losses[-1] < losses[0]
    state = torch.load(trained / "checkpoint-last.pth", weights_only=True)
    assert state["model_name"] == "convmixer_256_8" and state["model_args"]["dim"] == 32
    assert json.loads((trained / "metrics.json").read_text())["num_images"] == 32


@pytest.mark.slow
def test_filters_picture_and_exports_match(trained, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    ckpt = str(trained / "checkpoint-last.pth")
    png = tmp_path / "filters.png"
    assert main(["visualize-filters", "--checkpoint", ckpt, "--out", str(png), "--layer", "1"]) == 0
    assert png.stat().st_size > 5_000
    model, _ = mimkit.interop.checkpoint.model_from_checkpoint(ckpt, kind="encoder")
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    ts, onnx = tmp_path / "m.pt", tmp_path / "m.onnx"
    for fmt, path in (("torchscript", ts), ("onnx", onnx)):
        assert main(["export", "--checkpoint", ckpt, "--format", fmt, "--out", str(path)]) == 0
    torch.testing.assert_close(torch.jit.load(str(ts))(x), ref, rtol=1e-4, atol=1e-4)
    sess = ort.InferenceSession(str(onnx))
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), ref, rtol=1e-4, atol=1e-4)
    assert (
        main(
            [
                "export",
                "--checkpoint",
                ckpt,
                "--format",
                "timm",
                "--out",
                str(tmp_path / "m.safetensors"),
            ]
        )
        == 2
    )
    assert "ViT encoders" in capsys.readouterr().err
