"""Speed paths on CPU: device-side augmentation, tensor cache, device JPEG decode,
tar shards across ranks and workers, torch.compile, FLOP arithmetic, benchmark command
(MFU on CPU, profile), precision auto (bf16 on CPUs with native bf16), fused AdamW."""

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2 as T

import mimkit
from mimkit.cli import main
from mimkit.data import EpochSampler, folder_source
from mimkit.data import device_aug as D
from mimkit.data.jpeg import DeviceJpegLoader, decode_batch
from mimkit.data.shards import ShardDataset, ShardLoader, write_shards
from mimkit.data.tensor_cache import TensorCacheLoader, build_tensor_cache
from mimkit.engine import precision as P
from mimkit.engine.optim import adamw, weight_decay_groups
from mimkit.errors import UserError
from mimkit.flops import block_macs, peak_tflops
from mimkit.methods import model_step_flops
from mimkit.methods.mae import mae_step_flops

from .conftest import TINY_MAE


def _crop_stats(boxes, h, w):
    area = boxes[:, 2] * boxes[:, 3] / (h * w)
    aspect = boxes[:, 3] / boxes[:, 2]
    return area, aspect


def test_batched_crops_follow_torchvision_distribution():
    n, h, w = 20000, 32, 48
    g = torch.Generator().manual_seed(0)
    ours = D.sample_crops(n, h, w, scale=(0.2, 1.0), generator=g)
    top, left, ch, cw = ours.unbind(1)
    assert torch.all(top >= 0) and torch.all(left >= 0)
    assert torch.all(top + ch <= h) and torch.all(left + cw <= w)
    assert torch.all(ours == ours.round())  # integer boxes, as torchvision
    torch.manual_seed(0)
    img = torch.zeros(3, h, w)
    ref = torch.tensor(
        [T.RandomResizedCrop.get_params(img, (0.2, 1.0), (3 / 4, 4 / 3)) for _ in range(n)],
        dtype=torch.float32,
    )
    a1, r1 = _crop_stats(ours, h, w)
    a2, r2 = _crop_stats(ref, h, w)
    assert a1.min() >= 0.2 - 0.05 and a1.max() <= 1.0
    assert r1.min() >= 3 / 4 - 0.1 and r1.max() <= 4 / 3 + 0.1  # rounding to whole pixels
    assert abs(a1.mean() - a2.mean()) < 0.01 and abs(a1.std() - a2.std()) < 0.01
    assert abs(r1.log().mean() - r2.log().mean()) < 0.01
    # crop position: centre of the box uniform over where it fits
    assert abs((top + ch / 2).mean() - (ref[:, 0] + ref[:, 2] / 2).mean()) < 0.2


