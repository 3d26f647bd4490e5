import json
import subprocess
import sys

import pytest
import torch

from mimkit.cli import main

from .conftest import FIXTURES, TINY_MAE


def _run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_pretrain_then_visualize(tmp_path, image_folder, capsys):
    bad = image_folder / "cat" / "zz_corrupt.jpg"
    bad.write_bytes(b"not a jpeg at all")
    out = tmp_path / "run"
    code, _, err = _run(
        capsys,
        "pretrain",
        "--data",
        str(image_folder),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        "16",
        *TINY_MAE,
        "train.log_every=2",
    )
    assert code == 0, err
    for name in (
        "config.yaml",
        "log.jsonl",
        "checkpoint-last.pth",
        "checkpoint-0002.pth",
        "loss.png",
        "reconstructions.png",
    ):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert train and all({"loss", "lr", "img_s", "epoch", "step"} <= set(r) for r in train)
    assert [r["skipped_images"] for r in records if r["kind"] == "epoch"] == [1, 1]
    assert "skipped unreadable image" in err and "zz_corrupt.jpg" in err
    state = torch.load(out / "checkpoint-last.pth", weights_only=True)
    assert state["model_name"] == "mae_vit_tiny_cifar" and state["model_args"]["embed_dim"] == 32
    assert "optimizer" in state and state["config"]["data"]["batch_size"] == 16

    grid = tmp_path / "grid.png"
    code, stdout, err = _run(
        capsys,
        "visualize",
        "--checkpoint",
        str(out / "checkpoint-last.pth"),
        "--images",
        str(image_folder / "ship"),
        str(bad),
        "--out",
        str(grid),
        "--num-images",
        "3",
    )
    assert code == 0, err
    assert grid.is_file() and "masked-patch loss" in stdout


def test_new_run_never_overwrites_an_old_one(tmp_path, image_folder, capsys):
    out = tmp_path / "run"
    args = [
        "pretrain",
        "--data",
        str(image_folder),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "32",
        *TINY_MAE,
    ]
    assert _run(capsys, *args)[0] == 0
    code, _, err = _run(capsys, *args)
    assert code == 2 and "already holds a run" in err and "--resume" in err


def test_dry_run_prints_resolved_config(capsys):
    code, out, _ = _run(
        capsys,
        "pretrain",
        "--config",
        "mae_vit_tiny_cifar",
        "--data",
        "x",
        "--epochs",
        "5",
        "optim.blr=2e-4",
        "--dry-run",
    )
    assert code == 0
    assert "epochs: 5" in out and "blr: 0.0002" in out and "path: x" in out


@pytest.mark.parametrize(
    "args,pattern",
    [
        (
            ["pretrain", "--data", "{empty}", "--dry-run", "train.epoch=1"],
            "unknown config key 'train.epoch'",
        ),
        (
            ["pretrain", "--data", "{empty}", "--config", "mae_vit_tiny_cifar"],
            "no images found under",
        ),
        (
            [
                "pretrain",
                "--data",
                "{images}",
                "--config",
                "mae_vit_tiny_cifar",
                "data.img_size=30",
                "--batch-size",
                "8",
            ],
            "not divisible by patch size 4",
        ),
        (["pretrain", "--resume", "{missing}"], "nothing to resume"),
        (["visualize", "--checkpoint", "{missing}", "--images", "x"], "checkpoint not found"),
    ],
)
def test_errors_are_one_line(tmp_path, image_folder, capsys, args, pattern):
    (tmp_path / "empty").mkdir()
    subs = {
        "{empty}": str(tmp_path / "empty"),
        "{missing}": str(tmp_path / "missing.pth"),
        "{images}": str(image_folder),
    }
    code, _, err = _run(capsys, *[subs.get(a, a) for a in args])
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("mimkit: error")]
    assert len(lines) == 1 and pattern in lines[0], err


def test_empty_data_fails_before_any_model_is_built(tmp_path, capsys, monkeypatch):
    import mimkit.recipes.pretrain as P

    monkeypatch.setattr(P, "build_model", lambda cfg: pytest.fail("model was built"))
    (tmp_path / "empty").mkdir()
    code, _, err = _run(
        capsys, "pretrain", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "run")
    )
    assert code == 2 and "no images found" in err


def test_visualize_official_file(tmp_path, reference, image_folder, capsys):
    path = tmp_path / "mae_visualize.pth"
    torch.save({"model": reference["state_dict"]}, path)
    code, out, err = _run(
        capsys,
        "visualize",
        "--checkpoint",
        str(path),
        "--images",
        str(image_folder),
        "--out",
        str(tmp_path / "g.png"),
        "--num-images",
        "2",
    )
    assert code == 0, err  # heads inferred (64 -> 1): still a valid model to draw from


@pytest.mark.slow
def test_every_command_has_help(capsys):
    proc = subprocess.run(
        [sys.executable, "-m", "mimkit", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "pretrain" in proc.stdout  # the entry point itself
    commands = [
        "pretrain",
        "visualize",
        "configs",
        "models",
        "knn",
        "linprobe",
        "finetune",
        "qscore",
        "train",
        "predict",
        "export",
        "benchmark",
        "shards",
        "detect",
    ]
    for cmd in commands:
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        out = capsys.readouterr().out
        assert e.value.code == 0 and len(out.splitlines()) > 3, cmd


def test_configs_and_models_lists(capsys):
    assert _run(capsys, "configs")[1].count("mae_vit_") >= 4
    assert "mae_vit_base_patch16" in _run(capsys, "models", "mae_*")[1]
    assert FIXTURES.is_dir()
