"""An MAE training step equals the official facebookresearch/mae step.

``mae_official_trajectory.pt`` holds 6 optimizer steps (2 epochs x 3) of a tiny MAE
pretraining and of a tiny fine-tuning, recorded from the official scripts on CPU in fp32
(``main_pretrain.py`` / ``engine_pretrain.py`` / ``util/lr_sched.py`` and
``main_finetune.py`` / ``engine_finetune.py`` / ``util/lr_decay.py``): the initial and
final weights, the images, the masking noise, the labels and every step's lr and loss.
Both are replayed here through the code the CLI runs: the config resolved from
``key=value`` overrides, the CLI's model builder, optimizer groups, lr rule, loop config,
task and criterion, and the one ``Trainer``.
"""

import json

import pytest
import torch

from mimkit import config as C
from mimkit import create_model
from mimkit.engine import precision as P
from mimkit.engine.loop import Trainer
from mimkit.engine.optim import adamw, weight_decay_groups
from mimkit.engine.schedule import effective_lr
from mimkit.eval.classify import ClassifyTask, init_head, layer_decay_groups
from mimkit.recipes.classify import mixup_and_loss
from mimkit.recipes.pretrain import PretrainTask, build_model
from mimkit.recipes.run import RunContext

from .conftest import SHARED_DIR

TRAJ = SHARED_DIR / "interop" / "mae_official_trajectory.pt"
pytestmark = pytest.mark.skipif(not TRAJ.is_file(), reason="official MAE trajectory absent")

LOSS_ATOL = 1e-5
WEIGHT_ATOL = 1e-5
# The key third of each ``attn.qkv.bias`` gets a gradient that is zero in exact arithmetic
# (softmax ignores a per-query constant); AdamW (eps 1e-8) turns its ~1e-10 rounding noise
# into steps of up to ~1e-4, in the official run as here (the official final key biases
# moved 7e-4 at most). Any other attention arithmetic (fused or not, scale before or after
# q @ k) gives other noise, so these entries are bounded, not matched; every other entry
# is matched to WEIGHT_ATOL. The loss does not depend on them.
KEY_BIAS_ATOL = 2e-3
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def traj():
    return torch.load(TRAJ, weights_only=False)


class _Sampler:
    """What the Trainer asks of a sampler: a length and ``set_epoch``."""

    def __init__(self, n: int):
        self.n, self.epoch = n, 0

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class _ReplayLoader:
    """The fixture's batches: epoch e yields batches ``e * steps .. (e + 1) * steps - 1``
    (the interface of ``bench.SyntheticLoader``: batch_size, sampler, len, iter)."""

    def __init__(self, batches: list[dict], steps_per_epoch: int):
        self.batches, self.steps = batches, steps_per_epoch
        self.batch_size = len(batches[0]["image"])
        self.sampler = _Sampler(self.batch_size * steps_per_epoch)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        start = self.sampler.epoch * self.steps
        for batch in self.batches[start : start + self.steps]:
            yield dict(batch)


def _overrides(o: dict) -> list[str]:
    """The fixture's optimisation settings as the CLI's ``key=value`` overrides."""
    return [
        f"optim.lr={o['lr']}",
        f"optim.blr={o['blr']}",
        f"optim.weight_decay={o['weight_decay']}",
        f"optim.betas=[{o['betas'][0]},{o['betas'][1]}]",
        f"optim.warmup_epochs={o['warmup_epochs']}",
        f"optim.min_lr={o['min_lr']}",
        f"data.batch_size={o['batch_size']}",
        f"train.epochs={o['epochs']}",
        "train.device=cpu",
        "train.precision=fp32",
        "train.log_every=1",
        "train.tensorboard=false",
    ]


def _lr(cfg: C.Config) -> float:
    """The CLI's lr rule on one process; the fixture's blr gives its absolute lr too."""
    eff_batch = cfg.data.batch_size * cfg.optim.accum_iter
    assert effective_lr(cfg.optim.blr, None, eff_batch) == pytest.approx(cfg.optim.lr)
    return effective_lr(cfg.optim.blr, cfg.optim.lr, eff_batch)


def _fit(task, model, groups, cfg, loader, out):
    """Train as the CLI does; returns the per-step log rows (log_every=1: one per step)
    and the optimizer."""
    lr = _lr(cfg)
    optimizer = adamw(groups, lr, cfg.optim.betas, CPU)
    precision = P.resolve(str(cfg.train.precision), CPU)
    Trainer(
        task, model, optimizer, loader, CPU, RunContext(cfg, CPU, precision).loop_config(lr), out
    ).fit()
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "train"], optimizer


