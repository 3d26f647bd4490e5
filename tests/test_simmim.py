"""SimMIM through the method contract: the official trajectory through our Trainer and
wiring, the official checkpoint layout under the safe loader, the encoder downstream."""

from __future__ import annotations

import math

import pytest
import torch

from mimkit.config import load_config
from mimkit.engine.loop import Trainer
from mimkit.interop.checkpoint import model_from_checkpoint, read_checkpoint
from mimkit.masking import coarse_grid_mask
from mimkit.methods import method_for
from mimkit.methods.simmim import SimMIM, lr_at
from mimkit.models import BEiT, create_model
from mimkit.recipes.pretrain import _training_parts
from mimkit.recipes.run import RunContext

from .conftest import SHARED_DIR

SHARED = SHARED_DIR / "interop"
TRAJ = SHARED / "simmim_official_trajectory.pt"
OFFICIAL = SHARED / "simmim_official_checkpoint_tiny.pth"
needs_fixtures = pytest.mark.skipif(not TRAJ.is_file(), reason="official SimMIM fixtures absent")
CPU = torch.device("cpu")
ATOL = 1e-5


@pytest.fixture(scope="module")
def traj():
    return torch.load(TRAJ, weights_only=False)


def tiny_simmim(traj) -> SimMIM:
    a = traj["encoder_args"]
    args = {k: a[k] for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads")}
    m = traj["mask_generator"]
    return create_model(
        "simmim_vit",
        **args,
        mlp_ratio=a["mlp_ratio"],
        init_values=a["init_values"],
        use_abs_pos_emb=a["use_abs_pos_emb"],
        use_rel_pos_bias=a["use_rel_pos_bias"],
        use_shared_rel_pos_bias=a["use_shared_rel_pos_bias"],
        drop_path_rate=a["drop_path_rate"],
        mask_patch_size=m["mask_patch_size"],
        mask_ratio=m["mask_ratio"],
        lr_schedule="cosine",
    )


class FixtureLoader:
    """Epoch e of 6 one-step epochs yields the fixture's step e (images, mask)."""

    def __init__(self, traj):
        self.steps, self.batch_size, self.sampler = traj["steps"], 4, self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return 1

    def __iter__(self):
        s = self.steps[self.epoch]
        yield {"image": s["images"], "mask": s["mask"]}


class Recording:
    """The CLI's task, recording the lr and the loss of each step."""

    def __init__(self, task):
        self.task, self.log = task, []

    def on_step_start(self, model, optimizer, step, epoch):
        self.log.append({"lr": [g["lr"] for g in optimizer.param_groups]})

    def training_step(self, model, batch):
        out = self.task.training_step(model, batch)
        self.log[-1]["loss"] = float(out["loss"].detach())
        return out


def run_trajectory(traj, tmp_path, monkeypatch):
    """Fit as the CLI does: the SimMIM preset's optimisation keys with the fixture's
    values and ``recipes.pretrain._training_parts`` (groups, betas, the official lr
    rule with its lagged update, clipping)."""
    o = traj["optim"]
    overrides = [
        f"optim.lr={o['lr']}",
        "optim.warmup_lr=1e-3",
        "optim.min_lr=1e-4",
        "optim.warmup_epochs=2",
        f"optim.weight_decay={o['weight_decay']}",
        f"optim.clip_grad={o['clip_grad']}",
        f"optim.betas=[{o['betas'][0]},{o['betas'][1]}]",
        "train.epochs=6",
        "data.batch_size=4",
        "train.device=cpu",
        "train.precision=fp32",
        "train.log_every=1",
        "train.save_every=100",
        "model.args.lr_schedule=cosine",
    ]
    cfg = load_config("simmim_vit_tiny_cifar", overrides, task="pretrain")
    ctx = RunContext(cfg, CPU, "fp32", lr_batch=512)
    model = tiny_simmim(traj)
    model.load_state_dict(traj["init"], strict=True)
    loader = FixtureLoader(traj)
    task, make_optimizer, loop = _training_parts(ctx, model, loader)
    recording = Recording(task)
    optimizer = make_optimizer(model)
    grads = {}
    clip = torch.nn.utils.clip_grad_norm_

    def clip_and_keep_first(params, max_norm, *a, **kw):  # step 0's grads, before clipping
        if not grads:
            grads.update({n: p.grad.clone() for n, p in model.named_parameters()})
        return clip(params, max_norm, *a, **kw)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_and_keep_first)
    loop_cfg = ctx.loop_config(ctx.lr(), **loop)
    Trainer(recording, model, optimizer, loader, CPU, loop_cfg, tmp_path).fit()
    return model, recording, optimizer, grads


