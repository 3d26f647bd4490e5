"""iBOT as a product: pretrain from the CLI on real images, resume exactly, two processes
agree, visualize, evaluate the teacher, and the official files through load_checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mimkit
from mimkit.cli import main

from .conftest import CIFAR_MINI, SHARED_DIR

SHARED = SHARED_DIR / "interop"
TINY_IBOT = [
    "model.args.embed_dim=32",
    "model.args.depth=2",  # two blocks: the probe on the last 2 [CLS] tokens runs
    "model.args.num_heads=2",
    "model.args.out_dim=64",
    "model.args.head_hidden_dim=64",
    "model.args.head_bottleneck_dim=32",
    "model.args.local_crops_number=2",
    "model.args.warmup_teacher_temp_epochs=1",
    "optim.warmup_epochs=1",
    "data.num_workers=0",
    "train.tensorboard=false",
    "train.log_every=2",
]


def _pretrain(data, out, *extra) -> int:
    args = ["pretrain", "--config", "ibot_vit_tiny_cifar", "--data", data, "--out", out]
    return main([str(a) for a in [*args, "--batch-size", 16, *TINY_IBOT, *extra]])


@pytest.fixture(scope="module")
def ibot_run(tmp_path_factory, labeled_root) -> Path:
    out = tmp_path_factory.mktemp("ibot") / "run"
    assert _pretrain(labeled_root / "train", out, "--epochs", 2) == 0
    return out


def test_pretrain_logs_both_losses_and_schedules(ibot_run):
    rows = [json.loads(line) for line in (ibot_run / "log.jsonl").read_text().splitlines()]
    epoch = [r for r in rows if r["kind"] == "epoch"][-1]
    for key in ("cls_loss", "patch_loss", "teacher_temp", "ema_momentum", "agreement", "loss"):
        assert key in epoch, key
    assert epoch["loss"] == pytest.approx(epoch["cls_loss"] + epoch["patch_loss"], rel=1e-4)
    state = torch.load(ibot_run / "checkpoint-last.pth", weights_only=True)
    assert state["model_name"] == "ibot_vit_tiny_cifar" and "center" in state["model"]
    assert (ibot_run / "loss.png").is_file() and (ibot_run / "reconstructions.png").is_file()


@pytest.mark.slow
def test_resume_reproduces_a_straight_run(tmp_path, labeled_root, ibot_run):
    out = tmp_path / "b"
    assert _pretrain(labeled_root / "train", out, "--epochs", 2, "train.max_steps=4") == 0
    assert main(["pretrain", "--resume", str(out), "train.max_steps=null"]) == 0
    a = torch.load(ibot_run / "checkpoint-last.pth", weights_only=True)["model"]
    b = torch.load(out / "checkpoint-last.pth", weights_only=True)["model"]
    for k in a:  # student, teacher, centres
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_teacher_goes_to_knn_visualize_and_probe(tmp_path, ibot_run, labeled_root, capsys):
    ckpt = ibot_run / "checkpoint-last.pth"
    knn = mimkit.knn(ckpt, data=labeled_root, out=tmp_path / "knn", **{"eval.cache_dir": "none"})
    assert 0 <= knn["top1"] <= 100 and set(knn["per_k"]) == {"10", "20", "64"}
    code = main(
        [
            "visualize",
            "--checkpoint",
            str(ckpt),
            "--images",
            str(labeled_root / "val"),
            "--num-images",
            "2",
            "--out",
            str(tmp_path / "p.png"),
        ]
    )
    assert code == 0 and "teacher prototype" in capsys.readouterr().out
    probe = mimkit.linprobe(
        ckpt,
        data=labeled_root,
        out=tmp_path / "probe",
        epochs=1,
        **{
            "linprobe.n_last_blocks": 2,
            "linprobe.batchnorm": False,  # the official DINO / iBOT probe: a plain linear layer
            "eval.cache_dir": "none",
            "linprobe.optimizer": "sgd",
        },
    )
    assert probe["num_images"] == 32
    head = torch.load(probe.checkpoint, weights_only=True)["model"]
    assert head["1.weight"].shape == (4, 2 * 32)  # 4 classes, 2 [CLS] tokens of width 32
    assert not any(k.startswith("0.") for k in head)  # no BatchNorm
    teacher, _ = mimkit.interop.checkpoint.model_from_checkpoint(ckpt)
    student, _ = mimkit.interop.checkpoint.model_from_checkpoint(ckpt, network="student")
    state = torch.load(ckpt, weights_only=True)["model"]
    assert torch.equal(
        teacher.blocks[0].attn.qkv.weight, state["teacher.backbone.blocks.0.attn.qkv.weight"]
    )
    assert torch.equal(
        student.blocks[0].attn.qkv.weight, state["student.backbone.blocks.0.attn.qkv.weight"]
    )


@pytest.mark.parametrize(
    "method", ["mae_vit_tiny_cifar", "lomar_vit_tiny_cifar", "ibot_vit_tiny_cifar"]
)
def test_last_blocks_probe_concatenates_cls_tokens(method):
    """Every method's encoder: n [CLS] tokens (each through the final norm), then with
    avgpool the last block's mean patch token."""
    from mimkit.eval.features import LastBlocks, encode
    from mimkit.models import create_encoder

    vit = create_encoder(method, embed_dim=32, depth=3, num_heads=2).eval()
    x = torch.randn(2, 3, 32, 32)
    feats = encode(LastBlocks(vit, 2), x)
    assert feats.shape == (2, 64) and LastBlocks(vit, 2).num_features == 64
    with torch.no_grad():  # the last block's [CLS] through the final norm is the usual feature
        tokens = vit.forward_features(x)
        torch.testing.assert_close(feats[:, 32:], tokens[:, 0])
        assert not torch.allclose(feats[:, :32], feats[:, 32:])  # block 2's differs
        avg = encode(LastBlocks(vit, 2, avg=True), x)
        torch.testing.assert_close(avg[:, 64:], tokens[:, 1:].mean(1))


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/interop not beside the repo")
def test_official_files_through_load_checkpoint_into_ours_and_timm():
    import timm

    traj = torch.load(SHARED / "ibot_official_trajectory.pt", weights_only=True)
    ref = traj["probe_teacher_tokens_final"]
    for name in ("ibot_official_checkpoint_tiny.pth", "ibot_official_checkpoint_teacher_tiny.pth"):
        ours = mimkit.create_model(
            "vit", img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4
        )
        plain = timm.create_model(
            "vit_small_patch16_224",
            pretrained=False,
            img_size=32,
            patch_size=4,
            embed_dim=64,
            depth=2,
            num_heads=4,
            num_classes=0,
        )
        for model in (ours, plain):
            report = mimkit.load_checkpoint(model, SHARED / name)  # teacher by default
            assert report.loaded == 30 and not report.missing
            with torch.no_grad():
                tokens = model.eval().forward_features(traj["probe_images"])
            assert (tokens - ref).abs().max() < 1e-5
    student = mimkit.create_model(
        "vit", img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4
    )
    mimkit.load_checkpoint(student, SHARED / "ibot_official_checkpoint_tiny.pth", network="student")
    final = traj["student_final"]["backbone.blocks.1.mlp.fc2.weight"]
    assert torch.equal(student.blocks[1].mlp.fc2.weight, final)