def _names(model, groups) -> dict[str, tuple[float, float]]:
    """parameter name -> (weight decay, lr scale) of its group."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {
        by_id[id(p)]: (g["weight_decay"], g.get("lr_scale", 1.0))
        for g in groups
        for p in g["params"]
    }


def _max_diff(model, expected: dict) -> tuple[float, str, float]:
    """Largest |ours - official| outside the key biases (and where), and inside them."""
    state = model.state_dict()
    diffs, key_bias = {}, 0.0
    for k, v in expected.items():
        d = (state[k] - v).abs()
        if k.endswith("attn.qkv.bias"):
            dim = len(d) // 3
            key_bias = max(key_bias, d[dim : 2 * dim].max().item())
            d[dim : 2 * dim] = 0
        diffs[k] = d.max().item()
    worst = max(diffs, key=diffs.get)
    return diffs[worst], worst, key_bias


def _check_weights(model, expected: dict, label: str, lr_diff: float, loss_diff: float):
    weight_diff, where, key_bias = _max_diff(model, expected)
    print(
        f"{label}: lr {lr_diff:.3g}, loss {loss_diff:.3g}, weights {weight_diff:.3g} "
        f"({where}), key biases {key_bias:.3g}"
    )
    assert weight_diff < WEIGHT_ATOL, where
    assert key_bias < KEY_BIAS_ATOL


def _check_steps(rows: list[dict], steps: list[dict]) -> tuple[float, float]:
    assert [r["step"] for r in rows] == list(range(1, len(steps) + 1))
    lr_diff = max(abs(r["lr"] - s["lr"]) for r, s in zip(rows, steps))
    loss_diff = max(abs(r["loss"] - s["loss"]) for r, s in zip(rows, steps))
    assert [r["lr"] for r in rows] == [s["lr"] for s in steps]  # the same arithmetic
    assert loss_diff < LOSS_ATOL, [(r["loss"], s["loss"]) for r, s in zip(rows, steps)]
    return lr_diff, loss_diff


# ---------------------------------------------------------------------------- pretraining


def _pretrain_config(p: dict) -> C.Config:
    args = dict(p["model_args"])
    o = p["optim"]
    overrides = [
        "model.name=mae_vit",
        f"model.norm_pix_loss={args.pop('norm_pix_loss')}",
        f"model.mask_ratio={o['mask_ratio']}",
        f"data.img_size={args.pop('img_size')}",
        *(f"model.args.{k}={v}" for k, v in args.items()),
    ]
    return C.load_config(None, overrides + _overrides(o), task="pretrain")


def test_pretraining_weight_decay_is_the_official_rule(traj):
    """timm's ``add_weight_decay`` without a skip list (official ``main_pretrain.py``):
    only 1-D tensors and biases are exempt; the tokens are decayed; the frozen sin-cos
    tables are not optimised."""
    p = traj["pretrain"]
    cfg = _pretrain_config(p)
    model = build_model(cfg)
    got = _names(model, weight_decay_groups(model, cfg.optim.weight_decay))
    expected = {
        n: (0.0 if t.ndim <= 1 or n.endswith(".bias") else cfg.optim.weight_decay, 1.0)
        for n, t in model.named_parameters()
        if n not in ("pos_embed", "decoder_pos_embed")
    }
    assert got == expected
    assert got["cls_token"][0] == got["mask_token"][0] == cfg.optim.weight_decay > 0


def test_pretraining_reproduces_the_official_trajectory(traj, tmp_path):
    p = traj["pretrain"]
    cfg = _pretrain_config(p)
    model = build_model(cfg)
    model.load_state_dict(p["init"])
    groups = weight_decay_groups(model, cfg.optim.weight_decay)
    batches = [{"image": x, "noise": n} for x, n in zip(p["imgs"], p["noise"])]
    loader = _ReplayLoader(batches, p["optim"]["steps_per_epoch"])
    rows, _ = _fit(PretrainTask(), model, groups, cfg, loader, tmp_path)
    lr_diff, loss_diff = _check_steps(rows, p["steps"])
    _check_weights(model, p["final"], "pretrain", lr_diff, loss_diff)


# ---------------------------------------------------------------------------- fine-tuning


def _finetune_config(f: dict) -> C.Config:
    o = f["optim"]
    overrides = [
        "model.name=vit",
        f"model.drop_path={f['model_args']['drop_path']}",
        f"finetune.layer_decay={o['layer_decay']}",
        f"finetune.smoothing={o['label_smoothing']}",
        f"finetune.mixup={o['mixup']}",
        f"finetune.cutmix={o['cutmix']}",
        "finetune.global_pool=avg",
    ]
    return C.load_config(None, overrides + _overrides(o), task="finetune")


def _finetune_model(f: dict, cfg: C.Config):
    a = f["model_args"]
    arch = {k: a[k] for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads")}
    return create_model(
        cfg.model.name,
        **arch,
        mlp_ratio=a["mlp_ratio"],
        num_classes=a["num_classes"],
        global_pool=cfg.finetune.global_pool,
        drop_path_rate=cfg.model.drop_path,
    )


def test_finetune_groups_are_the_official_layer_decay_groups(traj):
    """Official ``util/lr_decay.param_groups_lrd`` with ``no_weight_decay_list =
    model.no_weight_decay()``: layer 0 = cls_token, pos_embed, patch_embed; block i ->
    i + 1; everything else (fc_norm, head) -> depth + 1; scale decay^(depth + 1 - layer);
    no decay for 1-D tensors, ``pos_embed`` and ``cls_token``. Groups in the order their
    first parameter appears."""
    f = traj["finetune"]
    cfg = _finetune_config(f)
    model = _finetune_model(f, cfg)
    depth, decay, wd = len(model.blocks), cfg.finetune.layer_decay, cfg.optim.weight_decay
    assert model.no_weight_decay() >= {"pos_embed", "cls_token"}

    def layer(n: str) -> int:
        if n in ("cls_token", "pos_embed") or n.startswith("patch_embed"):
            return 0
        return int(n.split(".")[1]) + 1 if n.startswith("blocks.") else depth + 1

    expected: dict[tuple, list[str]] = {}
    for n, t in model.named_parameters():
        skip = t.ndim == 1 or n in ("pos_embed", "cls_token", "dist_token")
        key = (layer(n), 0.0 if skip else wd)
        expected.setdefault(key, []).append(n)
    groups = layer_decay_groups(model, wd, decay)
    by_id = {id(p): n for n, p in model.named_parameters()}
    got = [(g["lr_scale"], g["weight_decay"], [by_id[id(p)] for p in g["params"]]) for g in groups]
    assert got == [(decay ** (depth + 1 - k[0]), k[1], ns) for k, ns in expected.items()]
    scales = sorted({g["lr_scale"] for g in groups})
    assert scales == f["steps"][0]["lr_scales"] == [0.421875, 0.5625, 0.75, 1.0]


def test_finetune_head_init_follows_the_official_order(traj):
    """Official ``main_finetune.py``: build the model, load the encoder (the head is
    missing), then ``trunc_normal_(head.weight, std=2e-5)``; the bias keeps the layer's
    zero init. The CLI does the same (``init_head`` after the checkpoint load)."""
    f = traj["finetune"]
    cfg = _finetune_config(f)
    model = _finetune_model(f, cfg)
    encoder = {k: v for k, v in f["init"].items() if not k.startswith("head.")}
    missing = model.load_state_dict(encoder, strict=False).missing_keys
    assert sorted(missing) == ["head.bias", "head.weight"]
    init_head(model, cfg.finetune.head_init_std)
    for head in (model.state_dict(), f["init"]):
        assert torch.count_nonzero(head["head.bias"]) == 0
        assert 1e-5 < head["head.weight"].std().item() < 3e-5
    for k, v in encoder.items():  # the head init touches nothing else
        assert torch.equal(model.state_dict()[k], v), k


def test_finetune_reproduces_the_official_trajectory(traj, tmp_path):
    f = traj["finetune"]
    cfg = _finetune_config(f)
    model = _finetune_model(f, cfg)
    model.load_state_dict(f["init"])
    groups = layer_decay_groups(model, cfg.optim.weight_decay, cfg.finetune.layer_decay)
    num_classes = f["model_args"]["num_classes"]
    mixup, criterion = mixup_and_loss(cfg.finetune, num_classes, cfg.data.batch_size)
    assert mixup is None
    batches = [{"image": x, "label": y} for x, y in zip(f["imgs"], f["labels"])]
    loader = _ReplayLoader(batches, f["optim"]["steps_per_epoch"])
    val = [dict(batches[0])]  # evaluation after each epoch reads, never trains
    classes = [str(c) for c in range(num_classes)]
    task = ClassifyTask(criterion, val, classes, CPU, "fp32", mixup=mixup)
    rows, optimizer = _fit(task, model, groups, cfg, loader, tmp_path)
    lr_diff, loss_diff = _check_steps(rows, f["steps"])
    last = f["steps"][-1]  # each group ran at the base lr times its scale (lr_sched.py)
    assert all(g["lr"] == last["lr"] * g["lr_scale"] for g in optimizer.param_groups)
    _check_weights(model, f["final"], "finetune", lr_diff, loss_diff)
