"""Probes that fit MIM features (attentive probe, per-block sweep, eval.block), the floors
beside every frozen-feature result, the monitor's held-out images, continued pretraining."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from torch import nn

import mimkit
from mimkit.cli import main
from mimkit.eval.attentive import AttentiveHead
from mimkit.interop.checkpoint import init_pretraining, read_checkpoint

from .conftest import SHARED_DIR, TINY_MAE

SHARED = SHARED_DIR / "interop"


def _token_sets(n: int, tokens: int = 64, dim: int = 16, seed: int = 0):
    """The class (0/1) is the sign of one token's value on dim 1; that token is marked
    by dim 0 = 4 and sits anywhere among ``tokens`` noise tokens (dim 1 ~ N(0, 3))."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, tokens, dim, generator=g)
    x[..., 1] *= 3.0
    y = torch.randint(0, 2, (n,), generator=g)
    where = torch.randint(0, tokens, (n,), generator=g)
    x[torch.arange(n), where, 0] = 4.0
    x[torch.arange(n), where, 1] = (2 * y - 1).float() * 2.0
    return x, y


def _main(*args) -> int:
    return main([str(a) for a in args])


def _fit(model: nn.Module, x, y, epochs=60) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(128):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


def test_attentive_probe_finds_the_one_token_mean_pooling_loses():
    torch.manual_seed(0)
    x, y = _token_sets(2048)
    xv, yv = _token_sets(1024, seed=1)
    attn = _fit(AttentiveHead(16, 2, queries=1, heads=2), x, y)
    linear = _fit(nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 2)), x.mean(1), y)
    with torch.no_grad():
        acc_attn = (attn(xv).argmax(1) == yv).float().mean().item()
        acc_mean = (linear(xv.mean(1)).argmax(1) == yv).float().mean().item()
    assert acc_attn > 0.95, acc_attn
    assert acc_mean < 0.7, acc_mean


@pytest.mark.slow
def test_knn_and_attentive_probe_write_their_floors(tmp_path, tiny_mae_ckpt, labeled_root):
    out = tmp_path / "knn"
    assert _main("knn", "--checkpoint", tiny_mae_ckpt, "--data", labeled_root, "--out", out,
                 "eval.cache_dir=none", "data.num_workers=0") == 0  # fmt: skip
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["baselines"]) == {"raw_pixels", "random_init"}
    assert "20" in m["baselines"]["raw_pixels"]["per_k"]
    out = tmp_path / "attn"
    r = mimkit.attnprobe(str(tiny_mae_ckpt), data=str(labeled_root), out=str(out), epochs=2,
                         **{"eval.cache_dir": "none", "data.num_workers": 0})  # fmt: skip
    assert set(r["baselines"]) == {"raw_pixels", "random_init"}
    assert (out / "baselines" / "raw_pixels" / "metrics.json").is_file()
    assert 0 <= r["top1"] <= 100


def test_eval_block_reads_another_block(tmp_path, labeled_root):
    ckpt = tmp_path / "mae"
    assert _main("pretrain", "--data", labeled_root / "train", "--out", ckpt, "--epochs", "1",
                 "--batch-size", "16", *TINY_MAE, "model.args.depth=2") == 0  # fmt: skip
    keys = {"eval.cache_dir": "none", "eval.baselines": False, "data.num_workers": 0}
    path, data = str(ckpt / "checkpoint-last.pth"), str(labeled_root)
    last = mimkit.knn(path, data=data, out=str(tmp_path / "a"), **keys)
    first = mimkit.knn(path, data=data, out=str(tmp_path / "b"), **keys, **{"eval.block": 0})
    assert "baselines" not in last.metrics
    assert last["per_k"] != first["per_k"] or last["top5"] != first["top5"]


def test_block_sweep_chooses_on_training_images(tmp_path, labeled_root):
    ckpt = tmp_path / "mae"
    assert _main("pretrain", "--data", labeled_root / "train", "--out", ckpt, "--epochs", "1",
                 "--batch-size", "16", *TINY_MAE, "model.args.depth=2") == 0  # fmt: skip
    r = mimkit.blocks(str(ckpt / "checkpoint-last.pth"), data=str(labeled_root),
                      out=str(tmp_path / "sweep"),
                      **{"eval.cache_dir": "none", "blocks.linear_epochs": 2})  # fmt: skip
    assert len(r["rows"]) == 2 * 3 and {x["kind"] for x in r["rows"]} == {"cls", "avg", "cat"}
    assert "training images held out" in r["chosen_on"]
    assert (tmp_path / "sweep" / "blocks.png").is_file()


def test_monitor_holds_images_out_of_the_training_loader(tmp_path, image_folder):
    from mimkit.data.pipelines import open_pretrain_data
    from mimkit.recipes import load_config
    from mimkit.recipes.pretrain import _monitor, build_model, pretrain_loader
    from mimkit.recipes.run import RunContext

    cfg = load_config("mae_vit_tiny_cifar", [*TINY_MAE, f"data.path={image_folder}",
                      "eval.monitor=true", "eval.monitor_holdout=0.25", "data.batch_size=8",
                      "eval.cache_dir=none"], task="pretrain")  # fmt: skip
    ctx = RunContext(cfg, torch.device("cpu"), "fp32")
    data = open_pretrain_data("files", str(image_folder), None)
    model = build_model(cfg)
    monitor = _monitor(cfg, ctx, data, model)
    loader = pretrain_loader(cfg, data, torch.device("cpu"), model)
    trained = set(loader.dataset.source.paths)
    held = set(monitor.queries.paths)
    assert len(held) == 16 and len(trained) == 48 and not trained & held
    assert set(monitor.floors) == {"raw_pixels", "random_init"}
    out = monitor(model, 0)
    assert {"knn_top1", "knn_top1_raw_pixels", "knn_top1_random_init"} <= set(out)