def test_fallback_is_the_centre_crop():
    boxes = D.sample_crops(100, 10, 100, scale=(0.99, 1.0))  # no 3/4..4/3 box fits
    assert torch.all(boxes == torch.tensor([0.0, 43.0, 10.0, 13.0]))  # h 10, w 13, centred


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_resized_crop_equals_interpolating_the_crop(mode):
    x = torch.rand(2, 3, 20, 24) * 255
    boxes = torch.tensor([[2.0, 3.0, 10.0, 15.0], [0.0, 0.0, 20.0, 24.0]])
    out = D.resized_crops(x, boxes, 16, mode=mode)
    for k, (t, left, h, w) in enumerate(boxes.long().tolist()):
        ref = F.interpolate(
            x[k : k + 1, :, t : t + h, left : left + w],
            size=(16, 16),
            mode=mode,
            align_corners=False,
        )
        inner = slice(None) if mode == "bilinear" else slice(4, -4)  # bicubic: away from edges
        torch.testing.assert_close(
            out[k : k + 1, :, inner, inner], ref[:, :, inner, inner], rtol=1e-4, atol=1e-3
        )
    flipped = D.resized_crops(x, boxes, 16, flip=torch.tensor([True, False]), mode=mode)
    torch.testing.assert_close(flipped[0], out[0].flip(-1), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(flipped[1], out[1])


def test_augment_batch_draws_per_image():
    imgs = (torch.rand(1, 3, 32, 32) * 255).to(torch.uint8).expand(64, -1, -1, -1)
    out = D.augment_batch(imgs, 32, generator=torch.Generator().manual_seed(1))
    assert out.shape == (64, 3, 32, 32)
    assert len({tuple(o.flatten()[:50].tolist()) for o in out}) == 64  # 64 different crops
    flips = [torch.rand(64, generator=torch.Generator().manual_seed(s)) < 0.5 for s in range(20)]
    assert 0.4 < torch.stack(flips).float().mean() < 0.6


def test_tensor_cache_and_its_loader(tmp_path, image_folder):
    (image_folder / "cat" / "broken.jpg").write_bytes(b"nope")
    src = folder_source(image_folder)
    cache = build_tensor_cache(src, 32, tmp_path / "c.pt", num_workers=0)
    assert cache["images"].shape == (64, 3, 32, 32) and cache["images"].dtype == torch.uint8
    # each left-out image with the reason
    assert cache["bad"] == [f"{image_folder / 'cat' / 'broken.jpg'} (not a readable image)"]
    sampler = EpochSampler(64, seed=3)
    loader = TensorCacheLoader(
        cache["images"], cache["labels"], 16, sampler, torch.device("cpu"), 32
    )
    first = [b["image"] for b in loader]
    again = [b["image"] for b in loader]
    assert len(first) == 4 and all(torch.equal(a, b) for a, b in zip(first, again))
    sampler.set_epoch(1)
    assert not torch.equal(next(iter(loader))["image"], first[0])
    x = first[0]
    assert x.shape == (16, 3, 32, 32) and -3 < x.mean() < 3  # normalised


def test_device_jpeg_decode_handles_png_and_corrupt(tmp_path, image_folder):
    from PIL import Image

    png = tmp_path / "a.png"
    Image.new("RGB", (20, 10), (255, 0, 0)).save(png)
    jpg = next((image_folder / "cat").glob("*.jpg"))
    datas = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in (jpg, png)] + [
        torch.tensor([1, 2, 3], dtype=torch.uint8)
    ]
    out = decode_batch(datas, torch.device("cpu"))
    assert out[0].shape == (3, 32, 32) and out[1].shape == (3, 10, 20) and out[2] is None
    (image_folder / "cat" / "zz_bad.jpg").write_bytes(b"nope")
    src = folder_source(image_folder)
    loader = DeviceJpegLoader(
        src, 13, EpochSampler(len(src), shuffle=False), 0, torch.device("cpu"), 24
    )
    batches = list(loader)
    assert all(b["image"].shape == (13, 3, 24, 24) for b in batches)
    assert [p for b in batches for p, _ in b["bad"]] == [str(image_folder / "cat" / "zz_bad.jpg")]


def _labels_from(ds, workers):
    loader = torch.utils.data.DataLoader(
        ds, batch_size=4, num_workers=workers, collate_fn=lambda items: [i[1] for i in items]
    )
    return [label for batch in loader for label in batch]


def test_shards_cover_every_sample_once_across_2_ranks_x_2_workers(tmp_path, image_folder):
    src = folder_source(image_folder)
    src.labels = list(range(len(src)))  # label = sample index, to count coverage
    write_shards(src, tmp_path / "shards", shard_size=8)  # 8 shards of 8
    seen = []
    for rank in range(2):
        ds = ShardDataset(
            tmp_path / "shards", T.Compose([T.PILToTensor()]), seed=0, rank=rank, world=2
        )
        ds.set_epoch(5)
        labels = _labels_from(ds, workers=2)
        assert len(labels) == len(ds) == 32
        seen += labels
    assert sorted(seen) == list(range(64))


def test_uneven_shards_give_every_rank_the_same_length(tmp_path, image_folder):
    src = folder_source(image_folder)
    write_shards(src, tmp_path / "shards", shard_size=7)  # 10 shards: 9 x 7 + 1
    counts = []
    for rank in range(2):
        ds = ShardDataset(tmp_path / "shards", T.Compose([T.PILToTensor()]), rank=rank, world=2)
        loader = ShardLoader(ds, 4, 2, False, lambda items: items)
        counts.append((len(loader), sum(1 for _ in loader)))
    assert counts[0] == counts[1] and counts[0][0] == counts[0][1] == 8


@pytest.mark.parametrize("pipeline", ["tensor_cache", "gpu_jpeg", "shards"])
def test_pretrain_runs_on_every_pipeline(tmp_path, image_folder, pipeline, monkeypatch):
    monkeypatch.setenv("MIMKIT_CACHE", str(tmp_path / "cache"))
    data = image_folder
    if pipeline == "shards":
        assert (
            main(
                [
                    "shards",
                    "--data",
                    str(image_folder),
                    "--out",
                    str(tmp_path / "sh"),
                    "--shard-size",
                    "16",
                ]
            )
            == 0
        )
        data = tmp_path / "sh"
    out = tmp_path / "run"
    assert (
        main(
            [
                "pretrain",
                "--data",
                str(data),
                "--out",
                str(out),
                "--epochs",
                "1",
                "--batch-size",
                "16",
                *TINY_MAE,
                f"data.pipeline={pipeline}",
            ]
        )
        == 0
    )
    epochs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in epochs if r["kind"] == "epoch"] == [4]


