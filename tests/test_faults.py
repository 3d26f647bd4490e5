"""Nothing lost, nobody in: untrusted checkpoints, faults and bad input (issue 12).

Each test pins one failure a new user met: it failed before the fix and passes now.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mimkit
from mimkit.cli import main
from mimkit.errors import NonFiniteLossError, UserError

from .conftest import CIFAR_MINI, SHARED_DIR, TINY_MAE, TORCHRUN_MIMKIT

SHARED = SHARED_DIR / "interop"


def _run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _pretrain(data, out, *extra, capsys=None):
    args = ["pretrain", "--data", data, "--out", out, "--batch-size", 16, *TINY_MAE, *extra]
    if capsys is None:
        return main([str(a) for a in args])
    return _run(capsys, *args)


def _one_error_line(err: str) -> bool:
    """Exactly one 'mimkit: error' line and no traceback (info lines may come before)."""
    errors = [line for line in err.splitlines() if line.startswith("mimkit: error")]
    return len(errors) == 1 and "Traceback" not in err


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------- 1. security


class _Payload:
    """Unpickling this runs a shell command (the attack a checkpoint file can carry)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def payload_file(tmp_path):
    marker = tmp_path / "payload-ran"
    model = mimkit.create_model("vit_tiny_cifar", embed_dim=32, depth=1, num_heads=2)
    path = tmp_path / "evil.pth"
    torch.save({"model": model.state_dict(), "extra": _Payload(marker)}, path)
    return path, marker


def test_payload_checkpoint_is_refused_by_every_command(payload_file, labeled_root, capsys):
    path, marker = payload_file
    img = next((labeled_root / "val" / "cat").iterdir())
    commands = [
        ["knn", "--checkpoint", path, "--data", labeled_root, "eval.cache_dir=none"],
        ["linprobe", "--checkpoint", path, "--data", labeled_root],
        ["finetune", "--checkpoint", path, "--data", labeled_root],
        ["qscore", "--checkpoint", path, "--data", labeled_root],
        ["visualize", "--checkpoint", path, "--images", img],
        ["predict", "--checkpoint", path, "--images", img],
        ["export", "--checkpoint", path, "--format", "timm", "--out", path.parent / "x"],
        ["visualize-filters", "--checkpoint", path],
        ["detect", "eval", "--checkpoint", path, "--images", img.parent, "--ann", "a.json"],
        ["detect", "predict", "--checkpoint", path, "--images", img],
        ["pretrain", "--resume", path],
    ]
    for cmd in commands:
        out = path.parent / f"run-{cmd[0]}"
        extra = ["--out", out] if cmd[0] in ("knn", "linprobe", "finetune", "qscore") else []
        code, _, err = _run(capsys, *cmd, *extra)
        assert code == 2, (cmd, err)
        assert "_Payload" in err or "posix.system" in err or "os.system" in err, (cmd, err)
        assert "--trust-checkpoint" in err and _one_error_line(err), (cmd, err)
    with pytest.raises(UserError, match="could run code"):
        mimkit.load_checkpoint(mimkit.create_model("vit_tiny_cifar"), path)
    assert not marker.exists()
    no_cache = {"eval.cache_dir": "none"}
    with pytest.raises(UserError, match=r"trust=True in Python"):
        mimkit.knn(path, data=labeled_root, out=path.parent / "py-knn", **no_cache)
    assert not marker.exists()
    # the explicit opt-in loads it (and, as promised, runs what the file holds), with the
    # keyword the message names
    knn = mimkit.knn(path, data=labeled_root, out=path.parent / "py-knn2", trust=True, **no_cache)
    assert marker.exists() and 0 <= knn["top1"] <= 100


def test_official_layouts_with_plain_objects_still_load(tmp_path):
    model = mimkit.create_model("vit_tiny_cifar", embed_dim=32, depth=1, num_heads=2)
    path = tmp_path / "official.pth"
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(lr=1e-3)}, path)
    report = mimkit.load_checkpoint(model, path)
    assert report.loaded == len(model.state_dict())
    ibot = SHARED / "ibot_official_checkpoint_tiny.pth"
    if ibot.is_file():  # argparse.Namespace and NumPy scalars in the optimizer state
        from mimkit.utils.io import safe_torch_load

        state = safe_torch_load(ibot)
        assert {"student", "teacher", "optimizer", "args"} <= set(state)


