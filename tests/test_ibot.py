"""iBOT against the official bytedance/ibot code: a 6-step trajectory through the real
Trainer, the two official checkpoint layouts, block masks, EMA and loss rules."""

from __future__ import annotations

import random

import pytest
import timm
import torch
from PIL import Image

from mimkit.config import load_config
from mimkit.data.datasets import seeded
from mimkit.data.multicrop import MultiCropTransform, multicrop_collate
from mimkit.engine.loop import LoopConfig, Trainer
from mimkit.engine.optim import adamw, clip_grad_per_param_
from mimkit.masking import block_mask, draw_pred_ratio
from mimkit.methods.ibot import IBOT, IBOTTask, ibot_loss
from mimkit.methods.ibot import official as interop
from mimkit.models import create_encoder, create_model
from mimkit.recipes.pretrain import _training_parts
from mimkit.recipes.run import RunContext

from .conftest import SHARED_DIR

SHARED = SHARED_DIR / "interop"
TRAJ = SHARED / "ibot_official_trajectory.pt"
FULL = SHARED / "ibot_official_checkpoint_tiny.pth"
TEACHER = SHARED / "ibot_official_checkpoint_teacher_tiny.pth"
needs_fixtures = pytest.mark.skipif(not TRAJ.is_file(), reason="official iBOT fixtures absent")

# The fixture was made with the official ViT's explicit attention (q @ k^T, softmax, @ v)
# and without oneDNN kernels; run with the same kernels, our losses are within 2.4e-6 of
# it (measured). With this machine's defaults (oneDNN convolution/linear, fused SDPA) the
# rounding differs by ~1e-7 per op and lr 0.005 amplifies it to 1.3e-5 in the step-4
# [CLS] loss (also measured): that path is bounded by DEFAULT_KERNELS_LOSS_ATOL.
CPU = torch.device("cpu")
LOSS_ATOL = 1e-5
DEFAULT_KERNELS_LOSS_ATOL = 3e-5
WEIGHT_ATOL = 1e-5
# The key bias of qkv gets a gradient that is zero in exact arithmetic (softmax ignores a
# per-query constant); Adam (eps 1e-8) turns its ~1e-10 rounding noise into steps of
# ~1e-4, in the official run as here. Its values are noise: bounded, not matched.
KEY_BIAS_ATOL = 2e-3


@pytest.fixture(scope="module")
def traj():
    return torch.load(TRAJ, weights_only=True)


def tiny_ibot(c: dict, **kw) -> IBOT:
    return create_model(
        "ibot_vit",
        img_size=c["img"],
        patch_size=c["patch"],
        embed_dim=c["embed_dim"],
        depth=c["depth"],
        num_heads=c["num_heads"],
        out_dim=c["out_dim"],
        head_hidden_dim=c["head_hidden"],
        head_bottleneck_dim=c["head_bottleneck"],
        head_layers=c["head_layers"],
        norm_last_layer=c["norm_last_layer"],
        shared_head=c["shared_head"],
        shared_head_teacher=c["shared_head_teacher"],
        drop_path_rate=c["drop_path"],
        student_temp=c["student_temp"],
        center_momentum=c["center_momentum"],
        lambda1=c["lambda1"],
        lambda2=c["lambda2"],
        momentum_teacher=c["momentum_teacher"],
        warmup_teacher_temp=c["warmup_teacher_temp"],
        teacher_temp=c["teacher_temp"],
        warmup_teacher_patch_temp=c["warmup_teacher_patch_temp"],
        teacher_patch_temp=c["teacher_patch_temp"],
        warmup_teacher_temp_epochs=c["warmup_teacher_temp_epochs"],
        weight_decay_end=c["weight_decay_end"],
        freeze_last_layer=c["freeze_last_layer"],
        **kw,
    )


def load_init(model: IBOT, traj) -> None:
    sd = {"student." + k: v for k, v in traj["student_init"].items()}
    sd |= {"teacher." + k: v for k, v in traj["teacher_init"].items()}
    sd |= {"center": torch.zeros_like(model.center), "center2": torch.zeros_like(model.center2)}
    model.load_state_dict(sd, strict=True)