@needs_fixtures
def test_official_trajectory_through_the_trainer(traj, tmp_path, monkeypatch):
    model, rec, optimizer, grads = run_trajectory(traj, tmp_path, monkeypatch)
    assert [r["lr"] for r in rec.log] == [s["lr"] for s in traj["steps"]]  # both groups
    loss = max(abs(r["loss"] - s["loss"]) for r, s in zip(rec.log, traj["steps"], strict=True))
    first = traj["steps"][0]["grads"]
    grad = max((grads[k] - v).abs().max().item() for k, v in first.items())
    sd = model.state_dict()
    weights = max((sd[k] - v).abs().max().item() for k, v in traj["final"].items())
    print(f"largest differences: loss {loss:.2e}, step-0 grads {grad:.2e}, weights {weights:.2e}")
    assert loss < ATOL and grad < ATOL and weights < ATOL
    # the official groups: the mask token and the relative position table are decayed
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = sorted(names[id(p)] for p in optimizer.param_groups[0]["params"])
    assert decayed == traj["optim"]["decay"]
    assert optimizer.param_groups[0]["weight_decay"] == traj["optim"]["weight_decay"]
    assert optimizer.param_groups[1]["weight_decay"] == 0.0


def test_lr_rule_is_timms_cosine_with_the_official_lag():
    from timm.scheduler import CosineLRScheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    sched = CosineLRScheduler(
        opt, t_initial=50, lr_min=1e-4, warmup_lr_init=1e-3, warmup_t=7, t_in_epochs=False
    )
    for t in range(60):
        assert lr_at(t, 0.01, 1e-3, 7, 50, "cosine", 1e-4) == pytest.approx(
            sched._get_lr(t)[0], rel=1e-12
        )
    assert lr_at(10, 1.0, 0.0, 5, 100, "multistep", milestones=(10, 20), gamma=0.1) == 0.1


def test_mask_generator_is_the_official_rule():
    torch.manual_seed(0)
    m = coarse_grid_mask(224, 32, 16, 0.6)
    assert m.shape == (14, 14) and m.dtype == torch.long
    cells = m[::2, ::2]
    assert int(cells.sum()) == math.ceil(49 * 0.6)  # 30 of the 7x7 cells
    assert torch.equal(m, cells.repeat_interleave(2, 0).repeat_interleave(2, 1))


@needs_fixtures
def test_official_checkpoint_loads_safely_everywhere(traj, tmp_path):
    """The main_simmim file (yacs CfgNode config) under weights_only, no yacs, no trust."""
    ckpt = read_checkpoint(OFFICIAL)
    assert ckpt.meta["source"] == "official SimMIM" and "config" not in ckpt.meta
    full, report = model_from_checkpoint(OFFICIAL, kind="pretrain")
    assert isinstance(full, SimMIM) and not report.missing and not report.unexpected
    assert method_for(full).name == "simmim"
    encoder, report = model_from_checkpoint(OFFICIAL, kind="encoder")
    assert isinstance(encoder, BEiT) and not report.missing
    # the encoder gives the official encoder's tokens (all tokens, unmasked)
    x = traj["steps"][0]["images"]
    full.eval(), encoder.eval()
    with torch.no_grad():
        zero = torch.zeros(len(x), *full.grid_size, dtype=torch.long)
        ref = full.encoder.forward_masked(x, zero)
        ours = encoder.forward_features(x)[:, 1:].transpose(1, 2).reshape(ref.shape)
    assert torch.allclose(ours, ref, atol=1e-5)


