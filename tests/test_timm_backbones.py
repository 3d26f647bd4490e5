"""Any timm model where an encoder is expected: kNN, linear probe, fine-tune and export
with ``--model timm:NAME`` and ``--checkpoint none | FILE`` (a local weights file)."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import save_file

import mimkit
from mimkit.cli import main
from mimkit.models import preprocessing


def _run(*args) -> int:
    return main([str(a) for a in args])


def test_resnet18_through_knn_and_linprobe(tmp_path, labeled_root):
    common = [
        "--data",
        labeled_root,
        "data.img_size=32",
        "eval.cache_dir=none",
        "data.num_workers=0",
    ]
    assert (
        _run(
            "knn",
            "--model",
            "timm:resnet18",
            "--checkpoint",
            "none",
            "--out",
            tmp_path / "knn",
            *common,
        )
        == 0
    )
    m = json.loads((tmp_path / "knn" / "metrics.json").read_text())
    assert m["num_images"] == 32 and 0 <= m["top1"] <= 100
    assert (
        _run(
            "linprobe",
            "--model",
            "timm:resnet18",
            "--checkpoint",
            "none",
            "--epochs",
            1,
            "--out",
            tmp_path / "probe",
            *common,
        )
        == 0
    )
    assert json.loads((tmp_path / "probe" / "metrics.json").read_text())["num_images"] == 32


@pytest.mark.slow
def test_local_timm_weights_file_is_what_the_backbone_holds(tmp_path, labeled_root):
    torch.manual_seed(3)
    ref = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    path = tmp_path / "model.safetensors"  # the Hugging Face Hub layout of timm weights
    save_file(ref.state_dict(), str(path))
    ours = mimkit.create_model("timm:resnet18", checkpoint=path, num_classes=0).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))
    # its pretrained_cfg drives the evaluation transform: timm's mean/std and crop
    prep = preprocessing(ours)
    assert prep["crop_pct"] == 0.95 and prep["img_size"] == 224 and len(prep["mean"]) == 3
    code = _run(
        "knn",
        "--model",
        "timm:resnet18",
        "--checkpoint",
        path,
        "--data",
        labeled_root,
        "--out",
        tmp_path / "knn",
        "data.img_size=32",
        "eval.cache_dir=none",
        "data.num_workers=0",
    )
    assert code == 0


@pytest.mark.slow
def test_finetuned_timm_classifier_predicts_and_exports(tmp_path, labeled_root, capsys):
    ft = tmp_path / "ft"
    code = _run(
        "finetune",
        "--model",
        "timm:resnet18",
        "--checkpoint",
        "none",
        "--data",
        labeled_root,
        "--out",
        ft,
        "--epochs",
        1,
        "--batch-size",
        16,
        "data.img_size=32",
        "data.num_workers=0",
        "finetune.mixup=0",
        "finetune.cutmix=0",
    )
    assert code == 0
    img = next((labeled_root / "val" / "cat").iterdir())
    assert _run("predict", "--checkpoint", ft / "checkpoint-last.pth", "--images", img) == 0
    assert img.name in capsys.readouterr().out
    out = tmp_path / "exported"
    assert _run("export", "--checkpoint", ft / "checkpoint-last.pth", "--out", f"{out}/") == 0
    recipe = json.loads((out / "model.json").read_text())
    again = timm.create_model(
        recipe["model_name"],
        pretrained=True,
        pretrained_cfg_overlay=recipe["pretrained_cfg_overlay"],
        **recipe["kwargs"],
    )
    assert recipe["model_name"] == "resnet18" and again.num_classes == 4