# ---------------------------------------------------------------------------- 2. DDP fault


@pytest.mark.slow
def test_one_failing_rank_stops_the_whole_run_within_a_minute(tmp_path, image_folder):
    """Rank 0 fails writing a checkpoint (the target is a folder); rank 1 is already in the
    next step's all-reduce. Both must stop, non-zero, with the cause printed."""
    out = tmp_path / "run"
    (out / "checkpoint-0001.pth").mkdir(parents=True)  # os.replace onto it fails
    cmd = [
        *TORCHRUN_MIMKIT,
        "pretrain",
        "--data",
        str(image_folder),
        "--out",
        str(out),
        "--epochs",
        "3",
        "--batch-size",
        "8",
        *TINY_MAE,
        "train.save_every=1",
        "train.dist_timeout_min=5",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    lines = []  # (arrival time, line): the clock starts when rank 0 reports its failure,
    reader = threading.Thread(  # not at launch (start-up time depends on the machine's load)
        target=lambda: lines.extend((time.monotonic(), line) for line in proc.stdout)
    )
    reader.start()
    try:
        proc.wait(timeout=240)  # a hang waits for the 5-minute collective timeout
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail("the 2-process run hung after rank 0 failed")
    finally:
        reader.join()
    ended = time.monotonic()
    output = "".join(line for _, line in lines)
    failed_at = next((t for t, line in lines if "cannot write" in line), None)
    assert proc.returncode != 0
    assert failed_at is not None, output[-2000:]
    assert ended - failed_at < 60, ended - failed_at
    assert "cannot write" in output and "checkpoint-0001.pth" in output, output[-2000:]


# ---------------------------------------------------------------------------- 3. divergence


@pytest.mark.slow
def test_diverged_weights_never_replace_a_good_checkpoint(tmp_path, image_folder, capsys):
    out = tmp_path / "run"
    assert _pretrain(image_folder, out, "--epochs", 1) == 0
    good = _sha(out / "checkpoint-last.pth")
    # one huge step per epoch: the loss before it is finite, the weights after it are not sane
    code, _, err = _run(
        capsys, "pretrain", "--resume", out, "train.epochs=3", "optim.lr=1e6", "train.max_steps=5"
    )
    assert code == 1
    assert "weights diverged" in err and "nothing was saved" in err and "after epoch 1" in err
    assert _sha(out / "checkpoint-last.pth") == good
    # a fresh run that diverges says no checkpoint exists (the message is true in every path)
    code, _, err = _pretrain(
        image_folder, tmp_path / "fresh", "--epochs", 1, "optim.lr=1e6", capsys=capsys
    )
    assert code == 1 and "no checkpoint exists yet" in err
    assert not (tmp_path / "fresh" / "checkpoint-last.pth").exists()


# ---------------------------------------------------------------------------- 4. full disk

_WRITE_UNDER_LIMIT = textwrap.dedent(
    """
    import resource, sys, torch
    from mimkit.utils.io import atomic_save, WriteError
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
    try:
        atomic_save({"w": torch.ones(1_000_000)}, sys.argv[1])
    except WriteError as e:
        print("ERR", e)
    """
)


@pytest.mark.slow
def test_a_failed_write_names_the_cause_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "checkpoint-last.pth"
    torch.save({"w": torch.zeros(3)}, path)
    good = _sha(path)
    # the OS refuses the write mid-file (file size limit: EFBIG, as ENOSPC on a full disk)
    r = subprocess.run(
        [sys.executable, "-c", _WRITE_UNDER_LIMIT, str(path)], capture_output=True, text=True
    )
    assert r.stdout.startswith("ERR"), r.stdout + r.stderr
    line = r.stdout.strip()
    assert len(line.splitlines()) == 1 and str(path) in line and "File too large" in line
    assert "inline_container" not in line
    assert _sha(path) == good
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-last.pth"]


@pytest.mark.slow
def test_cli_write_failure_is_one_line(tmp_path, image_folder):
    out = tmp_path / "run"
    args = ["pretrain", "--data", image_folder, "--out", out, "--epochs", 1, "--batch-size", 16]
    code = textwrap.dedent(
        f"""
        import resource, sys
        from mimkit.cli import main
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))
        sys.exit(main({[str(a) for a in [*args, *TINY_MAE]]!r}))
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 1, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("mimkit: error")]
    assert len(errors) == 1 and "File too large" in errors[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not list(out.glob(".*.tmp"))


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_under_the_log_is_one_line(tmp_path, image_folder, capsys):
    """Every write names its file: the JSONL log on a full device (/dev/full: ENOSPC)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.jsonl").symlink_to("/dev/full")
    code, _, err = _pretrain(image_folder, out, "--epochs", 1, capsys=capsys)
    assert code == 1 and _one_error_line(err), err
    assert f"cannot write {out / 'log.jsonl'}: No space left on device" in err, err


def test_stale_temp_files_are_removed_at_the_next_start(tmp_path, image_folder):
    out = tmp_path / "run"
    assert _pretrain(image_folder, out, "--epochs", 1) == 0
    stale = out / ".checkpoint-last.pth.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert main(["pretrain", "--resume", str(out), "train.epochs=2"]) == 0
    assert not stale.exists()


# ---------------------------------------------------------------------------- 5. resume


def test_a_failed_resume_leaves_the_config_and_says_which_model(tmp_path, image_folder, capsys):
    out = tmp_path / "run"
    assert _pretrain(image_folder, out, "--epochs", 1) == 0
    before = (out / "config.yaml").read_text()
    code, _, err = _run(capsys, "pretrain", "--resume", out, "model.name=lomar_vit_tiny_cifar")
    assert code == 2
    assert "holds mae_vit_tiny_cifar, the config asks for lomar_vit_tiny_cifar" in err
    code, _, err = _run(capsys, "pretrain", "--resume", out, "model.args.embed_dim=64")
    assert code == 2 and _one_error_line(err)
    assert "embed_dim 32 in the checkpoint vs 64 in the config" in err
    assert (out / "config.yaml").read_text() == before


# ---------------------------------------------------------------------------- 6. not a checkpoint


NOT_CHECKPOINTS = {  # content -> the cause the message gives
    "empty": "empty file",
    "random": "not a torch file",
    "text": "not a torch file",
    "bad_pickle": "unreadable pickle",
    "jpeg": "it is a JPEG image",
    "truncated": "truncated or damaged",
}


@pytest.mark.parametrize("content", list(NOT_CHECKPOINTS))
def test_files_that_are_not_checkpoints_are_one_line(tmp_path, labeled_root, capsys, content):
    path = tmp_path / "model.pth"
    if content == "truncated":
        torch.save({"model": mimkit.create_model("vit_tiny_cifar").state_dict()}, path)
    data = {
        "empty": lambda: b"",
        "random": lambda: np.random.default_rng(0).bytes(4096),
        "text": lambda: b"this is a text file, not a checkpoint\n",
        "bad_pickle": lambda: b"\x80\x02" + np.random.default_rng(0).bytes(4096),
        "jpeg": lambda: next((CIFAR_MINI / "test" / "cat").iterdir()).read_bytes(),
        "truncated": lambda: path.read_bytes()[: path.stat().st_size // 2],
    }[content]()
    path.write_bytes(data)
    cause = NOT_CHECKPOINTS[content]
    with pytest.raises(UserError, match=f"is not a checkpoint \\({cause}"):
        mimkit.load_checkpoint(mimkit.create_model("vit_tiny_cifar"), path)
    img = next((labeled_root / "val" / "cat").iterdir())
    for cmd in (
        ["knn", "--checkpoint", path, "--data", labeled_root, "--out", tmp_path / "k"],
        ["visualize", "--checkpoint", path, "--images", img],
        ["pretrain", "--resume", path],
    ):
        code, _, err = _run(capsys, *cmd)
        assert code == 2 and "is not a checkpoint" in err and cause in err, (cmd, err)
        assert "weights_only" not in err  # torch's advice to load unsafely is not passed on
        assert _one_error_line(err)


@pytest.mark.parametrize("protocol", [1, 2, 4])
def test_every_torch_save_protocol_is_read_or_gets_the_way_to_read_it(tmp_path, protocol):
    """Legacy torch files of any pickle protocol are not mistaken for other files; those the
    safe reader does not take (protocols 1, 4, 5) say how to read them, and then load."""
    from mimkit.utils.io import safe_torch_load

    path = tmp_path / "legacy.pth"
    state = {"model": {"w": torch.arange(3.0)}}
    torch.save(state, path, _use_new_zipfile_serialization=False, pickle_protocol=protocol)
    if protocol == 2:  # torch's own default: read safely
        assert torch.equal(safe_torch_load(path)["model"]["w"], state["model"]["w"])
        return
    with pytest.raises(UserError, match=r"unreadable pickle.*--trust-checkpoint \(trust=True\)"):
        safe_torch_load(path)
    assert torch.equal(safe_torch_load(path, trust=True)["model"]["w"], state["model"]["w"])


# ---------------------------------------------------------------------------- 7. wrong architecture


def test_another_architecture_is_an_error_not_a_silent_no_op(tmp_path):
    convmixer = mimkit.create_model("convmixer_256_8", num_classes=10)
    path = tmp_path / "convmixer.pth"
    torch.save({"model": convmixer.state_dict(), "model_name": "convmixer_256_8"}, path)
    mae = mimkit.create_model("mae_vit_tiny_cifar")
    with pytest.raises(UserError, match="holds convmixer_256_8.*0 of the model's"):
        mimkit.load_checkpoint(mae, path)
    # an encoder-only file into a full MAE is still fine (the decoder is reported missing)
    enc = {k: v for k, v in mae.state_dict().items() if not k.startswith(("decoder", "mask"))}
    torch.save({"model": enc}, tmp_path / "encoder.pth")
    report = mimkit.load_checkpoint(mae, tmp_path / "encoder.pth")
    assert report.loaded == len(enc) and any(k.startswith("decoder") for k in report.missing)
    # but a file whose few tensors all match and hold no block is not a checkpoint of it
    vit = mimkit.create_model("vit_tiny_cifar")
    two = {k: vit.state_dict()[k] for k in ("cls_token", "pos_embed")}
    torch.save({"model": two}, tmp_path / "two.pth")
    with pytest.raises(UserError, match="2 of the model's 150 tensors match"):
        mimkit.load_checkpoint(vit, tmp_path / "two.pth")


# ---------------------------------------------------------------------------- 8. symlinks

_WALK = "from mimkit.data import folder_source; s = folder_source({!r}); print(len(s))"


@pytest.mark.slow
def test_symlink_loops_end_and_files_are_listed_once(tmp_path):
    root = tmp_path / "data"
    for cls in ("cat", "ship"):
        (root / cls).mkdir(parents=True)
        for f in sorted((CIFAR_MINI / "train" / cls).iterdir())[:5]:
            shutil.copy(f, root / cls / f.name)
    (root / "cat" / "up").symlink_to("..")  # loop 1: back to the root
    (root / "ship" / "self").symlink_to(".")  # loop 2: itself
    (root / "ship_again").symlink_to("ship")  # the same files through a second path
    r = subprocess.run(
        [sys.executable, "-c", _WALK.format(str(root))],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30)),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "10"


def test_a_link_to_a_class_folder_does_not_rename_the_class(tmp_path, mimkit_log):
    """Of a real folder and a link to it, the real one is walked (the link sorted first
    used to win: class 'a_ship', and 'ship' gone), and the note counts what was left out."""
    from mimkit.data import folder_source

    root = tmp_path / "data"
    for cls in ("cat", "ship"):
        (root / cls).mkdir(parents=True)
        for f in sorted((CIFAR_MINI / "train" / cls).iterdir())[:3]:
            shutil.copy(f, root / cls / f.name)
    (root / "a_ship").symlink_to("ship")
    src = folder_source(root)
    assert src.classes == ["cat", "ship"] and len(src) == 6
    assert "1 folders reached again through symlinks not entered" in mimkit_log.text


# ---------------------------------------------------------------------------- 9. 16-bit images


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    from mimkit.data.datasets import load_rgb

    ramp = (np.arange(256, dtype=np.uint32) * 257).astype(np.uint16)  # 0 .. 65535
    path = tmp_path / "gradient16.png"
    Image.fromarray(np.tile(ramp, (16, 1))).save(path)
    assert Image.open(path).mode.startswith("I;16")
    out = np.asarray(load_rgb(str(path)))
    assert out.shape == (16, 256, 3)
    assert abs(out.mean() - 127.5) < 1.0  # clipping gave about 254
    assert np.array_equal(out[0, :, 0], np.arange(256))


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "I;16"])
def test_detection_reads_every_mode_as_the_classifiers_do(tmp_path, mode):
    """The detection paths' tensor decoder gives open_rgb's pixels (16-bit scaled to 8,
    alpha composited on white), as uint8 (a uint16 tensor / 255 fed values up to 257)."""
    from mimkit.data.images import open_rgb, read_rgb_tensor

    ramp = np.tile((np.arange(64, dtype=np.uint32) * 1040).astype(np.uint16), (8, 1))
    if mode == "I;16":
        img = Image.fromarray(ramp)
    else:
        rgba = np.stack([ramp >> 8, ramp[::-1] >> 8, ramp >> 9, ramp >> 8], -1).astype(np.uint8)
        img = Image.fromarray(rgba, "RGBA").convert(mode)
    path = tmp_path / "img.png"
    img.save(path)
    t = read_rgb_tensor(path)
    assert t.dtype == torch.uint8 and t.shape == (3, 8, 64)
    assert torch.equal(t.permute(1, 2, 0), torch.from_numpy(np.array(open_rgb(path))))


