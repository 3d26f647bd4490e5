"""LoMaR: window sampling and masking, iRPE relative positions, the model's loss, and a
LoMaR checkpoint going through pretrain -> visualize -> finetune on real images."""

import json

import pytest
import torch

import mimkit
from mimkit import masking as M
from mimkit.cli import main
from mimkit.engine.optim import weight_decay_groups
from mimkit.interop.checkpoint import Checkpoint, model_from_checkpoint
from mimkit.layers.irpe import ContextualRPE, IRPEAttention, piecewise_index, product_buckets


def _tiny(**kw):
    args = dict(embed_dim=32, depth=2, num_heads=2) | kw
    return mimkit.create_model("lomar_vit_tiny_cifar", **args)


# ---------------------------------------------------------------------------- windows


def test_windows_stay_inside_the_grid_and_differ_per_image():
    torch.manual_seed(0)
    grid, ws = (14, 14), 7
    corners = M.sample_windows(256, 4, grid, ws)
    assert corners.shape == (256, 4, 2)
    assert corners.min() >= 0 and corners.max() <= grid[0] - ws
    # within an image rows (and columns) are distinct, as the official randperm
    assert all(len(set(c[:, 0].tolist())) == 4 for c in corners)
    # independent per image: far from every image having the same windows
    assert len({tuple(c.flatten().tolist()) for c in corners}) > 250
    patches = M.window_patch_indices(corners, ws, grid[1])
    rows, cols = patches // grid[1], patches % grid[1]
    assert patches.max() < grid[0] * grid[1]
    assert ((rows.amax(-1) - rows.amin(-1)) == ws - 1).all()
    assert ((cols.amax(-1) - cols.amin(-1)) == ws - 1).all()


def test_exact_masked_count_per_window():
    win = M.sample_window_masks(8, (14, 14), 7, 4, 0.8)
    assert win.mask.shape == (32, 49)
    assert (win.mask.sum(1) == int(49 * 0.8)).all()  # 39 of 49 in every (image, window)
    assert (win.image == torch.arange(8).repeat_interleave(4)).all()


def test_official_pairing_gives_each_image_one_window_four_times():
    n, m = 8, 4
    win = M.sample_window_masks(n, (14, 14), 7, m, 0.8, pairing="official")
    for i in range(n):
        mine = win.corner[win.image == i]
        assert len(mine) == m and (mine == mine[0]).all()  # the same window, M times
    masks = win.mask[win.image == 0]
    assert len({tuple(r.tolist()) for r in masks}) == m  # ... with different masks


# ---------------------------------------------------------------------------- iRPE


def test_piecewise_index_matches_irpe():
    # iRPE product buckets with ratio 1.9: exact up to |1|, log-compressed, clipped to 3
    idx = piecewise_index(torch.arange(-13, 14), 1.9, 3.8, 15.2).tolist()
    assert idx == [-3] * 10 + [-2, -2, -1, 0, 1, 2, 2] + [3] * 10


def test_relative_bias_is_translation_invariant():
    torch.manual_seed(0)
    rpe = ContextualRPE(head_dim=8)
    torch.nn.init.normal_(rpe.lookup_table_weight)
    q = torch.randn(1, 1, 1, 8).expand(1, 1, 1 + 25, 8)  # same query content everywhere
    bias = rpe(q, (5, 5))[0, 0, 1:, 1:]
    ids = product_buckets(5, 5, 0)
    pos = [(r, c) for r in range(5) for c in range(5)]
    for i, (ri, ci) in enumerate(pos):
        for j, (rj, cj) in enumerate(pos):
            for k, (rk, ck) in enumerate(pos):
                r2, c2 = rk + (rj - ri), ck + (cj - ci)
                if 0 <= r2 < 5 and 0 <= c2 < 5:
                    l2 = r2 * 5 + c2
                    assert ids[i, j] == ids[k, l2]
                    assert torch.equal(bias[i, j], bias[k, l2])
    # the cls token has its own bucket in both directions
    assert (product_buckets(5, 5, 1)[0] == 49).all() and (
        product_buckets(5, 5, 1)[:, 0] == 49
    ).all()