@pytest.mark.slow
def test_tensor_cache_pretraining_resumes_exactly(tmp_path, image_folder, monkeypatch):
    monkeypatch.setenv("MIMKIT_CACHE", str(tmp_path / "cache"))
    common = [
        "--data",
        str(image_folder),
        "--batch-size",
        "16",
        "--epochs",
        "2",
        *TINY_MAE,
        "data.pipeline=tensor_cache",
    ]
    assert main(["pretrain", *common, "--out", str(tmp_path / "a")]) == 0
    assert main(["pretrain", *common, "--out", str(tmp_path / "b"), "train.max_steps=4"]) == 0
    assert main(["pretrain", "--resume", str(tmp_path / "b"), "train.max_steps=null"]) == 0
    a = torch.load(tmp_path / "a" / "checkpoint-last.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint-last.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_compile_switch_runs_a_step(tmp_path, image_folder):
    out = tmp_path / "run"
    assert (
        main(
            [
                "pretrain",
                "--data",
                str(image_folder),
                "--out",
                str(out),
                "--epochs",
                "1",
                "--batch-size",
                "32",
                *TINY_MAE,
                "train.compile=true",
                "train.max_steps=1",
            ]
        )
        == 0
    )
    state = torch.load(out / "checkpoint-last.pth", weights_only=True)
    assert state["step"] == 1 and not any("_orig_mod" in k for k in state["model"])


def test_mfu_arithmetic_matches_the_hand_count():
    # MAE ViT-B/16 at 224, 75% masking: 58.7 GFLOP per image per training step
    assert mae_step_flops(224, 16, 768, 12, 512, 8, 0.75) / 1e9 == pytest.approx(58.687, abs=1e-3)
    assert block_macs(50, 768) == 12 * 50 * 768**2 + 2 * 50**2 * 768
    with torch.device("meta"):
        model = mimkit.create_model("mae_vit_base_patch16")
    flops, formula = model_step_flops(model)
    assert flops / 1e9 == pytest.approx(58.687, abs=1e-3) and "M(n,d)" in formula
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0 and peak_tflops("AMD EPYC CPU") is None
    # 35% MFU on an H100 is about 5,900 images/s
    assert 0.35 * 989e12 / flops == pytest.approx(5898, abs=5)


def test_benchmark_command_writes_json(tmp_path, image_folder, capsys):
    out = tmp_path / "b.json"
    assert (
        main(
            [
                "benchmark",
                "--config",
                "mae_vit_tiny_cifar",
                "--data",
                str(image_folder),
                "--steps",
                "2",
                "--warmup",
                "1",
                "--batch-size",
                "8",
                "--json",
                str(out),
                *TINY_MAE,
            ]
        )
        == 0
    )
    r = json.loads(out.read_text())
    for key in (
        "model_img_s",
        "loader_img_s",
        "end_to_end_img_s",
        "train_gflop_per_image",
        "flop_formula",
        "precision",
        "device",
    ):
        assert key in r, key
    assert r["model_img_s"] > 0 and math.isfinite(r["end_to_end_vs_model"])
    # MFU on a CPU: the peak is a matmul measured at start, for the run's precision
    assert r["peak_tflops"] > 0 and r["peak_source"].startswith("measured")
    assert r["peak_fp32_tflops"] > 0
    assert r["peak_tflops"] == r[f"peak_{r['precision']}_tflops"]
    assert 0 < r["model_mfu"] < 1 and 0 < r["end_to_end_mfu"] < 1
    assert r["model_mfu"] == pytest.approx(
        r["model_img_s"] * r["train_flop_per_image"] / (r["peak_tflops"] * 1e12), rel=1e-6
    )
    out = capsys.readouterr().out
    assert "end to end" in out and "n/a" not in out and "TFLOP/s (measured" in out


@pytest.mark.parametrize(
    "preset",
    [
        "lomar_vit_tiny_cifar",
        "convmixer_256_8_cifar",
        "vitdet_tiny_coco128",
        "ibot_vit_tiny_cifar",
    ],
)
def test_every_kind_of_preset_gets_counted_flops_and_mfu(tmp_path, preset):
    """LoMaR, ConvMixer (classifier), the ViTDet backbone + pyramid and iBOT: FLOPs from
    the one counter, MFU against the measured CPU peak."""
    out = tmp_path / "b.json"
    args = ["benchmark", "--config", preset, "--steps", "1", "--warmup", "0"]
    assert main([*args, "--batch-size", "2", "--json", str(out), "data.num_workers=0"]) == 0
    r = json.loads(out.read_text())
    assert r["train_flop_per_image"] > 0 and 0 < r["model_mfu"] < 1, r


def test_benchmark_profile_writes_a_trace_and_prints_top_ops(tmp_path, capsys):
    out = tmp_path / "b.json"
    args = ["benchmark", "--config", "mae_vit_tiny_cifar", "--steps", "1", "--warmup", "1"]
    args += ["--batch-size", "4", "--json", str(out), "--profile", *TINY_MAE]
    assert main(args) == 0
    r = json.loads(out.read_text())
    trace = tmp_path / "b.trace.json"
    assert r["profile"]["trace"] == str(trace)
    assert "traceEvents" in json.loads(trace.read_text())  # Chrome / Perfetto format
    top = r["profile"]["top"]
    assert len(top) == 10 and all(t["self_ms_per_step"] >= 0 for t in top)
    assert [t["self_ms_per_step"] for t in top] == sorted(
        (t["self_ms_per_step"] for t in top), reverse=True
    )
    printed = capsys.readouterr().out
    assert "top 10 operators by self cpu time" in printed
    assert top[0]["op"][:44] in printed


# ---------------------------------------------------------------------------- precision


def test_auto_precision_follows_the_cpus_bf16_support(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv(P.CPU_BF16_ENV, raising=False)
    caps = {"amx_bf16": True, "avx512_bf16": True}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    assert P.resolve_with_reason("auto", cpu) == ("bf16", "auto: CPU has AMX/AVX512-BF16")
    caps = {"avx512_f": True, "avx2": True}  # AVX-512 without BF16: emulated, slower
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    assert P.resolve_with_reason("auto", cpu) == ("fp32", "auto: CPU has no AMX/AVX512-BF16")
    assert P.resolve("auto", cuda) == "bf16" and P.resolve("fp32", cpu) == "fp32"
    monkeypatch.setenv(P.CPU_BF16_ENV, "1")  # the override, either way
    assert P.resolve_with_reason("auto", cpu) == ("bf16", "auto: MIMKIT_CPU_BF16=1")
    monkeypatch.setenv(P.CPU_BF16_ENV, "0")
    assert P.resolve_with_reason("auto", cpu) == ("fp32", "auto: MIMKIT_CPU_BF16=0")
    assert P.resolve("bf16", cpu) == "bf16"  # an explicit choice is not overridden
    monkeypatch.setenv(P.CPU_BF16_ENV, "yes")
    with pytest.raises(UserError, match="MIMKIT_CPU_BF16 must be 0 or 1"):
        P.resolve("auto", cpu)
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        P.resolve("fp16", cpu)


@pytest.mark.parametrize("bf16", ["1", "0"])
def test_run_header_and_config_yaml_say_the_resolved_precision(
    tmp_path, image_folder, monkeypatch, capsys, bf16
):
    monkeypatch.setenv(P.CPU_BF16_ENV, bf16)
    out = tmp_path / "run"
    args = ["pretrain", "--data", str(image_folder), "--out", str(out), "--epochs", "1"]
    assert main([*args, "--batch-size", "16", *TINY_MAE, "train.max_steps=2"]) == 0
    want = "bf16" if bf16 == "1" else "fp32"
    err = capsys.readouterr().err
    assert f"precision {want} (auto: MIMKIT_CPU_BF16={bf16}) on cpu" in err
    assert re.search(rf"mae_vit_tiny_cifar: .* cpu {want}, effective batch 16", err)
    text = (out / "config.yaml").read_text()
    assert "precision: auto" in text and f"precision_resolved: {want}" in text
    state = torch.load(out / "checkpoint-last.pth", weights_only=True)
    assert state["config"]["train"]["precision_resolved"] == want
    assert state["step"] == 2 and math.isfinite(state["metrics"]["loss"])


@pytest.mark.slow
def test_evaluation_extracts_features_in_the_resolved_precision(
    tmp_path, labeled_root, tiny_mae_ckpt, monkeypatch, capsys
):
    """kNN (and the linprobe cache, Q-score: the same ``split_features``) run under the
    resolved precision; the feature cache keeps fp32 and bf16 features apart."""
    seen = []
    real = P.autocast
    monkeypatch.setattr(P, "autocast", lambda p, d: seen.append(p) or real(p, d))
    cache = tmp_path / "cache"
    for flag, want in (("1", "bf16"), ("0", "fp32")):
        monkeypatch.setenv(P.CPU_BF16_ENV, flag)
        seen.clear()
        out = tmp_path / f"knn{flag}"
        args = ["knn", "--checkpoint", str(tiny_mae_ckpt), "--data", str(labeled_root)]
        assert main([*args, "--out", str(out), f"eval.cache_dir={cache}"]) == 0
        assert set(seen) == {want}, seen  # extracted now, not read from the other's cache
        assert f"precision_resolved: {want}" in (out / "config.yaml").read_text()
        assert f"precision {want} (auto: MIMKIT_CPU_BF16={flag})" in capsys.readouterr().err


def test_predict_uses_the_resolved_precision(tmp_path, image_folder, monkeypatch, caplog):
    from mimkit.eval.predict import predict_files

    model = mimkit.create_model("vit_tiny_patch16", img_size=32, patch_size=8, num_classes=3)
    files = [str(p) for p in sorted((image_folder / "cat").iterdir())[:2]]
    seen = []
    real = P.autocast
    monkeypatch.setattr(P, "autocast", lambda p, d: seen.append(p) or real(p, d))
    for flag, want in (("1", "bf16"), ("0", "fp32")):
        monkeypatch.setenv(P.CPU_BF16_ENV, flag)
        seen.clear()
        rows = predict_files(model, files, ["a", "b", "c"], torch.device("cpu"), num_workers=0)
        assert len(rows) == 2 and seen == [want]


def test_adamw_is_fused_on_cpu_and_matches_the_reference_update():
    """The fused kernel makes the for-loop implementation's update (same groups, gradients)."""
    model = mimkit.create_model("mae_vit_tiny_cifar", depth=2, decoder_depth=1)
    ref = mimkit.create_model("mae_vit_tiny_cifar", depth=2, decoder_depth=1)
    ref.load_state_dict(model.state_dict())
    fused = adamw(weight_decay_groups(model, 0.05), 1e-3, (0.9, 0.95), torch.device("cpu"))
    assert fused.defaults["fused"]
    groups = weight_decay_groups(ref, 0.05)
    loop = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95), foreach=False)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        for a, b in zip(model.parameters(), ref.parameters()):
            a.grad = torch.randn(a.shape, generator=g)
            b.grad = a.grad.clone()
        fused.step()
        loop.step()
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=k)


