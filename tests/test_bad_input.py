"""Faults and bad input, second round: stale and damaged caches, NaN weights, bad labels,
meaningless metrics, ONNX side files, EXIF orientation, tracker conventions.

Each test pins one failure a user met: it failed before the fix and passes now.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import mimkit
from mimkit.cli import main

from .conftest import CIFAR_MINI, TINY_MAE

TINY_VIT = ["model.name=vit_tiny_cifar", "data.num_workers=0"]


def _run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> bool:
    """Exactly one 'mimkit: error' line and no traceback (info lines may come before)."""
    errors = [line for line in err.splitlines() if line.startswith("mimkit: error")]
    return len(errors) == 1 and "Traceback" not in err


def _error(err: str) -> str:
    """The 'mimkit: error' line (info lines before it may name the same files)."""
    return next((line for line in err.splitlines() if line.startswith("mimkit: error")), "")


def _labeled(root: Path, classes=("airplane", "cat"), n_train=4, n_val=2) -> Path:
    for split, src, n in (("train", "train", n_train), ("val", "test", n_val)):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for f in sorted((CIFAR_MINI / src / cls).iterdir())[:n]:
                shutil.copy(f, root / split / cls / f.name)
    return root


# ---------------------------------------------------------------------------- 5. stale caches


def test_knn_feature_cache_sees_edited_images(tmp_path, labeled_root, monkeypatch, capsys):
    """30 of 32 test images blacked out after the cache was built: the val features are
    extracted again (the train split, untouched, still comes from the cache)."""
    import mimkit.recipes.backbone as B

    root = tmp_path / "data"
    shutil.copytree(labeled_root, root)
    args = ["knn", "--checkpoint", "none", "--data", root, *TINY_VIT, "eval.baselines=false"]
    args += [f"eval.cache_dir={tmp_path / 'cache'}"]
    code, _, err = _run(capsys, *args, "--out", tmp_path / "k1")
    assert code == 0, err
    for f in sorted((root / "val").rglob("*.jpg"))[:30]:
        Image.new("RGB", (32, 32)).save(f)
    seen = []
    real = B.extract
    monkeypatch.setattr(B, "extract", lambda m, s, *a, **k: seen.append(s) or real(m, s, *a, **k))
    code, _, err = _run(capsys, *args, "--out", tmp_path / "k2")
    assert code == 0, err
    assert [s.root for s in seen] == [str(root / "val")]  # only the edited split


def test_tensor_cache_sees_edited_images(tmp_path, image_folder):
    from mimkit.data import folder_source
    from mimkit.data.tensor_cache import load_tensor_cache

    source = folder_source(image_folder)
    first = load_tensor_cache(source, 32, tmp_path / "cache", num_workers=0)
    assert first["images"][0].float().mean() > 10
    Image.new("RGB", (32, 32)).save(source.paths[0], format="JPEG")  # same name, black
    again = load_tensor_cache(folder_source(image_folder), 32, tmp_path / "cache", num_workers=0)
    assert again["images"][0].float().mean() < 3  # the new pixels, not the cached ones
    assert torch.equal(again["images"][1:], first["images"][1:])


def test_hf_folder_cache_key_follows_its_weight_files(tmp_path, tiny_mae_ckpt, capsys):
    """``model.safetensors`` overwritten in place (even keeping size and mtime): a new key."""
    from safetensors.torch import load_file, save

    from mimkit.eval.features import checkpoint_identity

    hf = tmp_path / "hf"
    code, _, err = _run(
        capsys, "export", "--checkpoint", tiny_mae_ckpt, "--format", "hf", "--out", hf
    )
    assert code == 0, err
    weights = hf / "model.safetensors"
    before = checkpoint_identity(str(hf))
    st = weights.stat()
    other = {k: v * 2 for k, v in load_file(str(weights)).items()}
    folder = hf.stat()
    weights.write_bytes(save(other, metadata={"format": "pt"}))  # in place: same inode
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # a rewrite within one clock tick
    assert hf.stat().st_mtime_ns == folder.st_mtime_ns  # the folder's own stat says nothing
    assert weights.stat().st_size == st.st_size
    assert checkpoint_identity(str(hf)) != before
    # an untouched folder keeps its key (a second run hits the cache)
    assert checkpoint_identity(str(hf)) == checkpoint_identity(str(hf))


# ---------------------------------------------------------------------------- 6. NaN weights


def _nan_copy(ckpt: Path, out: Path, key: str) -> Path:
    c = torch.load(ckpt, weights_only=True)
    c["model"][key].view(-1)[0] = float("nan")
    torch.save(c, out)
    return out


def test_first_non_finite_names_the_tensor():
    from mimkit.utils.finite import first_non_finite

    model = mimkit.create_model("vit_tiny_cifar", embed_dim=32, depth=1, num_heads=2)
    assert first_non_finite(model) is None and first_non_finite(model.state_dict()) is None
    with torch.no_grad():
        model.blocks[0].mlp.fc1.bias[3] = float("inf")
    assert first_non_finite(model) == "blocks.0.mlp.fc1.bias"
    nested = {"model": {"a": torch.ones(2), "b": torch.tensor([1.0, math.nan])}, "step": 3}
    assert first_non_finite(nested) == "model.b"
    assert first_non_finite({"ids": torch.arange(3)}) is None  # integers cannot be NaN


def test_nan_checkpoint_knn_is_one_line(tmp_path, tiny_mae_ckpt, labeled_root, capsys):
    bad = _nan_copy(tiny_mae_ckpt, tmp_path / "nan.pth", "blocks.0.attn.qkv.weight")
    code, out, err = _run(
        capsys, "knn", "--checkpoint", bad, "--data", labeled_root, "--out", tmp_path / "k",
        "data.num_workers=0", f"eval.cache_dir={tmp_path / 'cache'}",
    )  # fmt: skip
    assert code == 2 and _one_error_line(err), err
    assert str(bad) in _error(err) and "blocks.0.attn.qkv.weight" in _error(err)
    assert "top-1" not in out


def test_nan_weights_are_not_exported(tmp_path, tiny_mae_ckpt, capsys):
    bad = _nan_copy(tiny_mae_ckpt, tmp_path / "nan.pth", "norm.weight")
    for fmt in ("timm", "torchscript"):
        out = tmp_path / fmt
        code, _, err = _run(
            capsys, "export", "--checkpoint", bad, "--format", fmt, "--out", f"{out}/"
        )
        assert code == 2 and _one_error_line(err), err
        assert "norm.weight" in _error(err) and not out.exists()


def test_nan_weights_are_not_exported_to_hugging_face(tmp_path, tiny_mae_ckpt, capsys):
    bad = _nan_copy(tiny_mae_ckpt, tmp_path / "nan.pth", "norm.weight")
    code, _, err = _run(
        capsys, "export", "--checkpoint", bad, "--format", "hf", "--out", tmp_path / "hf"
    )
    assert code == 2 and "norm.weight" in _error(err)
    assert not (tmp_path / "hf" / "model.safetensors").exists()


def _nan_classifier(path: Path) -> Path:
    args = dict(embed_dim=32, depth=1, num_heads=2, num_classes=4)
    sd = mimkit.create_model("vit_tiny_cifar", **args).state_dict()
    sd["head.weight"][0, 0] = float("nan")
    classes = ["airplane", "cat", "ship", "truck"]
    torch.save(
        {"model": sd, "model_name": "vit_tiny_cifar", "model_args": args, "classes": classes}, path
    )
    return path


def test_nan_logits_in_predict_are_one_line(tmp_path, capsys):
    ckpt = _nan_classifier(tmp_path / "clf.pth")
    img = next((CIFAR_MINI / "test" / "cat").iterdir())
    code, out, err = _run(
        capsys, "predict", "--checkpoint", ckpt, "--images", img, "--num-workers", 0
    )
    assert code == 2 and _one_error_line(err), err
    assert "head.weight" in _error(err) and "nan" not in out


def test_nan_logits_in_predict_name_the_checkpoint(tmp_path, capsys):
    ckpt = _nan_classifier(tmp_path / "clf.pth")
    img = next((CIFAR_MINI / "test" / "cat").iterdir())
    code, _, err = _run(
        capsys, "predict", "--checkpoint", ckpt, "--images", img, "--num-workers", 0
    )
    assert code == 2 and str(ckpt) in _error(err)


# ------------------------------------------------------------------- 8. damaged tensor cache


def test_truncated_tensor_cache_is_rebuilt_with_a_warning(tmp_path, image_folder, mimkit_log):
    from mimkit.data import folder_source
    from mimkit.data.tensor_cache import load_tensor_cache, tensor_cache_path

    source = folder_source(image_folder)
    good = load_tensor_cache(source, 32, tmp_path / "cache", num_workers=0)
    path = tensor_cache_path(tmp_path / "cache", source, 32)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    again = load_tensor_cache(source, 32, tmp_path / "cache", num_workers=0)
    assert torch.equal(again["images"], good["images"])
    assert str(path) in mimkit_log.text and "rebuil" in mimkit_log.text
    assert torch.load(path, weights_only=True)["images"].shape == good["images"].shape


# ------------------------------------------------------------------ 10. labels in file lists


@pytest.mark.parametrize("label", ["-1", "5000000"])
def test_bad_label_in_a_file_list_names_file_and_line(tmp_path, capsys, label):
    cats = sorted((CIFAR_MINI / "train" / "cat").iterdir())[:3]
    ships = sorted((CIFAR_MINI / "train" / "ship").iterdir())[:3]
    train = tmp_path / "train.txt"
    lines = ["# path label", f"{cats[0]} 0", f"{ships[0]} {label}", f"{cats[1]} 0", f"{ships[1]} 1"]
    train.write_text("\n".join(lines) + "\n")
    (tmp_path / "val.txt").write_text(f"{cats[2]} 0\n{ships[2]} 1\n")
    code, _, err = _run(
        capsys, "knn", "--checkpoint", "none", "--data", "/", "--out", tmp_path / "k",
        f"data.file_list={train}", f"data.val_list={tmp_path / 'val.txt'}", *TINY_VIT,
    )  # fmt: skip
    assert code == 2 and _one_error_line(err), err
    assert f"{train}:3" in _error(err) and label in _error(err)


# ------------------------------------------------------------------- 13. meaningless metrics


@pytest.mark.parametrize("command", ["knn", "linprobe"])
def test_a_single_class_is_refused(tmp_path, capsys, command):
    root = _labeled(tmp_path / "one", classes=("cat",))
    epochs = ["--epochs", 1] if command == "linprobe" else []  # short when it is not refused
    code, out, err = _run(
        capsys, command, "--checkpoint", "none", "--data", root, "--out", tmp_path / "r",
        *epochs, *TINY_VIT,
    )  # fmt: skip
    assert code == 2 and _one_error_line(err), err
    assert "one class" in _error(err) and "cat" in _error(err) and "100" not in out


def test_metrics_json_is_strict_json(tmp_path):
    from mimkit.utils.io import write_json

    path = write_json(tmp_path / "metrics.json", {"auc": math.nan, "k": {"a": [1.0, math.inf]}})
    m = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert m["auc"] is None and m["k"]["a"] == [1.0, None]
    assert "NaN" in m["notes"]["auc"] and "Infinity" in m["notes"]["k.a.1"]


def test_qscore_with_an_undefined_auc_writes_strict_json(tmp_path, capsys):
    root = _labeled(tmp_path / "d", n_train=3, n_val=0)
    shutil.copytree(root / "train", root / "val", dirs_exist_ok=True)  # every kNN answer right
    code, _, err = _run(
        capsys, "qscore", "--checkpoint", "none", "--data", root, "--out", tmp_path / "q",
        "eval.knn_k=[1]", "eval.cache_dir=none", *TINY_VIT,
    )  # fmt: skip
    assert code == 0, err
    text = (tmp_path / "q" / "metrics.json").read_text()
    m = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in metrics.json"))
    assert m["auc_correct_vs_wrong"] is None and "auc_correct_vs_wrong" in m["notes"]


# ---------------------------------------------------------------------------- 15. ONNX in one file


@pytest.mark.slow
def test_onnx_export_is_one_file(tmp_path, tiny_mae_ckpt, capsys):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "onnx"
    code, _, err = _run(
        capsys, "export", "--checkpoint", tiny_mae_ckpt, "--format", "onnx", "--out", f"{out}/"
    )
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx"]
    moved = tmp_path / "elsewhere" / "model.onnx"  # the .onnx alone is the whole model
    moved.parent.mkdir()
    shutil.copy(out / "model.onnx", moved)
    sess = ort.InferenceSession(str(moved))
    got = sess.run(None, {"images": np.zeros((1, 3, 32, 32), np.float32)})[0]
    assert got.shape == (1, 32)


@pytest.mark.slow
def test_onnx_side_file_is_named_when_the_model_needs_one(tmp_path, mimkit_log, monkeypatch):
    pytest.importorskip("onnxscript")
    from mimkit.interop import export

    monkeypatch.setattr(export, "ONNX_SINGLE_FILE_LIMIT", 1024)  # stands in for 2 GB
    model = mimkit.create_model("vit_tiny_cifar", embed_dim=32, depth=1, num_heads=2)
    result = export.export_inference(model, tmp_path / "m.onnx", "onnx")
    data = [p.name for p in tmp_path.iterdir() if p.name != "m.onnx"]
    assert data and result["files"] == [tmp_path / "m.onnx", tmp_path / data[0]]
    assert f"{tmp_path / data[0]}" in mimkit_log.text


# ---------------------------------------------------------------------------- 16. EXIF orientation


# The transpose that undoes each EXIF orientation (PIL's ImageOps.exif_transpose).
_UNDO = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_INVERSE = {
    Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270,
    Image.Transpose.ROTATE_270: Image.Transpose.ROTATE_90,
}


def _upright() -> np.ndarray:
    """48 wide x 32 high, smooth (small JPEG error) and with no symmetry."""
    y, x = np.mgrid[0:32, 0:48]
    return np.stack([x * 5, y * 7, 255 - (x + y) * 3], -1).astype(np.uint8)


def _phone_photo(path: Path, orientation: int) -> Path:
    """A JPEG whose stored pixels display as ``_upright()`` once its EXIF tag is applied."""
    img = Image.fromarray(_upright())
    if orientation in _UNDO:
        img = img.transpose(_INVERSE.get(_UNDO[orientation], _UNDO[orientation]))
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, exif=exif.tobytes(), quality=95, subsampling=0)
    return path


def _close(a, b, what: str) -> None:
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    assert a.shape == b.shape, f"{what}: {a.shape} != {b.shape}"
    assert np.abs(a - b).mean() < 3, f"{what}: mean error {np.abs(a - b).mean():.1f}"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_in_pil_torchvision_and_device_jpeg_paths(tmp_path, orientation):
    from mimkit.data import folder_source
    from mimkit.data.images import open_rgb, read_rgb_tensor
    from mimkit.data.jpeg import EncodedDataset, collate_encoded, decode_encoded

    path = _phone_photo(tmp_path / "photo.jpg", orientation)
    want = _upright()
    _close(open_rgb(path), want, "open_rgb")
    _close(read_rgb_tensor(path).permute(1, 2, 0), want, "read_rgb_tensor")
    batch = collate_encoded([EncodedDataset(folder_source(tmp_path))[0]])
    (img,) = decode_encoded(batch, torch.device("cpu"))
    _close(img.permute(1, 2, 0), want, "decode_jpeg")


def test_exif_orientation_in_tensor_cache_and_detection(tmp_path):
    from mimkit.data import folder_source
    from mimkit.data.tensor_cache import build_tensor_cache
    from mimkit.detection.coco import CocoDetection

    folder = tmp_path / "imgs"
    folder.mkdir()
    _phone_photo(folder / "photo.jpg", 6)
    cache = build_tensor_cache(folder_source(folder), 32, tmp_path / "c.pt", num_workers=0)
    _close(cache["images"][0].permute(1, 2, 0), _upright()[:, 8:40], "tensor cache")
    ann = {
        "images": [{"id": 1, "file_name": "photo.jpg", "width": 48, "height": 32}],
        "annotations": [],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    img, _ = CocoDetection(folder, tmp_path / "ann.json")[0]
    _close(img.permute(1, 2, 0) * 255, _upright(), "detection")


# ------------------------------------------------------------------- 17. tracker conventions


@pytest.mark.slow
def test_mlflow_follows_its_environment_variables(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from mimkit.engine.logging import RunLogger

    uri = f"sqlite:///{tmp_path / 'team' / 'mlflow.db'}"
    (tmp_path / "team").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    run_dir = tmp_path / "run"
    logger = RunLogger(run_dir, ["mlflow"], config={"a": 1}, run_name="tiny")
    logger.write({"kind": "train", "epoch": 1, "step": 1, "loss": 0.5})
    logger.finish()
    assert not (run_dir / "mlruns").exists()
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run((run_dir / "mlflow-run-id").read_text().strip())
    assert client.get_experiment(run.info.experiment_id).name == "from-env"
    # an explicit value still wins over the environment
    explicit = f"sqlite:///{tmp_path / 'mine.db'}"
    logger = RunLogger(tmp_path / "run2", ["mlflow"], mlflow_uri=explicit, mlflow_experiment="x")
    logger.finish()
    run_id = (tmp_path / "run2" / "mlflow-run-id").read_text().strip()
    run = MlflowClient(tracking_uri=explicit).get_run(run_id)
    assert MlflowClient(tracking_uri=explicit).get_experiment(run.info.experiment_id).name == "x"


@pytest.mark.slow
def test_wandb_follows_its_environment_variables(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from mimkit.engine.logging import RunLogger

    from .test_trackers import _complete_wandb_records

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wdir"))
    monkeypatch.setenv("WANDB_PROJECT", "env-project")
    monkeypatch.setenv("WANDB_ENTITY", "env-team")
    (tmp_path / "wdir").mkdir()
    run_dir = tmp_path / "run"
    logger = RunLogger(run_dir, ["wandb"], run_name="tiny")
    logger.write({"kind": "train", "epoch": 1, "step": 1, "loss": 0.5})
    logger.finish()
    assert not (run_dir / "wandb").exists() and (run_dir / "wandb-run-id").is_file()
    (run_file,) = (tmp_path / "wdir" / "wandb").glob("offline-run-*/run-*.wandb")
    records = _complete_wandb_records(run_file)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.project, run.entity) == ("env-project", "env-team")


# ------------------------------------------------------------------ 7. two runs, one folder

_TINY_RUN = ["--epochs", "4", "--batch-size", "8", *TINY_MAE]


def _start_run(data: Path, cwd: Path, *args) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mimkit", "pretrain", "--data", str(data), *args, *_TINY_RUN]
    env = {**os.environ, "PYTHONPATH": str(Path(mimkit.__file__).parents[1])}
    return subprocess.Popen(cmd, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)


def _epochs(log: Path) -> list[int]:
    rows = [json.loads(line) for line in log.read_text().splitlines()]  # each line whole
    return [r["epoch"] for r in rows if r.get("kind") == "epoch"]


@pytest.mark.slow
def test_a_second_run_into_a_running_runs_folder_is_refused(tmp_path, image_folder):
    """Two `pretrain --out runs/x` a fraction of a second apart: one trains, the other is
    one line naming the process that holds the folder (before: both exit 0, one log.jsonl
    interleaved, the second run's checkpoints over the first's)."""
    out = tmp_path / "x"
    first = _start_run(image_folder, tmp_path, "--out", out)
    time.sleep(0.3)
    second = _start_run(image_folder, tmp_path, "--out", out)
    runs = {p.pid: (p.wait(timeout=300), p.stderr.read()) for p in (first, second)}
    codes = sorted(code for code, _ in runs.values())
    assert codes == [0, 2], runs
    winner = next(pid for pid, (code, _) in runs.items() if code == 0)
    err = next(err for code, err in runs.values() if code == 2)
    assert _one_error_line(err) and f"pid {winner}" in _error(err) and str(out) in _error(err)
    assert _epochs(out / "log.jsonl") == [1, 2, 3, 4]
    assert not (out / ".run.lock").exists()  # freed when the run ended


@pytest.mark.slow
def test_two_runs_without_out_get_their_own_folders(tmp_path, image_folder):
    """Without --out both used to write runs/<name> (it held no checkpoint-last.pth yet)."""
    first = _start_run(image_folder, tmp_path, "--name", "twin")
    time.sleep(0.3)
    second = _start_run(image_folder, tmp_path, "--name", "twin")
    for p in (first, second):
        assert p.wait(timeout=300) == 0, p.stderr.read()
    for folder in ("twin", "twin-2"):
        assert _epochs(tmp_path / "runs" / folder / "log.jsonl") == [1, 2, 3, 4]


def test_a_run_folder_in_use_is_one_line_naming_the_process(tmp_path, image_folder, capsys):
    """A folder locked by a live run (here: this process, through another open file) is
    refused before anything is written in it; the lock goes with the run."""
    import socket

    from mimkit.utils.runlock import lock_run_dir

    out = tmp_path / "busy"
    out.mkdir()
    held = lock_run_dir(out)
    args = ["pretrain", "--data", image_folder, "--out", out, "--epochs", 1, *TINY_MAE]
    code, _, err = _run(capsys, *args)
    assert code == 2 and _one_error_line(err), err
    line = _error(err)
    assert f"pid {os.getpid()}" in line and socket.gethostname() in line and str(out) in line
    assert sorted(p.name for p in out.iterdir()) == [".run.lock"]  # no config.yaml
    held.release()
    assert not (out / ".run.lock").exists()
    code, _, err = _run(capsys, *args)
    assert code == 0, err


def test_a_crashed_runs_lock_is_released_by_the_os(tmp_path):
    from mimkit.utils.runlock import lock_run_dir

    script = (
        "import os, sys; from mimkit.utils.runlock import lock_run_dir; "
        "held = lock_run_dir(sys.argv[1]); print('locked', flush=True); os._exit(1)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(mimkit.__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert done.stdout.strip() == "locked", done.stderr
    assert (tmp_path / ".run.lock").exists()  # left behind by the crash, but not locked
    lock_run_dir(tmp_path).release()


def test_a_default_run_folder_that_exists_is_not_reused(tmp_path, image_folder, capsys):
    """runs/<name> made by a run still starting (no checkpoint yet) is not written into."""
    (Path("runs") / "busy").mkdir(parents=True)
    args = ["pretrain", "--data", image_folder, "--name", "busy", "--epochs", 1, *TINY_MAE]
    code, _, err = _run(capsys, *args)
    assert code == 0, err
    assert list((Path("runs") / "busy").iterdir()) == []
    assert (Path("runs") / "busy-2" / "checkpoint-last.pth").is_file()


# ---------------------------------------------------------------------------- 12. one clear line


def test_out_that_is_a_file_is_one_line(tmp_path, image_folder, capsys):
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    code, _, err = _run(capsys, "pretrain", "--data", image_folder, "--out", out, *TINY_MAE)
    assert code == 2 and _one_error_line(err), err
    assert str(out) in _error(err) and "a file" in _error(err)
    assert out.read_text() == "mine"


@pytest.mark.parametrize("override", ["optim.lr=-0.1", "optim.blr=-1e-3", "optim.lr=nan"])
def test_a_negative_or_nan_learning_rate_is_one_line(tmp_path, image_folder, capsys, override):
    out = tmp_path / "run"
    args = ["pretrain", "--data", image_folder, "--out", out, override, *TINY_MAE]
    code, _, err = _run(capsys, *args)
    assert code == 2 and _one_error_line(err), err
    assert f"'{override.split('=')[0]}'" in _error(err)
    assert not out.exists()  # nothing written: no config.yaml left behind


_OOMS = {
    "cpu": lambda: RuntimeError(
        "DefaultCPUAllocator: can't allocate memory: you tried to allocate 68719476736 "
        "bytes. Error code 12 (Cannot allocate memory)"
    ),
    "cuda": lambda: torch.cuda.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.15 GiB total capacity)"
    ),
}


@pytest.mark.parametrize("kind", sorted(_OOMS))
def test_out_of_memory_names_the_batch_size_and_what_to_lower(
    tmp_path, image_folder, capsys, monkeypatch, kind
):
    model_cls = type(mimkit.create_model("mae_vit_tiny_cifar"))

    def forward(self, *a, **k):
        raise _OOMS[kind]()

    monkeypatch.setattr(model_cls, "forward", forward)
    args = ["pretrain", "--data", image_folder, "--out", tmp_path / "a", "--batch-size", 8]
    code, _, err = _run(capsys, *args, "--epochs", 1, *TINY_MAE)
    assert code == 2 and _one_error_line(err), err
    line = _error(err)
    assert "out of memory" in line and "data.batch_size=8" in line, line
    assert "--batch-size" in line and "optim.accum_iter" in line, line
    # the same as a UserError in Python; the folder's lock is freed after the failure
    kw = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in TINY_MAE)}
    for _ in range(2):
        with pytest.raises(mimkit.UserError, match=r"out of memory.*data.batch_size=8"):
            mimkit.pretrain(data=image_folder, out=tmp_path / "b", batch_size=8, epochs=1, **kw)


# ---------------------------------------------------------------------------- 13. shard counts


def test_shard_index_counting_more_samples_than_the_shards_hold_is_named(
    tmp_path, image_folder, mimkit_log
):
    from mimkit.data import folder_source
    from mimkit.data.shards import ShardDataset, write_shards

    folder = tmp_path / "shards"
    write_shards(folder_source(image_folder), folder, shard_size=32)
    index = json.loads((folder / "shards.json").read_text())
    index["counts"] = [320, 320]  # ten times what the two shards hold
    (folder / "shards.json").write_text(json.dumps(index))
    ds = ShardDataset(folder, lambda img: 0, seed=0, rank=0, world=1)
    assert len(list(ds)) == 640  # what the index promises (each sample read ten times)
    warnings = [line for line in mimkit_log.lines if "640" in line]
    assert len(warnings) == 1, mimkit_log.text
    assert str(folder) in warnings[0] and "64" in warnings[0].replace("640", "")


# ------------------------------------------------------------------ 14. misleading messages


def test_negative_num_workers_names_only_that_key(capsys):
    code, _, err = _run(capsys, "pretrain", "--dry-run", "data.num_workers=-1")
    assert code == 2 and _one_error_line(err), err
    assert "data.num_workers" in _error(err) and "train.epochs" not in _error(err)


def test_a_pipe_without_num_samples_is_not_said_to_lack_an_index(tmp_path):
    from mimkit.data.shards import open_shards

    with pytest.raises(mimkit.UserError) as e:
        open_shards(f"pipe:cat {tmp_path}/shard-{{000000..000001}}.tar")
    assert "data.num_samples" in str(e.value) and "has no shards.json" not in str(e.value)
    assert "URL or pipe" in str(e.value)


def test_unknown_keywords_get_only_close_suggestions(image_folder):
    with pytest.raises(mimkit.UserError) as e:
        mimkit.pretrain(data=image_folder, epoch=3)
    assert "did you mean 'epochs'" in str(e.value) and "bench" not in str(e.value)
    with pytest.raises(mimkit.UserError) as e:  # a section given a number
        mimkit.pretrain(data=image_folder, bench=3)
    assert "did you mean" not in str(e.value) and "'None'" not in str(e.value)
    assert "bench" in str(e.value) and "section" in str(e.value)


def test_an_edited_hf_hidden_size_is_named_with_the_weight_it_contradicts(tmp_path, tiny_mae_ckpt):
    from mimkit.interop.export import export_hf_checkpoint
    from mimkit.interop.hf import read_hf_folder

    out = export_hf_checkpoint(tiny_mae_ckpt, tmp_path / "hf")
    cfg = json.loads((out / "config.json").read_text())
    cfg["hidden_size"] = 48  # the weights are 32 wide
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(mimkit.UserError) as e:
        read_hf_folder(out)
    msg = str(e.value)
    assert "hidden_size=48" in msg and "decoder_intermediate_size" not in msg, msg
    assert "32" in msg and "weight" in msg, msg


# ------------------------------------------------------------------ 15. export into a used folder


def test_hf_export_into_a_folder_of_other_files_is_refused(tmp_path, tiny_mae_ckpt, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    args = ["export", "--checkpoint", tiny_mae_ckpt, "--format", "hf", "--out", out]
    code, _, err = _run(capsys, *args)
    assert code == 2 and _one_error_line(err), err
    assert str(out) in _error(err) and "--force" in _error(err)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    code, _, err = _run(capsys, *args, "--force")
    assert code == 0, err
    assert (out / "config.json").is_file() and (out / "notes.txt").read_text() == "keep"
    hf = tmp_path / "hf"  # an earlier export is overwritten without --force
    for _ in range(2):
        code, _, err = _run(
            capsys, "export", "--checkpoint", tiny_mae_ckpt, "--format", "hf", "--out", hf
        )
        assert code == 0, err


# ---------------------------------------------------------------------------- 18. inexact resume


def test_resuming_with_other_data_or_batch_size_says_it_is_not_exact(
    tmp_path, tiny_mae_ckpt, labeled_root, capsys, mimkit_log
):
    run = tmp_path / "run"
    shutil.copytree(tiny_mae_ckpt.parent, run)
    args = ["pretrain", "--resume", run, "--epochs", 2, *TINY_MAE]
    code, _, err = _run(capsys, *args, "--batch-size", 8, "--data", labeled_root / "val")
    assert code == 0, err
    notes = [line for line in mimkit_log.lines if "not exact" in line]
    assert len(notes) == 1, mimkit_log.text
    assert "data.batch_size 16 -> 8" in notes[0], notes[0]
    assert f"{labeled_root / 'train'} -> {labeled_root / 'val'}" in notes[0], notes[0]
    mimkit_log.lines.clear()
    code, _, err = _run(capsys, *args[:3], "--epochs", 3, *TINY_MAE)  # same data: no note
    assert code == 0, err
    assert not [line for line in mimkit_log.lines if "not exact" in line], mimkit_log.text


def test_unreadable_rows_are_named_by_index_not_bytes_in_the_pictures_step(mimkit_log, tmp_path):
    """Issue item 9: rows of a table (Parquet) are encoded bytes; a corrupt one is named by
    its position in the pictures step, never logged as its bytes."""
    import io

    from mimkit.methods import draw_picture

    model = mimkit.create_model(
        "mae_vit_tiny_cifar",
        embed_dim=32,
        depth=1,
        num_heads=2,
        decoder_embed_dim=32,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    good = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(good, format="JPEG")
    corrupt = b"\xff\xd8\xff" + bytes(range(256)) * 4  # a JPEG header, then garbage
    picks = [good.getvalue(), corrupt, good.getvalue()]
    draw_picture(model, picks, tmp_path / "r.png", None, 0, torch.device("cpu"))
    lines = [x for x in mimkit_log.lines if "skipped unreadable image" in x]
    assert lines and "image #1" in lines[0]
    assert max(len(x) for x in mimkit_log.lines) < 300