def test_fused_and_manual_attention_agree_and_table_learns():
    torch.manual_seed(0)
    attn = IRPEAttention(32, num_heads=4, qkv_bias=True)
    torch.nn.init.normal_(attn.rpe_k.lookup_table_weight, std=0.1)
    x = torch.randn(3, 1 + 49, 32)
    fused = attn(x)
    attn.fused_attn = False
    torch.testing.assert_close(attn(x), fused, rtol=1e-5, atol=1e-5)
    fused.square().sum().backward()
    assert attn.rpe_k.lookup_table_weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------- model


def test_masked_tokens_are_replaced_not_dropped():
    model = _tiny().eval()
    seen = {}
    model.blocks[0].register_forward_hook(lambda m, i, o: seen.setdefault("x", i[0]))
    imgs = torch.randn(2, 3, 32, 32)
    out = model(imgs)
    x, win = seen["x"], out.windows
    k = model.window_size**2
    assert x.shape == (2 * model.num_window, 1 + k, 32)  # cls + every window patch
    tok = model.mask_token[0, 0]
    is_mask = (x[:, 1:] == tok).all(-1)
    assert torch.equal(is_mask, win.mask.bool())
    assert out.pred.shape == (8, k, 4 * 4 * 3)


def test_loss_only_on_masked_patches():
    model = _tiny()
    imgs = torch.randn(2, 3, 32, 32)
    win = model.sample(imgs)
    pred = model.forward_encoder(imgs, win).detach().requires_grad_()
    M.masked_mse(pred, model.target(imgs, win), win.mask).backward()
    g = pred.grad.abs().sum(-1)
    assert (g[win.mask == 0] == 0).all() and (g[win.mask == 1] > 0).all()
    # fixed windows reproduce the loss exactly
    torch.testing.assert_close(model(imgs, windows=win).loss, model(imgs, windows=win).loss)


def test_weight_decay_groups_follow_official_lomar():
    """junchen14/LoMaR ``main_pretrain_lomar.py``: timm's ``add_weight_decay`` without a
    skip list, so only 1-D tensors and biases are exempt; the tokens and the iRPE tables
    are decayed."""
    model = _tiny()
    groups = weight_decay_groups(model, 0.05)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {n: id(p) in decayed for n, p in model.named_parameters()}
    assert len(names) == sum(len(g["params"]) for g in groups)  # every parameter, once
    for n, p in model.named_parameters():
        assert names[n] == (p.ndim > 1 and not n.endswith(".bias")), n
    for n in ("cls_token", "mask_token", "blocks.0.attn.rpe_k.lookup_table_weight"):
        assert names[n], n


def test_official_layout_loads_and_encoder_keeps_relative_positions():
    torch.manual_seed(0)
    lomar = _tiny()
    for blk in lomar.blocks:
        torch.nn.init.normal_(blk.attn.rpe_k.lookup_table_weight)
    sd = dict(lomar.state_dict())
    sd["pos_embed"] = torch.zeros(1, 65, 32)  # the official file's unused sin-cos table
    ckpt = Checkpoint(sd, {}, "official_lomar.pth")  # no metadata: shapes decide
    full, report = model_from_checkpoint(ckpt, kind="pretrain")
    assert type(full).__name__ == "LocalMaskedReconstruction" and not report.missing
    enc, report = model_from_checkpoint(ckpt, kind="encoder")
    assert enc.pos_embed is None and enc.rel_pos == "irpe"
    assert not report.missing and not report.unexpected
    assert {"pos_embed", "mask_token", "encoder_pred.weight"} <= set(report.ignored)
    torch.testing.assert_close(
        enc.blocks[1].attn.rpe_k.lookup_table_weight, lomar.blocks[1].attn.rpe_k.lookup_table_weight
    )
    # the encoder's features on a window equal the pretraining encoder's on it
    imgs = torch.randn(1, 3, 32, 32)
    win = lomar.sample(imgs, mask_ratio=0.0625, num_window=1)
    win = win._replace(mask=torch.zeros_like(win.mask))
    seq = lomar.patch_embed(imgs)[win.image.unsqueeze(1), win.patches]
    x = torch.cat([lomar.cls_token.expand(1, -1, -1), seq], 1)
    torch.testing.assert_close(enc.blocks(x), lomar.blocks(x))