class FixtureLoader:
    """The fixture's crops and masks as a loader: ``set_epoch`` picks that epoch's steps."""

    def __init__(self, traj):
        self.steps, self.per_epoch = traj["steps"], traj["config"]["iters_per_epoch"]
        self.batch_size = traj["config"]["batch"]
        self.sampler = self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_epoch

    def __iter__(self):
        for s in self.steps[self.epoch * self.per_epoch : (self.epoch + 1) * self.per_epoch]:
            yield {
                "global": list(s["global_crops"]),
                "local": list(s["local_crops"]),
                "masks": list(s["masks"]),
            }


class RecordingTask(IBOTTask):
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.log = []

    def on_step_start(self, model, optimizer, step, epoch):
        super().on_step_start(model, optimizer, step, epoch)
        groups = optimizer.param_groups
        self.log.append(
            dict(
                step=step,
                lr=[g["lr"] for g in groups],
                wd=[g["weight_decay"] for g in groups],
                temps=model.temps,
                momentum=self.momentum[step],
            )
        )

    def training_step(self, model, batch):
        out = super().training_step(model, batch)
        self.log[-1].update({k: float(v.detach()) for k, v in out.items()})
        return out


def run_trajectory(traj, tmp_path, task_kw=None, loop_kw=None, groups=None, official=True):
    """The fixture's 6 iterations through the real Trainer; returns (model, task).
    ``official``: the fixture's kernels (explicit attention, no oneDNN); only the
    arithmetic order changes, not a rule."""
    c = traj["config"]
    model = tiny_ibot(c)
    load_init(model, traj)
    if official:
        for m in model.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = False
    with torch.backends.mkldnn.flags(enabled=not official):
        return _fit_trajectory(traj, model, tmp_path, task_kw, loop_kw, groups)


def _fit_trajectory(traj, model, tmp_path, task_kw, loop_kw, groups):
    """Fit as the CLI does: the iBOT preset's optimisation keys with the fixture's values,
    ``recipes.pretrain._training_parts`` (task, optimizer groups and betas, per-iteration
    schedule, per-parameter clipping) and the run context's loop settings; a wrong rule
    replaces one piece."""
    c = traj["config"]
    overrides = [
        f"optim.lr={c['lr']}",
        f"optim.min_lr={c['min_lr']}",
        f"optim.warmup_epochs={c['warmup_epochs']}",
        f"optim.weight_decay={c['weight_decay']}",
        f"optim.clip_grad={c['clip_grad']}",
        f"train.epochs={c['epochs']}",
        f"data.batch_size={c['batch']}",
        "train.device=cpu",
        "train.precision=fp32",
        "train.log_every=1",
        "train.save_every=100",
    ]
    cfg = load_config("ibot_vit_tiny_cifar", overrides, task="pretrain")
    ctx = RunContext(cfg, CPU, "fp32")
    assert ctx.lr() == c["lr"]
    loader = FixtureLoader(traj)
    task, make_optimizer, loop = _training_parts(ctx, model, loader)
    task.__class__, task.log = RecordingTask, []  # the CLI's task, recording each step
    for k, v in (task_kw or {}).items():
        setattr(task, k, v)
    if groups is None:
        optimizer = make_optimizer(model)
    else:
        optimizer = adamw(groups(model, c["weight_decay"]), ctx.lr(), cfg.optim.betas, CPU)
    loop = ctx.loop_config(ctx.lr(), **{**loop, **(loop_kw or {})})
    Trainer(task, model, optimizer, loader, CPU, loop, tmp_path).fit()
    return model, task


