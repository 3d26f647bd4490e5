import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# Caches (features, tensor caches, Arrow conversions) of this test session in a scratch
# folder: nothing from an earlier run, or from a user's ~/.cache, can answer for a test.
os.environ.setdefault("MIMKIT_CACHE", tempfile.mkdtemp(prefix="mimkit-test-cache-"))
FIXTURES = Path(__file__).parent / "fixtures"
CIFAR_MINI = ROOT / "examples" / "cifar10-mini"
# The team's read-only data (official fixtures, CIFAR-10, COCO128): beside the checkout,
# else at the workplace's fixed place; tests that need it skip when neither exists.
SHARED_DIR = next(
    (p for p in (ROOT.parent / "shared", Path("/work/shared")) if (p / "interop").is_dir()),
    ROOT.parent / "shared",
)

# `torchrun` with 2 local processes running `mimkit` (append the command and its args).
TORCHRUN_MIMKIT = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--standalone",
    "--nproc_per_node=2",
    "-m",
    "mimkit",
]

# A tiny MAE for fast CLI/engine tests (32 px, 4 px patches, 1+1 blocks of width 32).
TINY_MAE = [
    "model.name=mae_vit_tiny_cifar",
    "model.args.embed_dim=32",
    "model.args.depth=1",
    "model.args.num_heads=2",
    "model.args.decoder_embed_dim=32",
    "model.args.decoder_depth=1",
    "model.args.decoder_num_heads=2",
    "data.img_size=32",
    "data.num_workers=0",
    "train.tensorboard=false",
]


@pytest.fixture(autouse=True)
def _threads_and_seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _in_a_scratch_folder(tmp_path_factory, monkeypatch):
    """Each test runs from a scratch folder: a default ``runs/<name>`` or a picture written
    next to the working directory lands there, not in the checkout."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture
def mimkit_log():
    """The 'mimkit' logger's messages while the test runs, whatever the CLI did to the
    logger before (setup_console turns propagation off, so caplog would miss them)."""
    import logging

    class _Lines(logging.Handler):
        def __init__(self):
            super().__init__(logging.INFO)
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

        @property
        def text(self) -> str:
            return "\n".join(self.lines)

    logger, handler = logging.getLogger("mimkit"), _Lines()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """64 real CIFAR-10 JPEGs in 4 class folders (16 each)."""
    out = tmp_path / "images"
    for cls in ("airplane", "cat", "ship", "truck"):
        (out / cls).mkdir(parents=True)
        for f in sorted((CIFAR_MINI / "train" / cls).iterdir())[:16]:
            shutil.copy(f, out / cls / f.name)
    return out


@pytest.fixture(scope="session")
def labeled_root(tmp_path_factory) -> Path:
    """ROOT/train (4 classes x 16) and ROOT/val (4 classes x 8) real CIFAR-10 JPEGs."""
    root = tmp_path_factory.mktemp("labeled")
    for split, src, n in (("train", "train", 16), ("val", "test", 8)):
        for cls in ("airplane", "cat", "ship", "truck"):
            (root / split / cls).mkdir(parents=True)
            for f in sorted((CIFAR_MINI / src / cls).iterdir())[:n]:
                shutil.copy(f, root / split / cls / f.name)
    return root


@pytest.fixture(scope="session")
def tiny_mae_ckpt(tmp_path_factory, labeled_root) -> Path:
    """A mimkit MAE checkpoint from one short pretraining epoch on real images."""
    from mimkit.cli import main

    out = tmp_path_factory.mktemp("pretrain") / "run"
    code = main(
        [
            "pretrain",
            "--data",
            str(labeled_root / "train"),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--batch-size",
            "16",
            *TINY_MAE,
        ]
    )
    assert code == 0
    return out / "checkpoint-last.pth"


@pytest.fixture
def reference():
    return torch.load(FIXTURES / "mae_reference_tiny.pt", weights_only=False)