# ---------------------------------------------------------------------------- end to end

LOMAR_TINY = [
    "--config",
    "lomar_vit_tiny_cifar",
    "model.args.embed_dim=32",
    "model.args.depth=1",
    "model.args.num_heads=2",
    "data.num_workers=0",
    "train.tensorboard=false",
]


@pytest.fixture(scope="module")
def lomar_ckpt(tmp_path_factory, labeled_root):
    out = tmp_path_factory.mktemp("lomar") / "run"
    args = ["pretrain", "--data", labeled_root / "train", "--out", out, "--epochs", "2"]
    code = main([str(a) for a in [*args, "--batch-size", "16", *LOMAR_TINY]])
    assert code == 0
    return out


def test_pretrain_writes_lomar_run(lomar_ckpt):
    log = [json.loads(line) for line in (lomar_ckpt / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in log if r.get("kind") == "epoch"]
    assert len(epochs) == 2 and all(r["loss"] > 0 for r in epochs)
    state = torch.load(lomar_ckpt / "checkpoint-last.pth", weights_only=True)
    assert state["model_name"] == "lomar_vit_tiny_cifar" and state["model_args"]["window_size"] == 4
    assert (lomar_ckpt / "reconstructions.png").is_file()


def test_visualize_and_finetune_a_lomar_checkpoint(lomar_ckpt, labeled_root, tmp_path, capsys):
    ckpt = lomar_ckpt / "checkpoint-last.pth"
    png = tmp_path / "windows.png"
    assert (
        main(
            [
                "visualize",
                "--checkpoint",
                str(ckpt),
                "--images",
                str(labeled_root / "val"),
                "--out",
                str(png),
                "--num-images",
                "3",
            ]
        )
        == 0
    )
    assert png.stat().st_size > 10_000 and "windows" in capsys.readouterr().out
    out = tmp_path / "ft"
    code = main(
        [
            "finetune",
            "--checkpoint",
            str(ckpt),
            "--data",
            str(labeled_root),
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--out",
            str(out),
            "data.num_workers=0",
            "train.tensorboard=false",
            "optim.warmup_epochs=0",
        ]
    )
    assert code == 0
    state = torch.load(out / "checkpoint-last.pth", weights_only=True)
    assert state["model_args"]["rel_pos"] == "irpe" and state["model_args"]["pos_embed"] == "none"
    assert "blocks.0.attn.rpe_k.lookup_table_weight" in state["model"]
    assert "pos_embed" not in state["model"]
    assert json.loads((out / "metrics.json").read_text())["num_images"] == 32


@pytest.mark.slow
def test_lomar_classifier_exports_to_torchscript_and_onnx(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from mimkit.errors import UserError
    from mimkit.interop.export import export_onnx, export_timm, export_torchscript
    from mimkit.models import create_encoder

    torch.manual_seed(0)
    model = create_encoder(
        "lomar_vit_tiny_cifar", embed_dim=32, depth=2, num_heads=2, num_classes=5, global_pool="avg"
    ).eval()
    for blk in model.blocks:
        torch.nn.init.normal_(blk.attn.rpe_k.lookup_table_weight, std=0.1)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    ts = torch.jit.load(str(export_torchscript(model, tmp_path / "m.pt", 32)))
    torch.testing.assert_close(ts(x), ref, rtol=1e-5, atol=1e-5)
    sess = ort.InferenceSession(str(export_onnx(model, tmp_path / "m.onnx", 32)))
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(UserError, match="iRPE"):
        export_timm(model, tmp_path / "m.safetensors")