def trajectory_errors(traj, model, task) -> dict[str, float]:
    """Largest |ours - official| per quantity."""
    err = {"loss": 0.0, "schedules": 0.0}
    for rec, ref in zip(task.log, traj["steps"], strict=True):
        for ours, theirs in (
            ("loss", "loss"),
            ("cls_loss", "loss_cls"),
            ("patch_loss", "loss_patch"),
        ):
            err["loss"] = max(err["loss"], abs(rec[ours] - ref[theirs]))
        sched = [
            rec["lr"][0] - ref["lr"],
            rec["lr"][1] - ref["lr"],
            rec["wd"][0] - ref["weight_decay"],
            rec["wd"][1] - 0.0,
            rec["momentum"] - ref["momentum"],
            rec["temps"][0] - ref["teacher_temp"],
            rec["temps"][1] - ref["teacher_patch_temp"],
        ]
        err["schedules"] = max(err["schedules"], *map(abs, sched))
    sd = model.state_dict()
    e = traj["config"]["embed_dim"]
    for net in ("student", "teacher"):
        w = kb = 0.0
        for k, ref in traj[f"{net}_final"].items():
            d = (sd[f"{net}.{k}"] - ref).abs()
            if k.endswith("attn.qkv.bias"):
                kb = max(kb, d[e : 2 * e].max().item())
                d = torch.cat([d[:e], d[2 * e :]])
            w = max(w, d.max().item())
        err[net], err[f"{net}_key_bias"] = w, kb
    err["center"] = (model.center - traj["center_final"]).abs().max().item()
    err["center2"] = (model.center2 - traj["center2_final"]).abs().max().item()
    return err


@needs_fixtures
@pytest.mark.parametrize("kernels", ["official", "default"])
def test_official_trajectory_through_the_trainer(traj, tmp_path, kernels):
    model, task = run_trajectory(traj, tmp_path, official=kernels == "official")
    err = trajectory_errors(traj, model, task)
    print(kernels, "kernels, largest differences:", {k: f"{v:.2e}" for k, v in err.items()})
    assert [r["step"] for r in task.log] == list(range(6))
    assert err["schedules"] == 0.0  # lr, wd (group 0; group 1 stays 0), momentum, temps
    assert err["loss"] < (LOSS_ATOL if kernels == "official" else DEFAULT_KERNELS_LOSS_ATOL)
    assert err["student"] < WEIGHT_ATOL and err["teacher"] < WEIGHT_ATOL
    assert err["student_key_bias"] < KEY_BIAS_ATOL and err["teacher_key_bias"] < KEY_BIAS_ATOL
    assert err["center"] < WEIGHT_ATOL and err["center2"] < WEIGHT_ATOL
    # the run folder's checkpoint holds the teacher and the centres (exact resume)
    saved = torch.load(tmp_path / "checkpoint-last.pth", weights_only=False)["model"]
    assert torch.equal(saved["center2"], model.center2)
    assert torch.equal(
        saved["teacher.head.last_layer.weight_v"], model.teacher.head.last_layer.weight_v
    )


def _tokens_undecayed(model, wd):
    """timm's rule (tokens and position embeddings not decayed) instead of DINO's."""
    decay, rest = IBOT.param_groups(model, wd)
    keep = [p for p in decay["params"] if p.ndim != 3 and p.shape[0] != 1]
    moved = [p for p in decay["params"] if not any(p is q for q in keep)]
    return [dict(decay, params=keep), dict(rest, params=rest["params"] + moved)]


WRONG_RULES = {
    "mae_lr_warmup": dict(loop_kw={"schedule": "cosine"}),
    "last_layer_not_frozen": dict(task_kw={"freeze_last_layer": 0}),
    "global_norm_clipping": dict(task_kw={"clip_grad": None}, loop_kw={"clip_grad": 3.0}),
    "tokens_not_decayed": dict(groups=_tokens_undecayed),
    "no_local_crops": {},
}


@needs_fixtures
@pytest.mark.parametrize("wrong", list(WRONG_RULES))
def test_a_wrong_rule_shows_above_the_tolerance(traj, tmp_path, wrong):
    """The tolerances above separate the official rules from near misses."""
    if wrong == "no_local_crops":
        traj = dict(traj, steps=[dict(s, local_crops=[]) for s in traj["steps"]])
    model, task = run_trajectory(traj, tmp_path, **WRONG_RULES[wrong])
    err = trajectory_errors(traj, model, task)
    print(wrong, {k: f"{v:.2e}" for k, v in err.items()})
    assert err["loss"] > 10 * LOSS_ATOL or err["student"] > 10 * WEIGHT_ATOL


# ----------------------------------------------------------------------------- checkpoints