_DDP_SCRIPT = r"""
import sys, torch, torch.distributed as tdist
import mimkit
from mimkit.utils.distributed import wrap, unwrap
from mimkit.engine.loop import LoopConfig, Trainer
from mimkit.engine.optim import adamw
from mimkit.methods.ibot import IBOTTask
from mimkit.engine.timing import SyntheticLoader
from mimkit.recipes.benchmark import synthetic_batch
from mimkit.utils.distributed import init, rank, all_gather_object

init(torch.device("cpu"))
torch.manual_seed(0)  # same initial weights on both ranks
model = mimkit.create_model("ibot_vit_tiny_cifar", embed_dim=32, depth=1, num_heads=2,
                            out_dim=64, head_hidden_dim=64, head_bottleneck_dim=32,
                            local_crops_number=2)
batch = synthetic_batch(model, 4, torch.device("cpu"), seed=1 + rank())  # data differs by rank
sums = all_gather_object(float(batch["global"][0].sum()))
ddp = wrap(model, torch.device("cpu"))
task = IBOTTask.from_model(model, 1, 3, 0.04, 3.0)
opt = adamw(model.param_groups(0.04), 1e-3, (0.9, 0.999), torch.device("cpu"))
loop = LoopConfig(epochs=1, base_lr=1e-3, schedule="cosine_iter", log_every=1)
trainer = Trainer(task, ddp, opt, SyntheticLoader(batch, 4), torch.device("cpu"), loop, sys.argv[1])
for i in range(3):
    trainer.step(dict(batch), index=i)
m = unwrap(ddp)
state = {k: v for k, v in m.state_dict().items() if k.startswith("teacher.") or "center" in k}
states = all_gather_object(state)
if rank() == 0:
    same = all(torch.equal(states[0][k], states[1][k]) for k in state)
    moved = not torch.equal(states[0]["center"], torch.zeros_like(states[0]["center"]))
    print("RANK DATA", "SAME" if sums[0] == sums[1] else "DIFFERS")
    print("IDENTICAL" if same and moved else "DIFFERENT")
tdist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_processes_keep_teacher_and_centres_identical(tmp_path):
    script = tmp_path / "ddp_ibot.py"
    script.write_text(_DDP_SCRIPT)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        str(tmp_path),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    # each rank's centre update sees other data: only the all-reduce makes them agree
    assert "RANK DATA DIFFERS" in r.stdout, r.stdout
    assert "IDENTICAL" in r.stdout, r.stdout + r.stderr[-2000:]


@pytest.mark.slow
def test_shipped_sample_pretrain_then_knn(tmp_path):
    """The README's iBOT commands on the shipped CIFAR-10 sample (a few steps)."""
    out = tmp_path / "ibot"
    assert _pretrain(CIFAR_MINI / "train", out, "--epochs", 1, "train.max_steps=3") == 0
    code = main(
        [
            "knn",
            "--checkpoint",
            str(out / "checkpoint-last.pth"),
            "--data",
            str(CIFAR_MINI),
            "--out",
            str(tmp_path / "knn"),
            "eval.cache_dir=none",
            "data.num_workers=0",
        ]
    )
    assert code == 0
    assert json.loads((tmp_path / "knn" / "metrics.json").read_text())["num_images"] == 500
