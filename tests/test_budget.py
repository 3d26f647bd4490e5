"""A time budget as a first-class setting, and a clean stop on SIGINT/SIGTERM.

The plan follows from the measured step time, tested with an injected clock (nothing here
depends on this machine's speed); a short real run ends with its schedule completed; a
run stopped by SIGTERM mid-epoch resumes to the same weights as one never stopped.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
import yaml
from torch import nn

from mimkit.cli import main
from mimkit.engine.loop import LoopConfig, Trainer, parse_seconds, plan_steps
from mimkit.errors import TrainingInterrupted, UserError

from .conftest import TINY_MAE


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Loader:
    """``n`` batches of 4 random images; a sampler with set_epoch/set_start."""

    def __init__(self, n: int = 10):
        self.n, self.batch_size = n, 4
        self.sampler = self
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start(self, start: int) -> None:
        self.start = start

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for b in range(self.start // self.batch_size, self.n):
            g = torch.Generator().manual_seed(1000 * self.epoch + b)
            yield {"image": torch.randn(4, 8, generator=g)}


class Task:
    """A linear model's loss; each step advances the fake clock by ``seconds``."""

    def __init__(self, clock: FakeClock, seconds: float = 0.5):
        self.clock, self.seconds, self.plans, self.lrs = clock, seconds, [], []

    def training_step(self, model, batch):
        self.clock.now += self.seconds
        return {"loss": model(batch["image"]).pow(2).mean()}

    def on_step_start(self, model, optimizer, step, epoch):
        self.lrs.append(optimizer.param_groups[0]["lr"])

    def on_plan(self, total_steps, steps_per_epoch):
        self.plans.append(total_steps)


def _trainer(tmp_path, budget, clock, task, warmup=0.2, **loop) -> Trainer:
    torch.manual_seed(0)
    model = nn.Linear(8, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cfg = LoopConfig(
        epochs=1000, base_lr=0.1, min_lr=0.001, warmup_epochs=warmup, log_every=5,
        time_budget=budget, probe_steps=4, clock=clock, save_every=1000, **loop,
    )  # fmt: skip
    return Trainer(task, model, opt, Loader(), torch.device("cpu"), cfg, tmp_path)


def test_plan_follows_from_the_measured_step_time():
    # 10 s went to the first 10 steps at 1 s/step: the other 90 s give 90 more steps
    assert plan_steps(100.0, 10.0, 10, 1.0, warmup=5) == 100
    with pytest.raises(UserError, match=r"warm-up alone needs 50 steps: give at least 51s"):
        plan_steps(30.0, 10.0, 10, 1.0, warmup=50)


def test_budget_sizes_the_schedule_and_ends_at_it(tmp_path):
    clock = FakeClock()
    task = Task(clock, seconds=0.5)
    plans = []
    trainer = _trainer(tmp_path, 30.0, clock, task, on_plan=lambda n, t: plans.append((n, t)))
    trainer.fit()
    # 4 timed steps after the first at 0.5 s: 60 steps fill 30 s
    assert plans == [(60, 0.5)] and trainer.total_steps == 60
    assert task.plans[-1] == 60  # the task's schedules were sized by the plan
    assert trainer.state.step == 60 and clock.now == pytest.approx(30.0)
    assert trainer.epochs == 6  # a consequence: 60 steps of 10 a epoch
    # the cosine completed at the budget: warm-up to 0.1 over 2 steps, then down to 0.001
    assert max(task.lrs) == pytest.approx(0.1, rel=0.05)
    assert task.lrs[-1] < 0.002


def test_a_budget_too_small_for_the_warm_up_says_the_minimum(tmp_path):
    clock = FakeClock()
    trainer = _trainer(tmp_path, 3.0, clock, Task(clock, 0.5), warmup=2.0)  # 20 steps
    with pytest.raises(UserError, match=r"time_budget=3s .* needs 20 steps: give at least 10s"):
        trainer.fit()


def test_durations_parse():
    assert parse_seconds("15m") == 900 and parse_seconds("2h") == 7200
    assert parse_seconds("1h30m") == 5400 and parse_seconds("90s") == 90
    assert parse_seconds(45) == 45
    with pytest.raises(UserError, match="not a duration"):
        parse_seconds("soon")


class Killer(Task):
    """Sends SIGTERM to this process during step ``at``."""

    def __init__(self, clock, at: int):
        super().__init__(clock)
        self.at, self.calls = at, 0

    def training_step(self, model, batch):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().training_step(model, batch)


def test_sigterm_saves_mid_epoch_and_resume_is_exact(tmp_path):
    clock = FakeClock()
    ref = _trainer(tmp_path / "ref", None, clock, Task(clock), max_steps=25)
    ref.fit()
    clock = FakeClock()
    cut = _trainer(tmp_path / "cut", None, clock, Killer(clock, at=13), max_steps=25)
    with pytest.raises(TrainingInterrupted, match="SIGTERM at step 13") as e:
        cut.fit()
    assert e.value.signal == signal.SIGTERM
    saved = torch.load(tmp_path / "cut" / "checkpoint-last.pth", weights_only=False)
    assert saved["position"] == {"epoch": 1, "micro": 3}  # 3 batches into epoch 2
    again = _trainer(tmp_path / "cut", None, clock, Task(clock), max_steps=25)
    again.resume(tmp_path / "cut" / "checkpoint-last.pth")
    again.fit()
    for a, b in zip(ref.model.parameters(), again.model.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_cli_run_with_a_budget_records_its_plan_and_completes(tmp_path, image_folder):
    out = tmp_path / "run"
    code = main(["pretrain", "--data", str(image_folder), "--out", str(out), "--batch-size",
                 "8", *TINY_MAE, "--time-budget", "6s", "optim.warmup_epochs=0.5",
                 "train.log_every=1"])  # fmt: skip
    assert code == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())["train"]
    assert cfg["planned_steps"] > 8 and cfg["step_time"] > 0
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r["kind"] == "train"]
    assert steps[-1] == cfg["planned_steps"]  # the run ended with its plan
    lrs = [r["lr"] for r in rows if r["kind"] == "train"]
    assert lrs[-1] < 0.05 * max(lrs)  # the cosine reached its end
    ckpt = torch.load(out / "checkpoint-last.pth", weights_only=False)
    assert ckpt["config"]["train"]["planned_steps"] == cfg["planned_steps"]


@pytest.mark.slow
def test_cli_sigterm_saves_and_says_how_to_resume(tmp_path, image_folder):
    """Issue 26 item 11: what Slurm and Kubernetes send before a preemption."""
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    args = ["pretrain", "--data", str(image_folder), "--out", str(out), "--batch-size", "8",
            *TINY_MAE, "--epochs", "200", "train.log_every=1"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "mimkit", *args], stderr=subprocess.PIPE, text=True
    )
    log = out / "log.jsonl"
    end = time.time() + 120  # a hang guard, not a speed target
    while not (log.is_file() and '"kind": "train"' in log.read_text()):
        assert proc.poll() is None and time.time() < end, "the run never started training"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in err and f"--resume {out}" in err and "Traceback" not in err
    saved = torch.load(out / "checkpoint-last.pth", weights_only=False)
    assert saved["step"] >= 1 and "position" in saved
    assert main(["pretrain", "--resume", str(out), "train.epochs=2"]) == 0