def probe_tokens(backbone: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return backbone.eval().forward_features(images)


def timm_vit(c: dict) -> torch.nn.Module:
    return timm.create_model(
        "vit_base_patch16_224",
        pretrained=False,
        img_size=c["img"],
        patch_size=c["patch"],
        embed_dim=c["embed_dim"],
        depth=c["depth"],
        num_heads=c["num_heads"],
        num_classes=0,
    )


@needs_fixtures
def test_released_teacher_file_loads_into_our_vit_and_timm(traj):
    c = traj["config"]
    sd = interop.backbone_state_dict(TEACHER)
    ref = traj["probe_teacher_tokens_final"]
    ours = create_encoder("ibot_vit", img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4)
    ours.load_state_dict(sd, strict=True)
    plain = timm_vit(c)
    plain.load_state_dict(sd, strict=True)
    for m in (ours, plain):
        d = (probe_tokens(m, traj["probe_images"]) - ref).abs().max().item()
        print(type(m).__module__, "probe tokens max diff", f"{d:.2e}")
        assert d < WEIGHT_ATOL
    with pytest.raises(Exception, match="no student"):
        interop.backbone_state_dict(TEACHER, which="student")


@needs_fixtures
def test_full_checkpoint_teacher_by_default_student_on_request(traj):
    c = traj["config"]
    ckpt = interop.load_official(FULL)
    teacher = interop.backbone_state_dict(ckpt)
    assert "masked_embed" not in teacher
    plain = timm_vit(c)
    plain.load_state_dict(teacher, strict=True)
    d = (probe_tokens(plain, traj["probe_images"]) - traj["probe_teacher_tokens_final"]).abs()
    assert d.max().item() < WEIGHT_ATOL
    student = interop.backbone_state_dict(FULL, which="student")
    for k, v in student.items():
        assert torch.equal(v, traj["student_final"]["backbone." + k])
    # the whole file -> our IBOT (strict), centres included, and back
    model = tiny_ibot(c)
    sd = interop.official_to_ibot(ckpt)
    model.load_state_dict(sd, strict=True)
    assert torch.equal(model.center, traj["center_final"])
    assert torch.equal(model.center2, traj["center2_final"])
    back = interop.ibot_to_official(model.state_dict(), epoch=3)
    assert back["student"].keys() == ckpt["student"].keys()
    assert back["teacher"].keys() == ckpt["teacher"].keys()
    # a mimkit IBOT state dict gives the same backbones
    assert interop.backbone_state_dict(model.state_dict()).keys() == teacher.keys()


@needs_fixtures
def test_initial_teacher_tokens(traj):
    c = traj["config"]
    model = tiny_ibot(c)
    load_init(model, traj)
    d = (
        probe_tokens(model.teacher.backbone, traj["probe_images"])
        - traj["probe_teacher_tokens_init"]
    )
    assert d.abs().max().item() < WEIGHT_ATOL


@needs_fixtures
def test_safe_globals_are_exactly_what_the_files_need():
    from torch.serialization import get_unsafe_globals_in_checkpoint

    assert get_unsafe_globals_in_checkpoint(TEACHER) == []
    torch.load(TEACHER, weights_only=True)  # needs nothing
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(FULL, weights_only=True)
    needed = [g for g in interop.IBOT_SAFE_GLOBALS if not isinstance(g, tuple)]
    for left_out in needed:  # each entry is needed (the tuple is the NumPy < 2 alias)
        rest = [g for g in interop.IBOT_SAFE_GLOBALS if g is not left_out]
        refused = pytest.raises(Exception, match="Weights only load failed")
        with torch.serialization.safe_globals(rest), refused:
            torch.load(FULL, weights_only=True)
    ckpt = interop.load_official(FULL)
    assert ckpt["epoch"] == 3 and ckpt["args"].out_dim == 128
    assert float(ckpt["optimizer"]["param_groups"][0]["lr"]) > 0


def test_numpy1_pickles_load_too(tmp_path):
    """Files saved under NumPy < 2 name the scalar ``numpy.core.multiarray.scalar``."""
    import io
    import zipfile

    import numpy as np

    buf = io.BytesIO()
    torch.save({"lr": np.float64(0.5)}, buf)
    src, path = zipfile.ZipFile(io.BytesIO(buf.getvalue())), tmp_path / "np1.pth"
    with zipfile.ZipFile(path, "w") as out:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("data.pkl"):
                data = data.replace(
                    b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar"
                )
            out.writestr(item, data)
    assert interop.load_official(path)["lr"] == 0.5


# ----------------------------------------------------------------------------- masking


def covered_by_2x2_blocks(m: torch.Tensor) -> torch.Tensor:
    """Cells lying in some fully masked 2x2 square."""
    full = torch.nn.functional.avg_pool2d(m[None, None].float(), 2, stride=1) == 1
    return torch.nn.functional.max_pool2d(full.float(), 2, stride=1, padding=1)[0, 0] > 0


def test_block_masks_are_rectangles_near_the_ratio():
    rng = random.Random(0)
    gaps, blocky = [], []
    for _ in range(200):
        r = rng.uniform(0.1, 0.5)
        m = block_mask(14, 14, r, rng)
        assert m.dtype == torch.bool and m.shape == (14, 14)
        frac = m.float().mean().item()
        assert 0 < frac <= r + 1e-9  # never past the target
        gaps.append(r - frac)
        # blocks, not scattered patches: rectangles have area >= (14 // 3) ** 2 = 16 and
        # aspect 0.3-3.3 (sides >= 2), except a last small one filling the remainder
        in_blocks = (covered_by_2x2_blocks(m) & m).sum() / m.sum()
        assert in_blocks >= 0.75
        blocky.append(in_blocks.item())
    assert sum(blocky) / len(blocky) > 0.95
    assert sum(gaps) / len(gaps) < 0.08  # blocks stop only when the next would overshoot
    assert not block_mask(8, 8, 0.0, rng).any()


def test_pred_ratio_draw_half_unmasked():
    rng = random.Random(0)
    draws = [draw_pred_ratio([0.0, 0.3], [0.0, 0.2], rng) for _ in range(2000)]
    zeros = sum(d == 0.0 for d in draws) / len(draws)
    assert 0.45 < zeros < 0.55
    assert all(0.1 <= d <= 0.5 for d in draws if d)
    assert draw_pred_ratio(0.3, 0.0, rng) == 0.3
    with pytest.raises(ValueError):
        draw_pred_ratio(0.1, 0.2, rng)


def test_multicrop_transform_and_collate():
    img = Image.fromarray((torch.rand(40, 48, 3) * 255).byte().numpy())
    t = MultiCropTransform(32, 16, local_crops=3, patch_size=4)
    with seeded(7):
        a = t(img)
    with seeded(7):
        b = t(img)
    assert [x.shape for x in a["global"]] == [(3, 32, 32)] * 2
    assert [x.shape for x in a["local"]] == [(3, 16, 16)] * 3
    assert [m.shape for m in a["masks"]] == [(8, 8)] * 2
    assert all(
        torch.equal(x, y) for x, y in zip(a["global"] + a["masks"], b["global"] + b["masks"])
    )
    batch = multicrop_collate([(a, 0, []), (b, 1, ["bad.jpg"])])
    assert batch["global"][0].shape == (2, 3, 32, 32) and batch["masks"][1].shape == (2, 8, 8)
    assert len(batch["local"]) == 3 and batch["bad"] == ["bad.jpg"]


@pytest.mark.parametrize("preset", ["ibot_vit_tiny_cifar", "ibot_vit_small_patch16"])
def test_global_crop_scale_follows_the_local_crop_count(preset):
    """Official default: global crops at scale (0.25, 1) with local crops, (0.14, 1) without
    (the presets leave it to this rule, so local_crops_number=0 changes it too)."""
    from mimkit.config import load_config
    from mimkit.recipes.pretrain import build_model

    scales = {}
    for n in (2, 0):
        cfg = load_config(preset, [f"model.args.local_crops_number={n}"], task="pretrain")
        with torch.device("meta"):
            model = build_model(cfg)
        scales[n] = MultiCropTransform(**model.multicrop_args()).first.transforms[0].scale
    assert scales == {2: (0.25, 1.0), 0: (0.14, 1.0)}


# ----------------------------------------------------------------------------- rules


def small_ibot(**kw) -> IBOT:
    torch.manual_seed(0)
    args = dict(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, out_dim=16)
    args |= dict(head_hidden_dim=24, head_bottleneck_dim=8, drop_path_rate=0.0)
    return create_model("ibot_vit", **{**args, **kw})


def small_batch(n=3, masked=True):
    g = torch.Generator().manual_seed(1)
    masks = [torch.rand(n, 4, 4, generator=g) < (0.4 if masked else 0.0) for _ in range(2)]
    return {
        "global": [torch.randn(n, 3, 16, 16, generator=g) for _ in range(2)],
        "local": [torch.randn(n, 3, 8, 8, generator=g) for _ in range(2)],
        "masks": masks,
    }


def test_teacher_gets_no_gradient_and_follows_the_ema():
    model = small_ibot()
    opt = torch.optim.SGD(model.param_groups(0.0), lr=0.1)
    out = model(small_batch())
    out["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())
    assert model.student.backbone.masked_embed.grad is not None
    before_t = {k: v.clone() for k, v in model.teacher.named_parameters()}
    opt.step()
    m = 0.9
    model.update_teacher(m)
    student = dict(model.student.named_parameters())
    for k, t in model.teacher.named_parameters():
        assert torch.allclose(t, m * before_t[k] + (1 - m) * student[k], atol=1e-7)
    assert "backbone.masked_embed" not in dict(model.teacher.named_parameters())


def test_separate_heads_train_their_own_last_layers():
    """shared_head=False (both networks): the patch tokens go through their own last layer
    ``last_layer2`` (patch_out_dim prototypes), the [CLS] token through ``last_layer``; each
    gets the gradient of its own loss only, and the EMA carries both."""
    model = small_ibot(shared_head=False, shared_head_teacher=False, patch_out_dim=12)
    head = model.student.head
    assert head.last_layer2 is not head.last_layer
    assert {"head.last_layer.weight_v", "head.last_layer2.weight_v"} <= set(
        model.student.state_dict()
    )
    assert model.center2.shape[-1] == 12 and model.center.shape[-1] == 16
    model(small_batch())["loss"].backward()
    assert head.last_layer.weight_v.grad.abs().sum() > 0
    assert head.last_layer2.weight_v.grad.abs().sum() > 0
    for cls_only, patch_only in ((1.0, 0.0), (0.0, 1.0)):  # lambda1, lambda2
        m = small_ibot(
            shared_head=False,
            shared_head_teacher=False,
            patch_out_dim=12,
            lambda1=cls_only,
            lambda2=patch_only,
        )
        m(small_batch())["loss"].backward()
        g1, g2 = m.student.head.last_layer.weight_v.grad, m.student.head.last_layer2.weight_v.grad
        used, unused = (g1, g2) if cls_only else (g2, g1)
        assert used.abs().sum() > 0 and (unused is None or not unused.any())
    before = model.teacher.head.last_layer2.weight_v.clone()
    with torch.no_grad():
        head.last_layer2.weight_v.add_(1.0)
    model.update_teacher(0.5)
    assert torch.allclose(model.teacher.head.last_layer2.weight_v, before + 0.5)


def test_patch_loss_ignores_unmasked_positions():
    torch.manual_seed(0)
    n, length, k = 2, 6, 5
    t_cls, s_cls = torch.randn(2 * n, k), torch.randn(4 * n, k)
    t_patch, s_patch = torch.randn(2 * n, length, k), torch.randn(2 * n, length, k)
    masks = torch.rand(2 * n, length) < 0.5
    masks[0] = False  # an image with nothing masked counts 0 (sum / max(count, 1))
    args = (torch.zeros(1, k), torch.zeros(1, 1, k), 2, 0.1, 0.04, 0.07)
    _, patch = ibot_loss(s_cls, s_patch, t_cls, t_patch, masks, *args)
    s2 = s_patch.clone()
    s2[~masks] = torch.randn(int((~masks).sum()), k)
    _, patch2 = ibot_loss(s_cls, s2, t_cls, t_patch, masks, *args)
    assert torch.equal(patch, patch2)
    s2[masks] += 1.0
    _, patch3 = ibot_loss(s_cls, s2, t_cls, t_patch, masks, *args)
    assert not torch.equal(patch, patch3)


def test_centres_are_buffers_updated_after_the_loss():
    model = small_ibot()
    assert {"center", "center2"} <= set(model.state_dict())
    batch = small_batch()
    model.eval()
    model(batch)
    assert not model.center.any()  # evaluation leaves them alone
    model.train()
    with torch.no_grad():
        t_cls, t_patch = model.teacher(torch.cat(batch["global"]))
    model(batch)
    assert torch.allclose(model.center, 0.1 * t_cls.mean(0, keepdim=True), atol=1e-7)
    assert torch.allclose(model.center2, 0.1 * t_patch.mean(1).mean(0).view(1, 1, -1), atol=1e-7)


def test_per_parameter_clipping():
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.tensor([3.0, 4.0, 0.0]), torch.tensor([0.1, 0.0])
    clip_grad_per_param_([a, b], 1.0)
    assert torch.allclose(a.grad.norm(), torch.tensor(1.0), atol=1e-6)
    assert torch.equal(b.grad, torch.tensor([0.1, 0.0]))  # below the bound: untouched


def test_variants_and_encoder_contract():
    for name in ("ibot_vit_small_patch16", "ibot_vit_base_patch16", "ibot_vit_tiny_cifar"):
        with torch.device("meta"):
            m = create_model(name)
        cfg = m.arch_config()
        assert cfg["embed_dim"] in (192, 384, 768) and "out_dim" in cfg
        assert m.student.head.last_layer.weight_g.requires_grad == (not cfg["norm_last_layer"])
    enc = create_encoder("ibot_vit_tiny_cifar")
    assert type(enc).__name__ == "VisionTransformer" and enc.patch_embed.img_size == (32, 32)
    model = small_ibot()
    rebuilt = create_model("ibot_vit", **model.arch_config())
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    bb = model.student.backbone
    x = torch.randn(2, 3, 16, 16)
    assert bb.forward_head(bb.forward_features(x)).shape == (2, 32)
    assert bb(torch.randn(2, 3, 8, 8)).shape == (2, 1 + 4, 32)  # other sizes: interpolated
    assert "masked_embed" in bb.no_weight_decay()


def test_bf16_autocast_step_keeps_the_loss_math_in_fp32():
    model = small_ibot()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(small_batch())
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    assert model.center.dtype == torch.float32
    out["loss"].backward()
    assert model.student.backbone.blocks[0].attn.qkv.weight.grad is not None


def test_images_to_trainer_end_to_end(image_folder, tmp_path):
    """Folder -> ImageDataset(MultiCropTransform) -> multicrop_collate -> Trainer(IBOTTask)."""
    from mimkit.data.datasets import ImageDataset
    from mimkit.data.loader import EpochSampler, build_loader
    from mimkit.data.sources import open_source

    model = small_ibot(img_size=32, local_crops_number=2, local_img_size=16)
    source = open_source(str(image_folder))
    ds = ImageDataset(source, MultiCropTransform(**model.multicrop_args()))
    sampler = EpochSampler(len(ds), seed=0)
    loader = build_loader(ds, 16, sampler, 0, True, False, multicrop_collate)
    task = IBOTTask.from_model(
        model, epochs=1, steps_per_epoch=len(loader), weight_decay=0.04, clip_grad=3.0
    )
    optimizer = adamw(model.param_groups(0.04), 1e-3, (0.9, 0.999), torch.device("cpu"))
    loop = LoopConfig(epochs=1, base_lr=1e-3, schedule="cosine_iter", log_every=1, max_steps=2)
    teacher_before = model.teacher.backbone.cls_token.clone()
    stats = Trainer(task, model, optimizer, loader, torch.device("cpu"), loop, tmp_path).fit()
    assert stats["loss"] > 0 and stats["skipped_images"] == 0
    assert not torch.equal(model.teacher.backbone.cls_token, teacher_before)
    assert model.center.abs().sum() > 0
