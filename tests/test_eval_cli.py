"""The evaluation commands end to end on real images: knn, linprobe, finetune, qscore,
predict, export, with distributed evaluation and bad input."""

import csv
import json
import os
import subprocess

import pytest
import torch

import mimkit
from mimkit.cli import main
from mimkit.interop.checkpoint import model_from_checkpoint

from .conftest import TORCHRUN_MIMKIT

TINY_ARGS = [
    "model.name=mae_vit_tiny_cifar",
    "model.args.embed_dim=32",
    "model.args.depth=1",
    "model.args.num_heads=2",
    "data.num_workers=0",
    "train.tensorboard=false",
]


def _run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    return out, err


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MIMKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_knn_end_to_end_and_cached_second_run(
    tmp_path, labeled_root, tiny_mae_ckpt, cache, capsys, monkeypatch
):
    out = tmp_path / "knn"
    stdout, err = _run(
        capsys,
        "knn",
        "--checkpoint",
        tiny_mae_ckpt,
        "--data",
        labeled_root,
        "--out",
        out,
        "data.num_workers=0",
    )
    assert "k=[200] exceeds the 64 training images" in err
    m = json.loads((out / "metrics.json").read_text())
    # k=200 is more than the 64 training images: capped (and said so)
    assert set(m["k"]) == {"10", "20", "64"} and m["num_images"] == 32 and m["num_train"] == 64
    assert set(m["per_class"]) == {"airplane", "cat", "ship", "truck"}
    assert (out / "confusion.png").is_file() and (out / "config.yaml").is_file()
    assert "k=10" in stdout

    import mimkit.recipes.backbone as E  # a second run with other k must not re-encode anything

    monkeypatch.setattr(E, "extract", lambda *a, **k: pytest.fail("features recomputed"))
    _run(
        capsys,
        "knn",
        "--checkpoint",
        tiny_mae_ckpt,
        "--data",
        labeled_root,
        "--out",
        tmp_path / "knn2",
        "eval.knn_k=[3,5]",
        "data.num_workers=0",
    )
    m2 = json.loads((tmp_path / "knn2" / "metrics.json").read_text())
    assert set(m2["k"]) == {"3", "5"}


@pytest.mark.slow
def test_cached_and_uncached_linear_probes_agree(
    tmp_path, labeled_root, tiny_mae_ckpt, cache, capsys
):
    common = [
        "--checkpoint",
        tiny_mae_ckpt,
        "--data",
        labeled_root,
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "data.num_workers=0",
        "train.tensorboard=false",
    ]
    _run(capsys, "linprobe", *common, "--out", tmp_path / "cached")
    _run(capsys, "linprobe", *common, "--out", tmp_path / "direct", "linprobe.cache=false")
    a = torch.load(tmp_path / "cached" / "checkpoint-last.pth", weights_only=True)
    b = torch.load(tmp_path / "direct" / "checkpoint-last.pth", weights_only=True)
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-4, atol=1e-5)
    ma = json.loads((tmp_path / "cached" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "direct" / "metrics.json").read_text())
    assert ma["top1"] == mb["top1"] and ma["num_images"] == 32
    assert (tmp_path / "cached" / "checkpoint-best.pth").is_file()


def test_linprobe_with_augmentation_and_sgd(tmp_path, labeled_root, tiny_mae_ckpt, cache, capsys):
    _run(
        capsys,
        "linprobe",
        "--checkpoint",
        tiny_mae_ckpt,
        "--data",
        labeled_root,
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--out",
        tmp_path / "aug",
        "linprobe.augment=true",
        "linprobe.optimizer=sgd",
        "eval.pool=avg",
        "data.num_workers=0",
    )
    assert json.loads((tmp_path / "aug" / "metrics.json").read_text())["num_images"] == 32


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, labeled_root, tiny_mae_ckpt):
    out = tmp_path_factory.mktemp("ft") / "run"
    code = main(
        [
            "finetune",
            "--checkpoint",
            str(tiny_mae_ckpt),
            "--data",
            str(labeled_root),
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--out",
            str(out),
            "data.num_workers=0",
            "train.tensorboard=false",
            "optim.warmup_epochs=1",
        ]
    )
    assert code == 0
    return out