# ---------------------------------------------------------------------------- continued


def _mae_tiny():
    ref = torch.load(SHARED / "mae_reference_tiny.pt", weights_only=False)
    return ref, mimkit.create_model("mae_vit", **ref["config"])


def test_init_from_an_official_mae_file_loads_it_whole(tmp_path):
    ref, model = _mae_tiny()
    path = tmp_path / "mae_visualize.pth"
    torch.save({"model": ref["state_dict"]}, path)
    report = init_pretraining(model, path)
    assert not report.missing
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in ref["state_dict"].items())


def test_init_from_an_encoder_only_file_keeps_a_fresh_decoder(tmp_path):
    ref, model = _mae_tiny()
    enc = {k: v for k, v in ref["state_dict"].items() if not k.startswith(("decoder_", "mask"))}
    path = tmp_path / "mae_pretrain.pth"
    torch.save({"model": enc}, path)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_pretraining(model, path)
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in enc.items())
    assert torch.equal(sd["decoder_embed.weight"], fresh["decoder_embed.weight"])
    assert "decoder_embed.weight" in report.missing


def _ibot_tiny():
    t = torch.load(SHARED / "ibot_official_trajectory.pt", weights_only=True)["config"]
    return mimkit.create_model(
        "ibot_vit", img_size=t["img"], patch_size=t["patch"], embed_dim=t["embed_dim"],
        depth=t["depth"], num_heads=t["num_heads"], out_dim=t["out_dim"],
        head_hidden_dim=t["head_hidden"], head_bottleneck_dim=t["head_bottleneck"],
        norm_last_layer=False,
    )  # fmt: skip


def test_init_from_official_ibot_files(tmp_path):
    model = _ibot_tiny()
    report = init_pretraining(model, SHARED / "ibot_official_checkpoint_tiny.pth")
    assert not report.missing
    full = read_checkpoint(SHARED / "ibot_official_checkpoint_tiny.pth").state_dict
    assert all(torch.equal(model.state_dict()[k], v) for k, v in full.items())
    model = _ibot_tiny()
    init_pretraining(model, SHARED / "ibot_official_checkpoint_teacher_tiny.pth")
    teacher = read_checkpoint(SHARED / "ibot_official_checkpoint_teacher_tiny.pth").state_dict
    sd = model.state_dict()
    for k, v in teacher.items():  # the released backbone starts both networks
        assert torch.equal(sd[f"student.backbone.{k}"], v)
        assert torch.equal(sd[f"teacher.backbone.{k}"], v)


def test_init_from_an_official_simmim_file_and_from_a_run(tmp_path, image_folder):
    model = mimkit.create_model(
        "simmim_vit", img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2,
        mask_patch_size=8,
    )  # fmt: skip
    report = init_pretraining(model, SHARED / "simmim_official_checkpoint_tiny.pth")
    assert not report.missing
    # and a pretraining run started from it, through the CLI (a fresh optimizer)
    out = tmp_path / "cont"
    args = ["pretrain", "--config", "simmim_vit_tiny_cifar", "--data", image_folder,
            "--out", out, "--epochs", "1", "--batch-size", "16", "--init",
            SHARED / "simmim_official_checkpoint_tiny.pth", "model.args.embed_dim=64",
            "model.args.depth=2", "model.args.num_heads=2", "data.num_workers=0",
            "train.tensorboard=false", "train.max_steps=1"]  # fmt: skip
    assert main([str(a) for a in args]) == 0
    assert (out / "checkpoint-last.pth").is_file()


def test_floors_are_cached_by_protocol_and_data_content(tmp_path, tiny_mae_ckpt, labeled_root):
    """A second evaluation on the same data and protocol reads its floors from the cache
    (no baselines/ runs); another protocol setting or an edited image runs them again."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(labeled_root, data)
    keys = {"eval.cache_dir": str(tmp_path / "cache"), "data.num_workers": 0}

    def knn(name, **extra):
        return mimkit.knn(str(tiny_mae_ckpt), data=str(data), out=str(tmp_path / name),
                          **keys, **extra)  # fmt: skip

    first = knn("first")
    assert (tmp_path / "first" / "baselines" / "raw_pixels" / "metrics.json").is_file()
    second = knn("second")
    assert not (tmp_path / "second" / "baselines").exists()  # read, not run
    assert second["baselines"] == first["baselines"]
    knn("other_t", **{"eval.knn_temperature": 0.5})  # another protocol: its own floors
    assert (tmp_path / "other_t" / "baselines" / "raw_pixels").is_dir()
    val = sorted((data / "val" / "cat").iterdir())[0]
    Image.new("RGB", (32, 32), (0, 0, 0)).save(val, format="JPEG")  # edited data
    knn("edited")
    assert (tmp_path / "edited" / "baselines" / "random_init").is_dir()
