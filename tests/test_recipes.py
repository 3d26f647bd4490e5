"""The benchmark recipes run end to end in smoke mode (a few steps on the shipped CIFAR-10
sample), so the commands in docs/BENCHMARKS.md keep working."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "examples" / "cifar10-mini"


def _run(script: str, tmp_path: Path, *extra: str) -> dict:
    results = tmp_path / "results.jsonl"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / script),
        "--data",
        str(MINI),
        "--smoke",
        "--work",
        str(tmp_path / "work"),
        "--results",
        str(results),
        *extra,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(results.read_text().splitlines()[-1])


@pytest.mark.slow
def test_mae_cifar10_recipe_smoke(tmp_path):
    row = _run("cifar10_recipe.py", tmp_path, "--recipe", "cpu")
    assert row["smoke"] is True
    res = row["results"]
    for key in (
        "knn_mae",
        "knn_random",
        "linprobe_mae",
        "linprobe_random",
        "finetune_mae",
        "finetune_scratch",
        "knn_ibot",
        "linprobe_ibot",
        "knn_pixels",
        "linprobe_pixels",
    ):
        assert key in res
    assert all(0 <= v <= 100 for v in res["knn_mae"].values())
    assert set(row["steps"]) >= {"pretrain", "pretrain-ibot", "finetune-mae", "finetune-scratch"}


@pytest.mark.slow
def test_convmixer_recipe_smoke(tmp_path):
    row = _run("convmixer_cifar10.py", tmp_path)
    assert row["smoke"] is True and row["num_test_images"] == 500 and 0 <= row["top1"] <= 100
