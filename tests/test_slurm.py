"""Slurm launching through submitit: spec parsing, and a job of 2 tasks (gloo) run by
submitit's local executor that is preempted and requeued with --resume."""

import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch

from mimkit.errors import UserError
from mimkit.launch.slurm import MimkitJob, parse_spec, parse_time

from .conftest import TINY_MAE


def test_spec_parsing_and_one_line_errors():
    spec = parse_spec("nodes=2,gpus_per_node=8,partition=learnlab,time=72:00:00,mem_gb=400")
    assert (spec.nodes, spec.tasks, spec.partition, spec.time, spec.mem_gb) == (
        2,
        8,
        "learnlab",
        4320,
        400.0,
    )
    assert parse_spec("gpus_per_node=0").tasks == 1
    assert [parse_time(t) for t in ("90", "1-00", "2-03:30", "00:30", "1:00:30")] == [
        90,
        1440,
        3090,
        1,
        61,
    ]
    with pytest.raises(UserError, match="unknown key 'gpu_per_node' .did you mean .gpus_per_node."):
        parse_spec("nodes=1,gpu_per_node=8")
    with pytest.raises(UserError, match="nodes=two is not a number"):
        parse_spec("nodes=two")
    with pytest.raises(UserError, match="not a Slurm time"):
        parse_spec("time=3 days")


def test_checkpoint_requeues_with_resume_once_a_checkpoint_exists(tmp_path):
    pytest.importorskip("submitit")
    job = MimkitJob(["pretrain", "--resume", "old", "--epochs", "2"], tmp_path)
    assert job.checkpoint().function.argv == job.argv  # nothing saved yet: same command
    (tmp_path / "checkpoint-last.pth").write_bytes(b"")
    again = job.checkpoint().function
    assert again.argv == ["pretrain", "--epochs", "2", "--resume", str(tmp_path)]
    assert again.checkpoint().function.argv == again.argv  # requeued twice: one --resume


def _children(pid: int) -> list[int]:
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(k) for k in kids]


def _preempt_after_first_epoch(job, run: Path, timeout: float = 300.0) -> None:
    """Freeze the tasks as soon as epoch 1's checkpoint exists, send them Slurm's
    preemption signal (USR2), and let them go on: rank 0 checkpoints and requeues."""
    end = time.time() + timeout
    while not (run / "checkpoint-last.pth").exists():
        assert time.time() < end and job.state == "RUNNING", "no checkpoint was written"
        time.sleep(0.005)
    tasks = _children(job._process.pid)
    for sig in (signal.SIGSTOP, signal.SIGUSR2, signal.SIGCONT):
        for pid in tasks:
            os.kill(pid, sig)


def _weights(run: Path) -> dict:
    return torch.load(run / "checkpoint-last.pth", weights_only=True)["model"]


@pytest.mark.slow
def test_local_job_of_2_tasks_resumes_after_preemption_to_the_same_weights(tmp_path, image_folder):
    pytest.importorskip("submitit")
    from mimkit.launch.slurm import submit

    argv = ["pretrain", "--data", str(image_folder), "--epochs", "3", "--batch-size", "16"]
    argv += [*TINY_MAE, "--device", "cpu", "train.dist_timeout_min=1"]
    spec = "cluster=local,gpus_per_node=0,tasks_per_node=2,time=60"
    ref = submit(argv, spec, tmp_path / "ref")
    cut = submit(argv, spec, tmp_path / "cut")
    _preempt_after_first_epoch(cut, tmp_path / "cut")
    assert ref.results() == [0, 0] and cut.results() == [0, 0]
    log = cut.paths.folder / f"{cut.job_id}_0_log.err"
    resumed = re.findall(r"resumed from .* after epoch (\d+)", log.read_text())
    assert resumed and int(resumed[-1]) < 3, "the job was not preempted before its end"
    a, b = _weights(tmp_path / "ref"), _weights(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_cli_slurm_flag_submits_the_same_command(tmp_path, image_folder, capsys):
    pytest.importorskip("submitit")
    from mimkit.cli import main

    out = tmp_path / "run"
    argv = ["pretrain", "--data", str(image_folder), "--out", str(out), "--epochs", "1"]
    argv += ["--batch-size", "16", *TINY_MAE, "--device", "cpu"]
    spec = "cluster=local,gpus_per_node=0,tasks_per_node=1,time=10"
    assert main([*argv, "--slurm", spec]) == 0
    printed = capsys.readouterr().out
    assert "submitted job" in printed and str(out) in printed
    end = time.time() + 300  # a guard against a job that never runs, not a speed target
    while not (out / "checkpoint-last.pth").exists():  # the job runs on its own
        assert time.time() < end, "the submitted job wrote no checkpoint"
        time.sleep(0.5)
    time.sleep(1.0)
    assert _weights(out)["blocks.0.attn.qkv.weight"].shape[1] == 32