# ---------------------------------------------------------------------------- protocols

TINY_SIMMIM = ["--config", "simmim_vit_tiny_cifar", "model.args.embed_dim=32",
               "model.args.depth=2", "model.args.num_heads=2", "data.num_workers=0",
               "train.tensorboard=false", "eval.cache_dir=none"]  # fmt: skip


@pytest.fixture(scope="module")
def simmim_run(tmp_path_factory, labeled_root):
    from mimkit.cli import main

    out = tmp_path_factory.mktemp("simmim") / "run"
    args = ["pretrain", "--data", labeled_root / "train", "--out", out, "--epochs", "1",
            "--batch-size", "16", *TINY_SIMMIM]  # fmt: skip
    assert main([str(a) for a in args]) == 0
    return out


@pytest.mark.slow
def test_simmim_encoder_goes_through_every_protocol(simmim_run, labeled_root, tmp_path):
    import mimkit

    ckpt, data = str(simmim_run / "checkpoint-last.pth"), str(labeled_root)
    keys = {"eval.cache_dir": "none", "eval.baselines": False, "data.num_workers": 0}
    for job in ("knn", "linprobe", "attnprobe", "qscore"):
        r = getattr(mimkit, job)(ckpt, data=data, out=str(tmp_path / job), epochs=1, **keys)
        assert (tmp_path / job / "metrics.json").is_file(), job
        assert r.metrics, job
    blocks = mimkit.blocks(ckpt, data=data, out=str(tmp_path / "b"),
                           **{**keys, "blocks.linear_epochs": 1})  # fmt: skip
    assert len(blocks["rows"]) == 2 * 3
    ft = mimkit.finetune(ckpt, data=data, out=str(tmp_path / "ft"), epochs=1, batch_size=16,
                         **{"data.num_workers": 0})  # fmt: skip
    assert 0 <= ft["top1"] <= 100
    from mimkit.cli import main

    assert main(["predict", "--checkpoint", str(ft.checkpoint), "--images",
                 str(labeled_root / "val" / "cat")]) == 0  # fmt: skip
    assert main(["visualize", "--checkpoint", ckpt, "--images", str(labeled_root / "val"),
                 "--num-images", "2", "--out", str(tmp_path / "v.png")]) == 0  # fmt: skip


@pytest.mark.slow
def test_simmim_encoder_exports_as_timm_beit_and_hf_beitmodel(simmim_run, tmp_path):
    import json

    import timm
    import transformers

    from mimkit.cli import main

    ckpt = str(simmim_run / "checkpoint-last.pth")
    encoder, _ = model_from_checkpoint(ckpt, kind="encoder")
    encoder.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = encoder.forward_features(x)
    assert main(["export", "--checkpoint", ckpt, "--format", "timm", "--out",
                 str(tmp_path / "timm") + "/"]) == 0  # fmt: skip
    recipe = json.loads((tmp_path / "timm" / "model.json").read_text())
    assert recipe["model_name"].startswith("beit_")
    timm_model = timm.create_model(recipe["model_name"], pretrained=True,
                                   pretrained_cfg_overlay=recipe["pretrained_cfg_overlay"],
                                   **recipe["kwargs"]).eval()  # fmt: skip
    assert main(["export", "--checkpoint", ckpt, "--format", "hf", "--out",
                 str(tmp_path / "hf")]) == 0  # fmt: skip
    hf = transformers.AutoModel.from_pretrained(str(tmp_path / "hf")).eval()
    assert type(hf).__name__ == "BeitModel"
    back, _ = model_from_checkpoint(str(tmp_path / "hf"), kind="encoder")
    with torch.no_grad():
        assert torch.allclose(timm_model.forward_features(x), ours, atol=1e-6)
        assert torch.allclose(hf(pixel_values=x).last_hidden_state, ours, atol=1e-5)
        assert torch.allclose(back.eval().forward_features(x), ours, atol=1e-6)
