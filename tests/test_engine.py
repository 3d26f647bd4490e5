import math

import pytest
import torch
from torch import nn

import mimkit
from mimkit.cli import main
from mimkit.data import EpochSampler, build_loader, collate
from mimkit.engine.checkpoint import atomic_save
from mimkit.engine.loop import LoopConfig, Trainer
from mimkit.engine.optim import weight_decay_groups
from mimkit.engine.schedule import effective_lr, warmup_cosine
from mimkit.errors import NonFiniteLossError

from .conftest import TINY_MAE


def test_warmup_then_half_cosine():
    f = lambda e: warmup_cosine(e, 1.0, 0.1, warmup=2, epochs=10)
    assert f(0) == 0 and f(1) == 0.5 and f(2) == 1.0
    assert f(6) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert f(10) == pytest.approx(0.1)
    assert effective_lr(1.5e-4, None, 4096) == pytest.approx(2.4e-3)
    assert effective_lr(1.5e-4, 1e-3, 4096) == 1e-3


def test_no_weight_decay_for_norms_and_biases_only():
    """MAE pretraining as the official ``main_pretrain.py``: the tokens are decayed."""
    model = mimkit.create_model("mae_vit_tiny_cifar", depth=1, decoder_depth=1)
    groups = weight_decay_groups(model, 0.05)
    decay = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {n: id(p) in decay for n, p in model.named_parameters() if p.requires_grad}
    assert names["blocks.0.attn.qkv.weight"] and names["decoder_pred.weight"]
    assert names["patch_embed.proj.weight"]
    assert names["cls_token"] and names["mask_token"]
    for n in ("blocks.0.norm1.weight", "blocks.0.attn.qkv.bias"):
        assert not names[n], n
    assert "pos_embed" not in names  # frozen sin-cos tables are not optimised at all
    optimised = {id(p) for g in groups for p in g["params"]}
    assert id(model.pos_embed) not in optimised


class _Toy(torch.utils.data.Dataset):
    def __init__(self, n=32):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 4, 4, generator=g)
        self.y = torch.randn(n, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, item):
        i, _ = item
        return self.x[i], i, []


class _Regression:
    def __init__(self, y, nan_from_epoch=None):
        self.y, self.nan_from_epoch, self.epoch = y, nan_from_epoch, 0

    def training_step(self, model, batch):
        pred = model(batch["image"].flatten(1)).squeeze(1)
        loss = (pred - self.y[batch["label"]]).pow(2).mean()
        if self.nan_from_epoch is not None and model.training and self._epoch(model):
            loss = loss * float("nan")
        return {"loss": loss}

    def _epoch(self, model):
        return model.calls_epoch >= self.nan_from_epoch


def _toy_trainer(tmp_path, batch, accum, epochs=2, task=None):
    torch.manual_seed(0)
    data = _Toy()
    model = nn.Linear(48, 1)
    loader = build_loader(data, batch, EpochSampler(len(data), seed=1), 0, True, False, collate)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    loop = LoopConfig(epochs=epochs, base_lr=0.1, warmup_epochs=0.5, accum_iter=accum, log_every=1)
    return Trainer(
        task or _Regression(data.y), model, opt, loader, torch.device("cpu"), loop, tmp_path
    )


def test_gradient_accumulation_equals_larger_batch(tmp_path):
    a = _toy_trainer(tmp_path / "a", batch=8, accum=1)
    a.fit()
    b = _toy_trainer(tmp_path / "b", batch=4, accum=2)
    b.fit()
    assert a.state.step == b.state.step == 8
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    data_y = _Toy().y

    class NanInSecondEpoch(_Regression):
        def training_step(self, model, batch):
            out = super().training_step(model, batch)
            if trainer.state.epoch >= 1:
                out["loss"] = out["loss"] * float("nan")
            return out

    trainer = _toy_trainer(tmp_path, batch=8, accum=1, epochs=3, task=NanInSecondEpoch(data_y))
    orig_fit_epoch = trainer.train_one_epoch

    def tracked(epoch):
        trainer.state.epoch = epoch
        return orig_fit_epoch(epoch)

    trainer.train_one_epoch = tracked
    with pytest.raises(NonFiniteLossError, match="nothing was saved"):
        trainer.fit()
    saved = torch.load(tmp_path / "checkpoint-last.pth", weights_only=True)
    assert saved["epoch"] == 0 and all(math.isfinite(v.sum()) for v in saved["model"].values())


def test_atomic_save_never_leaves_half_a_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint-last.pth"
    atomic_save({"v": torch.ones(3)}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        atomic_save({"v": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path)["v"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-last.pth"]


def _pretrain(data, out, *extra):
    args = [
        "pretrain",
        "--data",
        str(data),
        "--out",
        str(out),
        "--batch-size",
        "16",
        *TINY_MAE,
        "optim.warmup_epochs=1",
        *extra,
    ]
    assert main(args) == 0


@pytest.mark.slow
def test_resume_is_exact(tmp_path, image_folder):
    """2 epochs straight == 1 epoch, stop, resume, 1 epoch (also with 2 workers instead of 0)."""
    _pretrain(image_folder, tmp_path / "a", "--epochs", "2")
    _pretrain(
        image_folder, tmp_path / "b", "--epochs", "2", "train.max_steps=4", "data.num_workers=2"
    )
    first = torch.load(tmp_path / "b" / "checkpoint-last.pth", weights_only=True)
    assert first["epoch"] == 0 and first["step"] == 4
    assert main(["pretrain", "--resume", str(tmp_path / "b"), "train.max_steps=null"]) == 0
    a = torch.load(tmp_path / "a" / "checkpoint-last.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint-last.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] == 1 and a["step"] == b["step"] == 8
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["optimizer"]["state"][0]["exp_avg"].equal(b["optimizer"]["state"][0]["exp_avg"])