def test_detection_decoding_with_the_bomb_limit_turned_off(tmp_path, monkeypatch):
    from mimkit.data.images import read_rgb_tensor

    Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / "x.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # users of huge aerial images do
    assert read_rgb_tensor(tmp_path / "x.jpg").shape == (3, 30, 40)


# ---------------------------------------------------------------------------- 10-12. config


def test_mask_ratio_zero_is_refused_up_front(tmp_path, image_folder, capsys):
    code, _, err = _pretrain(
        image_folder, tmp_path / "r", "--epochs", 1, "model.mask_ratio=0.0", capsys=capsys
    )
    assert code == 2 and "model.mask_ratio" in err and _one_error_line(err)


@pytest.mark.parametrize("ratio", [0, 1, 1.5])
def test_visualize_mask_ratio_outside_0_1_is_one_line(tiny_mae_ckpt, image_folder, capsys, ratio):
    img = next(iter(sorted(image_folder.iterdir())))
    code, _, err = _run(
        capsys, "visualize", "--checkpoint", tiny_mae_ckpt, "--images", img, "--mask-ratio", ratio
    )
    assert code == 2 and "mask ratio must be between 0 and 1" in err and _one_error_line(err), err


def test_nan_message_does_not_guess_a_cause():
    from mimkit.engine.loop import Trainer

    trainer = Trainer.__new__(Trainer)
    trainer.out_dir = Path("/nonexistent/run")
    trainer.state = type("S", (), {"step": 3})()
    with pytest.raises(NonFiniteLossError) as e:
        trainer._check_finite(float("nan"), 0)
    message = str(e.value)
    assert "lower lr" not in message and "no checkpoint exists yet" in message