def test_finetune_outputs(finetuned):
    m = json.loads((finetuned / "metrics.json").read_text())
    assert m["num_images"] == 32 and {"top1", "top5", "per_class", "best_top1"} <= set(m)
    for name in ("checkpoint-last.pth", "checkpoint-best.pth", "confusion.png", "curves.png"):
        assert (finetuned / name).is_file(), name
    state = torch.load(finetuned / "checkpoint-last.pth", weights_only=True)
    assert state["classes"] == ["airplane", "cat", "ship", "truck"]
    assert state["model_args"]["global_pool"] == "avg" and state["model_args"]["num_classes"] == 4
    assert "fc_norm.weight" in state["model"] and "norm.weight" not in state["model"]


def test_finetune_from_scratch_and_partial(tmp_path, labeled_root, capsys):
    _run(
        capsys,
        "finetune",
        "--checkpoint",
        "none",
        "--data",
        labeled_root,
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--out",
        tmp_path / "scratch",
        *TINY_ARGS,
    )
    _run(
        capsys,
        "finetune",
        "--checkpoint",
        "none",
        "--data",
        labeled_root,
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--out",
        tmp_path / "partial",
        "finetune.trainable_blocks=0",
        *TINY_ARGS,
    )
    full = torch.load(tmp_path / "scratch" / "checkpoint-last.pth", weights_only=True)
    part = torch.load(tmp_path / "partial" / "checkpoint-last.pth", weights_only=True)
    n_full = sum(len(g["params"]) for g in full["optimizer"]["param_groups"])
    n_part = sum(len(g["params"]) for g in part["optimizer"]["param_groups"])
    assert n_part == 4 < n_full  # fc_norm weight/bias + head weight/bias only


def test_finetune_resumes(tmp_path, labeled_root, tiny_mae_ckpt, capsys):
    args = [
        "finetune",
        "--checkpoint",
        tiny_mae_ckpt,
        "--data",
        labeled_root,
        "--batch-size",
        "16",
        "data.num_workers=0",
        "train.tensorboard=false",
    ]
    _run(capsys, *args, "--epochs", "2", "--out", tmp_path / "a")
    _run(capsys, *args, "--epochs", "2", "--out", tmp_path / "b", "train.max_steps=4")
    _run(capsys, "finetune", "--resume", tmp_path / "b", "train.max_steps=null")
    a = torch.load(tmp_path / "a" / "checkpoint-last.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint-last.pth", weights_only=True)["model"]
    for k in a:  # mixup, RandAugment, drop path: all restored
        assert torch.equal(a[k], b[k]), k


def test_qscore_csv_and_auc(tmp_path, labeled_root, tiny_mae_ckpt, cache, capsys):
    out = tmp_path / "q"
    stdout, _ = _run(
        capsys,
        "qscore",
        "--checkpoint",
        tiny_mae_ckpt,
        "--data",
        labeled_root,
        "--out",
        out,
        "data.num_workers=0",
    )
    rows = list(csv.DictReader((out / "qscore.csv").open()))
    assert len(rows) == 32
    scores = [float(r["qscore"]) for r in rows]
    assert scores == sorted(scores)  # lowest first
    assert all(r["correct"] in ("0", "1") for r in rows)
    m = json.loads((out / "metrics.json").read_text())
    assert (
        0.0 <= m["auc_correct_vs_wrong"] <= 1.0
        or m["auc_correct_vs_wrong"] != m["auc_correct_vs_wrong"]
    )
    assert (out / "qscore_hist.png").is_file() and "ROC AUC" in stdout