def test_attention_is_explicit_on_cpu_bf16_and_sdpa_otherwise(monkeypatch):
    """Same function either way: SDPA in fp32, the explicit product (bmm on AMX) under CPU
    bf16 autocast, where PyTorch's SDPA kernel is several times slower."""
    import torch.nn.functional as F

    from mimkit.layers.attention import attention, sdpa_is_fast

    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(
        F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    q, k, v = torch.randn(3, 2, 4, 9, 8).unbind(0)
    mask = torch.randn(2, 4, 9, 9)
    assert sdpa_is_fast(q)
    ref = attention(q, k, v, 8**-0.5, mask)
    assert calls == [1]
    explicit = attention(q, k, v, 8**-0.5, mask, fused=False)
    torch.testing.assert_close(explicit, ref, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not sdpa_is_fast(q)
        low = attention(q, k, v, 8**-0.5, mask)
    assert calls == [1] and low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, rtol=0.05, atol=0.05)
    model = mimkit.create_model("mae_vit_tiny_cifar", depth=1, decoder_depth=1)
    assert type(model.blocks[0].attn).__name__ == type(model.decoder_blocks[0].attn).__name__
    assert type(model.blocks[0].attn).__module__ == "mimkit.layers.attention"


@pytest.mark.slow
def test_counted_flops_agree_with_the_mae_formula():
    """The one FLOP counter (FlopCounterMode on a real step) and the documented MAE formula
    agree within 5% on ViT-B/16 (the formula leaves out norms, softmax and the loss)."""
    from mimkit.flops import count_step_flops
    from mimkit.recipes.pretrain import PretrainTask

    model = mimkit.create_model("mae_vit_base_patch16")
    counted = count_step_flops(PretrainTask(), model, {"image": torch.randn(1, 3, 224, 224)})
    formula, _ = model_step_flops(model)
    assert counted == pytest.approx(formula, rel=0.05)