@pytest.mark.parametrize(
    "override, says",
    [
        ("model.args.decoder_embed_dim=130", "decoder_embed_dim=130"),  # heads do not divide
        ("model.args.num_heads=0", "num_heads=0 must be at least 1"),
        ("model.args.depth=0", "depth=0 must be at least 1"),
        ("train.epochs=[1", "override 'train.epochs=[1': the value is not valid YAML"),
        ("train.dist_timeout_min=0", "'train.dist_timeout_min' must be above 0"),
    ],
)
def test_model_arguments_that_do_not_fit_are_one_line(
    tmp_path, image_folder, capsys, override, says
):
    code, _, err = _run(
        capsys,
        "pretrain",
        "--config",
        "mae_vit_tiny_cifar",
        "--data",
        image_folder,
        "--out",
        tmp_path / "r",
        "--batch-size",
        16,
        "--epochs",
        1,
        override,
    )
    assert code == 2 and _one_error_line(err), err
    assert says in err, err


def test_yaml_syntax_error_names_file_line_and_column(tmp_path, capsys):
    bad = tmp_path / "broken.yaml"
    bad.write_text("model:\n  name: mae_vit_tiny_cifar\n  mask_ratio: [0.75\ntrain:\n  epochs: 1\n")
    code, _, err = _run(capsys, "pretrain", "--config", bad, "--data", tmp_path, "--dry-run")
    assert code == 2 and _one_error_line(err), err
    assert f"{bad}:" in err and "YAML syntax error" in err