def test_predict_table_csv_json_and_corrupt_file(tmp_path, finetuned, labeled_root, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"garbage")
    stdout, err = _run(
        capsys,
        "predict",
        "--checkpoint",
        finetuned / "checkpoint-best.pth",
        labeled_root / "val" / "cat",
        bad,
        "--topk",
        "2",
        "--csv",
        tmp_path / "p.csv",
        "--json",
        tmp_path / "p.json",
        "--num-workers",
        "0",
    )
    rows = json.loads((tmp_path / "p.json").read_text())
    assert len(rows) == 8 and all(len(r["top"]) == 2 for r in rows)
    assert all(r["top"][0]["class"] in ("airplane", "cat", "ship", "truck") for r in rows)
    probs = [t["prob"] for t in rows[0]["top"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    assert "broken.jpg" in err and len(stdout.splitlines()) == 8
    assert len(list(csv.reader((tmp_path / "p.csv").open()))) == 9


def test_export_timm_round_trip(tmp_path, finetuned, tiny_mae_ckpt, capsys):
    import timm

    for ckpt in (finetuned / "checkpoint-best.pth", tiny_mae_ckpt):  # classifier and encoder
        out = tmp_path / f"{ckpt.parent.name}.safetensors"
        _run(capsys, "export", "--checkpoint", ckpt, "--format", "timm", "--out", out)
        recipe = json.loads(out.with_suffix(".json").read_text())
        theirs = timm.create_model(
            recipe["model_name"],
            pretrained=True,
            pretrained_cfg_overlay=recipe["pretrained_cfg_overlay"],
            **recipe["kwargs"],
        ).eval()
        ours, _ = model_from_checkpoint(ckpt, kind="encoder")
        x = torch.randn(3, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(theirs(x), ours.eval()(x))
            f_ours = mimkit.eval.features.encode(ours, x)
            f_theirs = theirs.forward_head(theirs.forward_features(x), pre_logits=True)
            torch.testing.assert_close(f_theirs, f_ours)


def test_export_torchscript_and_onnx_match_pytorch(tmp_path, finetuned, capsys):
    ckpt = finetuned / "checkpoint-best.pth"
    model, _ = model_from_checkpoint(ckpt, kind="encoder")
    model.eval()
    x = torch.randn(5, 3, 32, 32)  # another batch size than the export example
    with torch.no_grad():
        ref = model(x)
    _run(
        capsys,
        "export",
        "--checkpoint",
        ckpt,
        "--format",
        "torchscript",
        "--out",
        tmp_path / "m.pt",
    )
    scripted = torch.jit.load(str(tmp_path / "m.pt"))
    torch.testing.assert_close(scripted(x), ref, rtol=1e-4, atol=1e-5)

    ort = pytest.importorskip("onnxruntime")
    _run(capsys, "export", "--checkpoint", ckpt, "--format", "onnx", "--out", tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"))
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), ref, rtol=1e-4, atol=1e-4)


def test_bad_layouts_are_clear(tmp_path, labeled_root, tiny_mae_ckpt, capsys):
    import shutil

    no_val = tmp_path / "no_val"
    shutil.copytree(labeled_root / "train", no_val / "train")
    assert main(["knn", "--checkpoint", str(tiny_mae_ckpt), "--data", str(no_val)]) == 2
    assert "no val (or test) split: expected ROOT/train/<class>" in capsys.readouterr().err
    odd = tmp_path / "odd"
    shutil.copytree(labeled_root, odd)
    (odd / "val" / "cat").rename(odd / "val" / "kitten")
    assert main(["knn", "--checkpoint", str(tiny_mae_ckpt), "--data", str(odd)]) == 2
    err = capsys.readouterr().err
    assert (
        "class folders differ" in err
        and "only in train: cat" in err
        and "only in val: kitten" in err
    )
    assert main(["knn", "--data", str(labeled_root)]) == 2
    assert "no backbone given" in capsys.readouterr().err


@pytest.mark.slow
def test_distributed_knn_counts_every_image_once(tmp_path, labeled_root, tiny_mae_ckpt):
    """2 gloo processes, 32 val images (an uneven split per rank is fine): the same numbers."""
    single = tmp_path / "single"
    assert (
        main(
            [
                "knn",
                "--checkpoint",
                str(tiny_mae_ckpt),
                "--data",
                str(labeled_root),
                "--out",
                str(single),
                "eval.cache_dir=none",
                "data.num_workers=0",
                "eval.batch_size=5",
            ]
        )
        == 0
    )
    out = tmp_path / "ddp"
    cmd = [
        *TORCHRUN_MIMKIT,
        "knn",
        "--checkpoint",
        str(tiny_mae_ckpt),
        "--data",
        str(labeled_root),
        "--out",
        str(out),
        "eval.cache_dir=none",
        "data.num_workers=0",
        "eval.batch_size=5",
        "--device",
        "cpu",
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = json.loads((single / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    assert b["num_images"] == 32 and b["num_train"] == 64
    for k in a["k"]:
        assert a["k"][k]["top1"] == pytest.approx(b["k"][k]["top1"], abs=1e-6)
