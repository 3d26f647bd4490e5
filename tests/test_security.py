"""Nothing in a data folder or a checkpoint runs a command (issue 26, items 1-4).

The two command-execution cases plant a shell script that touches a marker file; the
marker must never appear, whatever the command says.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mimkit.cli import main
from mimkit.data.shards import open_shards, write_shards
from mimkit.data.sources import open_source
from mimkit.errors import UserError

from .conftest import TINY_MAE


def _one_error_line(err: str) -> bool:
    errors = [line for line in err.splitlines() if line.startswith("mimkit: error")]
    return len(errors) == 1 and "Traceback" not in err


@pytest.fixture
def shard_folder(tmp_path, image_folder):
    out = tmp_path / "shards"
    write_shards(open_source(str(image_folder)), out, shard_size=16)
    return out


def _evil_script(folder: Path, marker: Path, tar: Path) -> None:
    """x.sh touches the marker and cats a real tar, so training would look normal."""
    (folder / "x.sh").write_text(f"touch {marker}\ncat {tar}\n")


@pytest.mark.parametrize("name", ["pipe:sh x.sh", "../shard-000000.tar", "/etc/passwd"])
def test_an_index_cannot_name_a_command_url_or_outside_file(shard_folder, tmp_path, name):
    index = json.loads((shard_folder / "shards.json").read_text())
    marker = tmp_path / "ran"
    _evil_script(shard_folder, marker, shard_folder / index["shards"][0])
    (shard_folder / name).touch() if "/" not in name else None  # passes an existence check
    index["shards"][0] = name
    (shard_folder / "shards.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match="plain file name"):
        open_shards(shard_folder)


def test_a_command_in_shards_json_never_runs_from_the_cli(shard_folder, tmp_path, capsys):
    """The attack of issue 26 item 1 end to end: --data . in the shard folder."""
    index = json.loads((shard_folder / "shards.json").read_text())
    marker = tmp_path / "ran"
    _evil_script(shard_folder, marker, shard_folder / index["shards"][0])
    (shard_folder / "pipe:sh x.sh").touch()
    index["shards"] = ["pipe:sh x.sh", *index["shards"][1:]]
    index["counts"] = [16] * len(index["shards"])
    (shard_folder / "shards.json").write_text(json.dumps(index))
    os.chdir(shard_folder)
    code = main(["pretrain", "--data", ".", "--out", str(tmp_path / "run"), "--epochs", "1",
                 "--batch-size", "16", *TINY_MAE])  # fmt: skip
    err = capsys.readouterr().err
    assert code != 0 and _one_error_line(err) and "pipe:sh x.sh" in err
    assert not marker.exists()


def test_index_folder_is_resolved_before_names_are_joined(shard_folder, monkeypatch):
    monkeypatch.chdir(shard_folder)
    shards = open_shards(".")
    assert all(Path(u).is_absolute() for u in shards.urls)


def test_a_checkpoint_config_never_runs_its_data_command(tmp_path, image_folder, capsys):
    """Issue 26 item 2: a resumed run takes its data location from the checkpoint only
    when it is a plain path; a pipe: command or URL must be given again."""
    out = tmp_path / "run"
    args = ["--batch-size", "16", *TINY_MAE]
    assert main(["pretrain", "--data", str(image_folder), "--out", str(out), "--epochs", "1",
                 *args]) == 0  # fmt: skip
    capsys.readouterr()
    marker = tmp_path / "ran"
    ckpt_path = out / "checkpoint-last.pth"
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt["config"]["data"]["path"] = f"pipe:touch {marker}; cat /dev/null"
    ckpt["config"]["data"]["num_samples"] = 64
    torch.save(ckpt, ckpt_path)
    code = main(["pretrain", "--resume", str(out), "train.epochs=2"])
    err = capsys.readouterr().err
    assert code != 0 and _one_error_line(err)
    assert "--data" in err and "pipe:" in err
    assert not marker.exists()
    # given again by the user, it is the user's choice: a plain folder here
    code = main(["pretrain", "--resume", str(out), "--data", str(image_folder), "train.epochs=2"])
    assert code == 0


@pytest.mark.slow
def test_a_resumed_run_says_where_its_data_comes_from(tmp_path, image_folder, mimkit_log):
    out = tmp_path / "run"
    args = ["--batch-size", "16", *TINY_MAE]
    assert main(["pretrain", "--data", str(image_folder), "--out", str(out), "--epochs", "1",
                 *args]) == 0  # fmt: skip
    assert main(["pretrain", "--resume", str(out), "train.epochs=2"]) == 0
    assert f"data: {image_folder} (from the checkpoint's config)" in mimkit_log.text


def test_saved_configs_hold_no_resolved_environment_secrets(tmp_path, image_folder, monkeypatch):
    """Issue 26 item 3: ${oc.env:...} is refused in a config that would be saved."""
    monkeypatch.setenv("MIMKIT_TEST_SECRET", "hunter2")
    out = tmp_path / "run"
    code = main(["pretrain", "--data", str(image_folder), "--out", str(out), "--epochs", "1",
                 "--batch-size", "16", *TINY_MAE,
                 "train.run_name=${oc.env:MIMKIT_TEST_SECRET}"])  # fmt: skip
    assert code != 0
    saved = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert not any(b"hunter2" in p.read_bytes() for p in saved)


@pytest.mark.slow
def test_files_written_atomically_honour_the_umask(tmp_path):
    """Issue 26 item 4: 0644 under umask 022, as a plain open() would write."""
    script = (
        "import os, sys; os.umask(0o022)\n"
        "from mimkit.utils.io import atomic_write_text, atomic_save\n"
        "atomic_write_text(sys.argv[1] + '/a.txt', 'x')\n"
        "atomic_save({'x': 1}, sys.argv[1] + '/b.pth')\n"
        "open(sys.argv[1] + '/c.txt', 'w').close()\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True)
    modes = {n: stat.S_IMODE((tmp_path / n).stat().st_mode) for n in ("a.txt", "b.pth", "c.txt")}
    assert modes == {"a.txt": 0o644, "b.pth": 0o644, "c.txt": 0o644}