# ---------------------------------------------------------------------------- 13-16. data


def test_file_list_of_missing_files_fails_up_front(tmp_path, capsys):
    lst = tmp_path / "train.txt"
    lst.write_text("".join(f"nowhere/img{i}.jpg\n" for i in range(100)))
    code, _, err = _run(
        capsys, "pretrain", "--data", tmp_path, "data.file_list=" + str(lst), *TINY_MAE
    )
    assert code == 2 and _one_error_line(err)
    assert str(lst) in err and "nowhere/img0.jpg" in err


def test_huge_images_keep_the_limit_and_say_why_they_are_skipped(tmp_path, monkeypatch):
    from mimkit.data import ImageDataset, collate, folder_source
    from mimkit.data.images import open_rgb
    from mimkit.data.transforms import pretrain_transform

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (300, 300), (10, 200, 30)).save(folder / "big.png")
    Image.new("RGB", (250, 250), (10, 200, 30)).save(folder / "medium.png")
    Image.new("RGB", (40, 40), (10, 200, 30)).save(folder / "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40_000)  # stands in for PIL's 89 MP
    with pytest.warns(Image.DecompressionBombWarning):  # between 1x and 2x: warned, not hidden
        open_rgb(folder / "medium.png")
    ds = ImageDataset(folder_source(folder), pretrain_transform(32))
    batch = collate([ds[i] for i in range(len(ds))])
    reasons = dict(batch["bad"])
    assert list(reasons) == [str(folder / "big.png")]
    assert "decompression-bomb limit" in reasons[str(folder / "big.png")]
    # a large JPEG is decoded at a reduced scale when only a small size is needed
    Image.new("RGB", (2000, 1600), (200, 30, 40)).save(folder / "photo.jpg", quality=90)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)
    assert open_rgb(folder / "photo.jpg").size == (2000, 1600)
    assert open_rgb(folder / "photo.jpg", max_side=128).size == (250, 200)  # DCT scale 1/8


