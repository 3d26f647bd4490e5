"""Real multi-process DDP: torchrun with 2 gloo processes on CPU."""

import json
import os
import subprocess

import pytest
import torch

from .conftest import TINY_MAE, TORCHRUN_MIMKIT


@pytest.mark.slow
def test_two_process_gloo_pretraining(tmp_path, image_folder):
    out = tmp_path / "run"
    cmd = [
        *TORCHRUN_MIMKIT,
        "pretrain",
        "--data",
        str(image_folder),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        *TINY_MAE,
        "train.log_every=2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    # 64 images split over 2 ranks, batch 8 each: 4 steps an epoch (8 if data were duplicated)
    assert [r["step"] for r in epochs] == [4, 8]
    # only rank 0 writes: each logging step appears once
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    assert train_steps == sorted(set(train_steps)) == [2, 4, 6, 8]
    state = torch.load(out / "checkpoint-last.pth", weights_only=True)
    assert state["epoch"] == 1 and len(state["rng"]) == 2  # one RNG state per rank
    assert not any(k.startswith("module.") for k in state["model"])
    assert proc.stdout.count("epoch 2/2") + proc.stderr.count("epoch 2/2") == 1


@pytest.mark.slow
def test_fsdp_pretraining_saves_full_weights_and_resumes(tmp_path, image_folder):
    """train.fsdp=true with 2 gloo processes: checkpoints hold full (unsharded) tensors and a
    resumed run continues from them."""
    out = tmp_path / "run"
    base = [
        *TORCHRUN_MIMKIT,
        "pretrain",
        "--device",
        "cpu",
    ]
    args = [
        "--data",
        str(image_folder),
        "--out",
        str(out),
        "--batch-size",
        "8",
        *TINY_MAE,
        "train.fsdp=true",
        "optim.accum_iter=2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*base, *args, "--epochs", "2", "train.max_steps=2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = torch.load(out / "checkpoint-last.pth", weights_only=True)
    assert first["epoch"] == 0 and first["step"] == 2
    assert first["model"]["blocks.0.attn.qkv.weight"].shape == (96, 32)  # full, not a shard
    proc = subprocess.run(
        [*base, "--resume", str(out), "train.max_steps=null"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = torch.load(out / "checkpoint-last.pth", weights_only=True)
    assert second["epoch"] == 1 and second["step"] == 4
    assert (out / "reconstructions.png").is_file()