def test_linprobe_on_a_small_labeled_set_clamps_its_batch(tmp_path, tiny_mae_ckpt, labeled_root):
    out = tmp_path / "probe"
    code = main(
        [
            "linprobe",
            "--checkpoint",
            str(tiny_mae_ckpt),
            "--data",
            str(labeled_root),
            "--out",
            str(out),
            "--epochs",
            "1",
            "eval.cache_dir=none",
            "data.num_workers=0",
        ]
    )
    assert code == 0  # default batch 512 > 64 train images
    assert json.loads((out / "metrics.json").read_text())["num_images"] == 32
    # the run folder says which batch ran (and the lr was derived from it)
    assert "batch_size: 64" in (out / "config.yaml").read_text()


def test_file_lists_with_disjoint_labels_are_refused(tmp_path, capsys):
    cats = sorted((CIFAR_MINI / "train" / "cat").iterdir())[:4]
    ships = sorted((CIFAR_MINI / "train" / "ship").iterdir())[:4]
    (tmp_path / "train.txt").write_text("".join(f"{p} 0\n" for p in cats))
    (tmp_path / "val.txt").write_text("".join(f"{p} 1\n" for p in ships))
    code, _, err = _run(
        capsys,
        "knn",
        "--checkpoint",
        "none",
        "--data",
        "/",
        "--out",
        tmp_path / "k",
        f"data.file_list={tmp_path / 'train.txt'}",
        f"data.val_list={tmp_path / 'val.txt'}",
        "model.name=vit_tiny_cifar",
    )
    assert code == 2 and "never occur" in err and "val.txt" in err


# ---------------------------------------------------------------------------- 17. README as written


def test_readme_predict_and_export_commands_run_as_written(tmp_path, tiny_mae_ckpt, capsys):
    img = next((CIFAR_MINI / "test" / "cat").iterdir())
    ft = tmp_path / "ft"
    code = main(
        [
            "finetune",
            "--checkpoint",
            str(tiny_mae_ckpt),
            "--data",
            str(CIFAR_MINI),
            "--out",
            str(ft),
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "train.max_steps=2",
            "data.num_workers=0",
            "eval.batch_size=500",
        ]
    )
    assert code == 0
    code, out, err = _run(
        capsys, "predict", "--checkpoint", ft / "checkpoint-best.pth", "--images", img
    )
    assert code == 0 and img.name in out, err
    exported = tmp_path / "exported"  # README: --out exported/ (a folder, not yet there)
    code, _, err = _run(
        capsys, "export", "--checkpoint", tiny_mae_ckpt, "--format", "timm", "--out", f"{exported}/"
    )
    assert code == 0, err
    assert (exported / "model.safetensors").is_file() and (exported / "model.json").is_file()


@pytest.mark.slow
def test_lomar_encoder_export_says_what_works_and_it_does(tmp_path, image_folder, capsys):
    out = tmp_path / "lomar"
    code = main(
        [
            "pretrain",
            "--config",
            "lomar_vit_tiny_cifar",
            "--data",
            str(image_folder),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "model.args.embed_dim=32",
            "model.args.depth=1",
            "model.args.num_heads=2",
            "data.num_workers=0",
            "train.tensorboard=false",
        ]
    )
    assert code == 0
    ckpt = out / "checkpoint-last.pth"
    code, _, err = _run(capsys, "export", "--checkpoint", ckpt, "--format", "timm", "--out", out)
    assert code == 2 and "torchscript or onnx export its features" in err
    code, stdout, err = _run(
        capsys, "export", "--checkpoint", ckpt, "--format", "torchscript", "--out", out
    )
    assert code == 0, err
    assert "features (N, 32)" in stdout
    scripted = torch.jit.load(str(out / "model.pt"))
    assert scripted(torch.randn(2, 3, 32, 32)).shape == (2, 32)


# ---------------------------------------------------------------------------- 18. small things


def test_zero_epochs_claims_no_pictures(tmp_path, image_folder, capsys):
    code, _, err = _pretrain(image_folder, tmp_path / "r", "--epochs", 0, capsys=capsys)
    assert code == 0 and "loss.png" not in err and not (tmp_path / "r" / "loss.png").exists()


def test_resume_counts_epochs_from_one_and_log_keeps_each_step_once(tmp_path, image_folder, capsys):
    out = tmp_path / "run"
    assert _pretrain(image_folder, out, "--epochs", 2, "train.save_every=1") == 0
    # as if killed during epoch 2 after its rows were logged: the last checkpoint is epoch 1
    shutil.copy(out / "checkpoint-0001.pth", out / "checkpoint-last.pth")
    code, _, err = _run(capsys, "pretrain", "--resume", out)
    assert code == 0
    assert "after epoch 1" in err and "next: epoch 2/2" in err
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in rows if r["kind"] == "train"]
    epochs = [r["epoch"] for r in rows if r["kind"] == "epoch"]
    assert len(train_steps) == len(set(train_steps)) and epochs == [1, 2]
