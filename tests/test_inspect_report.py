"""mimkit inspect / report / compare as a product: pictures of every backbone mimkit reads
(from the CLI and from Python, on the shipped sample), honest reconstructions, the report
of real runs in a real headless Chromium, and the method comparison."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import mimkit
from mimkit.cli import main
from mimkit.errors import UserError
from mimkit.interop.checkpoint import model_from_checkpoint
from mimkit.methods.mae import reconstruct
from mimkit.models import create_encoder, preprocessing
from mimkit.recipes.compare import format_rows, pretrain_config
from mimkit.recipes.inspect import (
    default_queries,
    gallery_features,
    load_encoder,
    nearest_images,
    open_gallery,
)
from mimkit.recipes.run import resolve
from mimkit.report import attach_evaluation_runs, comparison_rows, read_runs
from mimkit.viz.attention import attention_figure
from mimkit.viz.backbone import image_names
from mimkit.viz.grid import load_images

from .conftest import CIFAR_MINI, SHARED_DIR, TINY_MAE
from .test_report import _browser, _driver, _table_cells

CPU = torch.device("cpu")
SIMMIM_OFFICIAL = SHARED_DIR / "interop" / "simmim_official_checkpoint_tiny.pth"
SMALL_VIT = ["model.args.embed_dim=32", "model.args.depth=1", "model.args.num_heads=2"]
QUIET = ["data.num_workers=0", "train.tensorboard=false"]
TINY = {  # one short pretraining run per method (a 1-2 block encoder of width 32)
    "mae": ["--config", "mae_vit_tiny_cifar", *TINY_MAE],
    "lomar": ["--config", "lomar_vit_tiny_cifar", *SMALL_VIT, *QUIET],
    "ibot": ["--config", "ibot_vit_tiny_cifar", "model.args.embed_dim=32",
             "model.args.depth=2", "model.args.num_heads=2", "model.args.out_dim=64",
             "model.args.head_hidden_dim=64", "model.args.head_bottleneck_dim=32",
             "model.args.local_crops_number=2", "model.args.warmup_teacher_temp_epochs=1",
             "optim.warmup_epochs=1", *QUIET],
    "simmim": ["--config", "simmim_vit_tiny_cifar", *SMALL_VIT, *QUIET],
}  # fmt: skip


def _pixels(picture) -> np.ndarray:
    if isinstance(picture, (str, Path)):
        with Image.open(picture) as img:
            return np.asarray(img.convert("RGB"))
    return np.asarray(picture.convert("RGB"))


def _same(a, b) -> bool:
    return np.array_equal(_pixels(a), _pixels(b))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, labeled_root):
    """method -> checkpoint of a 1-epoch tiny pretraining run on 64 real images (made on
    first use, shared by the module's tests)."""
    made: dict[str, Path] = {}

    def get(method: str) -> Path:
        if method not in made:
            out = tmp_path_factory.mktemp(method) / "run"
            args = ["pretrain", "--data", labeled_root / "train", "--out", out, "--epochs", 1]
            assert main([str(a) for a in [*args, "--batch-size", 16, *TINY[method]]]) == 0
            made[method] = out / "checkpoint-last.pth"
        return made[method]

    return get


# ----------------------------------------------------------------------------- inspect


@pytest.mark.slow
@pytest.mark.parametrize("method", list(TINY))
def test_inspect_from_cli_and_python_for_every_method(method, pretrained, labeled_root, tmp_path):
    """The command writes the three pictures; the function returns the same pixels; the
    attention picture is the encoder's own (the checkpoint's encoder, its preprocessing,
    the default queries spread over the val split)."""
    ckpt = pretrained(method)
    out = tmp_path / "cli"
    args = ["inspect", "--checkpoint", ckpt, "--data", labeled_root, "--out", out]
    assert main([str(a) for a in [*args, "--num-images", 3]]) == 0
    pictures = mimkit.inspect(ckpt, data=labeled_root, num_images=3)
    assert set(pictures) == {"attention", "features", "neighbors"}
    for kind, picture in pictures.items():
        assert _same(out / f"{kind}.png", picture), kind
    encoder, _ = model_from_checkpoint(ckpt, kind="encoder")
    queries, labels = default_queries(open_gallery(labeled_root), 3)
    assert labels == sorted(labels) and len(set(labels)) == 3  # spread over the classes
    batch, display = load_images(queries, **preprocessing(encoder))
    expected, maps = attention_figure(encoder.eval(), batch, display, -1, image_names(queries))
    assert maps.shape[1] == encoder.blocks[-1].attn.num_heads
    assert _same(pictures["attention"], expected)


@pytest.mark.slow
def test_inspect_takes_the_teacher_or_the_student(pretrained):
    ckpt = pretrained("ibot")
    state = torch.load(ckpt, weights_only=True)["model"]
    key = "blocks.0.attn.qkv.weight"
    assert not torch.equal(state[f"teacher.backbone.{key}"], state[f"student.backbone.{key}"])
    for network in ("teacher", "student"):
        encoder = load_encoder(ckpt, network=network)
        assert torch.equal(encoder.state_dict()[key], state[f"{network}.backbone.{key}"])


@pytest.mark.slow
def test_feature_caches_tell_the_teacher_from_the_student(pretrained, labeled_root, tmp_path):
    """kNN (and the neighbours, same key) of iBOT's student after its teacher extract again."""
    ckpt, cache = pretrained("ibot"), tmp_path / "cache"
    counts = []
    for network in ("teacher", "student", "teacher"):
        settings = {"eval.cache_dir": str(cache), "model.checkpoint_network": network}
        mimkit.knn(ckpt, data=labeled_root, out=tmp_path / f"{network}{len(counts)}", **settings)
        counts.append(len(list(cache.glob("*.pt"))))
    assert counts[1] == counts[0] + 2  # the student's train and val features (floors: shared)
    assert counts[2] == counts[1]  # the teacher's again: from the cache


@pytest.mark.skipif(not SIMMIM_OFFICIAL.is_file(), reason="../shared/interop not beside the repo")
def test_inspect_an_official_simmim_file(tmp_path):
    images = sorted((CIFAR_MINI / "test" / "cat").iterdir())[:2]
    code = main(["inspect", "--checkpoint", str(SIMMIM_OFFICIAL), "--out", str(tmp_path),
                 "--images", *map(str, images)])  # fmt: skip
    assert code == 0
    encoder, _ = model_from_checkpoint(SIMMIM_OFFICIAL, kind="encoder")
    batch, display = load_images(images, **preprocessing(encoder))
    expected, _ = attention_figure(encoder.eval(), batch, display, -1, image_names(images))
    assert _same(tmp_path / "attention.png", expected)  # BEiT's shared bias recomputed
    assert (tmp_path / "features.png").is_file() and not (tmp_path / "neighbors.png").exists()


@pytest.mark.slow
def test_inspect_a_timm_vit(labeled_root, tmp_path):
    """timm:vit_tiny_patch16_224 (random init: no download): 224 px crops of the 32 px
    images, its 3 heads; neighbours in a plain folder (class sub-folders, no splits)."""
    folder = tmp_path / "folder"
    for cls in ("cat", "ship"):
        shutil.copytree(labeled_root / "train" / cls, folder / cls)
    queries = [folder / "cat" / sorted(os.listdir(folder / "cat"))[0]]
    queries.append(sorted((labeled_root / "val" / "ship").iterdir())[0])
    args = ["inspect", "--model", "timm:vit_tiny_patch16_224", "--data", str(folder)]
    torch.manual_seed(0)
    assert main([*args, "--out", str(tmp_path), "--images", *map(str, queries)]) == 0
    assert (tmp_path / "neighbors.png").is_file()
    torch.manual_seed(0)
    pictures = mimkit.inspect(images=queries, model="timm:vit_tiny_patch16_224")
    assert set(pictures) == {"attention", "features"}  # no data: no neighbours
    assert all(_same(tmp_path / f"{k}.png", p) for k, p in pictures.items())
    torch.manual_seed(0)
    vit = load_encoder(model="timm:vit_tiny_patch16_224")
    batch, display = load_images(queries, **preprocessing(vit))
    assert batch.shape[-1] == 224
    expected, maps = attention_figure(vit, batch, display, -1, image_names(queries))
    assert maps.shape == (2, 3, 14, 14) and _same(pictures["attention"], expected)


def test_neighbours_skip_the_query_itself_and_find_its_copy(labeled_root, tmp_path):
    encoder = create_encoder("mae_vit_tiny_cifar", embed_dim=32, depth=1, num_heads=2).eval()
    gallery = open_gallery(labeled_root)
    feats = gallery_features(encoder, gallery, None, "teacher", "cls", CPU, "fp32", cache=False)
    assert len(feats["paths"]) == 64 and feats["labels"].tolist() == gallery.source.labels
    copy = tmp_path / "copy.jpg"
    shutil.copy(feats["paths"][5], copy)
    sim, idx = nearest_images(encoder, feats, [feats["paths"][3], copy], 4, CPU)
    assert 3 not in idx[0].tolist()  # a training image is not its own neighbour
    assert idx[1, 0] == 5 and sim[1, 0] == pytest.approx(1.0, abs=1e-5)  # its copy is
    assert torch.all(sim[:, :-1] >= sim[:, 1:])  # best first


def test_commands_have_help(capsys):
    for command, words in (
        ("inspect", "--network"),
        ("report", "RUN"),
        ("compare", "--config-for"),
    ):
        with pytest.raises(SystemExit) as e:
            main([command, "--help"])
        assert e.value.code == 0 and words in capsys.readouterr().out, command


def test_inspect_refuses_clearly(capsys, tmp_path):
    assert main(["inspect", "--model", "timm:vit_tiny_patch16_224"]) == 2
    assert "no images given" in capsys.readouterr().err
    image = sorted((CIFAR_MINI / "test" / "cat").iterdir())[0]
    assert main(["inspect", "--images", str(image)]) == 2
    assert "no backbone given" in capsys.readouterr().err
    assert main(["inspect", "--images", str(tmp_path), "--model", "timm:vit_tiny_patch16_224"]) == 2
    assert "no images found under" in capsys.readouterr().err
    with pytest.raises(UserError, match="block 12 out of range: the model has 12 blocks"):
        mimkit.inspect(images=[image], model="timm:vit_tiny_patch16_224", block=12, img_size=32)


# ----------------------------------------------------------------------------- honest MAE


def test_honest_reconstruction_never_reads_masked_pixels():
    """Changing the pixels of the masked patches leaves the honest picture's masked region
    as it was; the official demo's ('true' statistics) changes with them."""
    torch.manual_seed(0)
    mae = mimkit.create_model("mae_vit_tiny_cifar", embed_dim=32, depth=1, num_heads=2,
                              decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2,
                              norm_pix_loss=True)  # fmt: skip
    imgs = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 64)
    first = reconstruct(mae, imgs, 0.75, noise)
    hole = first["mask"].reshape(2, 1, 8, 8).repeat_interleave(4, 2).repeat_interleave(4, 3)
    assert 0 < hole.mean() < 1
    changed = imgs * (1 - hole) + (3 * torch.randn_like(imgs) + 1) * hole
    for stats, unchanged in (("visible", True), ("true", False)):
        a = reconstruct(mae, imgs, 0.75, noise, stats=stats)
        b = reconstruct(mae, changed, 0.75, noise, stats=stats)
        for key in ("recon", "pasted", "masked"):
            same = torch.allclose(a[key] * hole, b[key] * hole, atol=1e-6)
            assert same == unchanged or key == "masked", (stats, key)
        assert torch.equal(a["masked"], b["masked"])  # the holes are grey either way
    assert not torch.equal(first["original"], reconstruct(mae, changed, 0.75, noise)["original"])


# ----------------------------------------------------------------------------- report


def _fake_run(folder: Path, task: str, checkpoint: str | None, top1: float | None) -> Path:
    folder.mkdir(parents=True)
    config = {"task": task, "out": str(folder), "model": {"checkpoint": checkpoint}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    if top1 is not None:
        metrics = {"protocol": task, "top1": top1, "top5": 90.0, "num_images": 10}
        (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_evaluation_runs_join_the_run_they_evaluated(tmp_path):
    a = _fake_run(tmp_path / "a", "pretrain", None, None)
    b = _fake_run(tmp_path / "b", "pretrain", None, None)
    _fake_run(a / "knn", "knn", str(a / "checkpoint-last.pth"), 40.0)
    elsewhere = _fake_run(tmp_path / "evals" / "b-knn", "knn", str(b / "checkpoint-last.pth"), 30.0)
    for run in (a / "knn", elsewhere):  # an evaluation's own floors stay out, in or beside
        _fake_run(run / "baselines" / "raw_pixels", "knn", "none", 10.0)
    probe = _fake_run(tmp_path / "b-probe", "linprobe", str(b / "checkpoint-last.pth"), 35.0)
    timm_knn = _fake_run(tmp_path / "timm-knn", "knn", "weights.safetensors", 20.0)
    runs = attach_evaluation_runs(read_runs([a, b, a / "knn", elsewhere, probe, timm_knn]))
    assert [r.name for r in runs] == ["a", "b", "timm-knn"]
    rows = {r["run"]: r for r in comparison_rows(runs)}
    assert rows["a"] == {"run": "a", "knn/top1": 40.0, "knn/top5": 90.0}  # read once
    assert rows["b"] == {"run": "b", "knn/top1": 30.0, "knn/top5": 90.0,
                         "linprobe/top1": 35.0, "linprobe/top5": 90.0}  # fmt: skip
    assert rows["timm-knn"]["knn/top1"] == 20.0  # evaluates no given run: a row of its own


def test_a_broken_checkpoint_does_not_sink_the_page(tmp_path, mimkit_log):
    run = _fake_run(tmp_path / "a", "pretrain", None, None)
    (run / "checkpoint-last.pth").write_bytes(b"not a checkpoint")
    image = sorted((CIFAR_MINI / "test" / "cat").iterdir())[0]
    page = mimkit.report([run], tmp_path / "r.html", images=[image])
    assert page.is_file() and "<img" not in page.read_text()
    assert "no pictures for a:" in mimkit_log.text


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory, labeled_root) -> tuple[list[Path], Path]:
    """Two demo-like runs (the demo preset, tiny, 1 epoch) at mask ratios 0.75 and 0.5,
    the first with the online kNN monitor: the first evaluated by kNN inside its folder,
    the second by kNN in a folder beside."""
    root = tmp_path_factory.mktemp("demo")
    runs = [root / "mae-mask75", root / "mae-mask50"]
    for run, ratio, monitor in zip(runs, (0.75, 0.5), ("true", "false")):
        args = ["pretrain", "--config", "mae_vit_tiny_cifar_demo", "--data",
                labeled_root / "train", "--out", run, "--epochs", 1, "--batch-size", 16,
                *TINY_MAE, f"model.mask_ratio={ratio}", f"eval.monitor={monitor}"]  # fmt: skip
        assert main([str(a) for a in args]) == 0
    beside = root / "mae-mask50-knn"
    for run, out in ((runs[0], runs[0] / "knn"), (runs[1], beside)):
        args = ["knn", "--checkpoint", run / "checkpoint-last.pth", "--data", labeled_root,
                "--out", out, "eval.cache_dir=none", "data.num_workers=0"]  # fmt: skip
        assert main([str(a) for a in args]) == 0
    return runs, beside


@pytest.mark.slow
def test_report_of_two_runs_in_a_headless_browser(demo_runs, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip(
            "no Chromium/Chrome binary installed (apt-get install -y chromium chromium-driver)"
        )
    runs, beside = demo_runs
    page = tmp_path / "report.html"
    code = main(["report", *map(str, runs), str(beside), "--out", str(page), "--num-images", "3"])
    assert code == 0
    artifacts = Path(os.environ.get("MIMKIT_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    driver = _driver(browser)
    try:
        driver.get(page.resolve().as_uri())
        images = driver.execute_script(
            "return [...document.images].map(i => [i.complete, i.naturalWidth, i.alt]);"
        )
        assert all(done and width > 0 and alt for done, width, alt in images), images
        # attention, features, reconstructions (drawn) + knn/confusion, for each run
        alts = sorted(alt for _, _, alt in images)
        kinds = ("attention", "features", "reconstructions", "knn/confusion")
        assert alts == sorted(f"{k} of run {r.name}" for k in kinds for r in runs)
        # the online kNN curve with its two floors, from the first run's log.jsonl
        titles = driver.execute_script(
            "return [...document.querySelectorAll('svg.chart > title')].map(t => t.textContent);"
        )
        assert "monitor/knn_top1" in titles, titles
        text = driver.find_element("tag name", "body").text
        assert "mae-mask75: raw_pixels" in text and "mae-mask75: random_init" in text
        # every number of the table is its run's metrics.json value (nested keys dotted)
        cells = _table_cells(driver)
        files = {runs[0].name: runs[0] / "knn", runs[1].name: beside}
        metrics = {r: json.loads((f / "metrics.json").read_text()) for r, f in files.items()}
        for run in files:
            assert {(run, "knn/top1"), (run, "knn/top5")} <= set(cells)
        for (run, column), (shown, _, _) in cells.items():
            evaluation, key = column.split("/", 1)
            assert evaluation == "knn", column
            value = metrics[run]
            for part in key.split("."):
                value = value[part]
            assert shown == value, (run, column)
        driver.execute_script("window.scrollTo(0, 0);")
        height = driver.execute_script("return document.body.scrollHeight;")
        driver.set_window_size(1280, min(height + 40, 8000))
        shot = artifacts / "inspect-report-screenshot.png"
        assert driver.save_screenshot(str(shot))
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == []  # no console errors
    finally:
        driver.quit()
    if artifacts != tmp_path:
        shutil.copy(page, artifacts / "inspect-report.html")


@pytest.mark.slow
def test_report_function_draws_every_run_on_the_same_images(demo_runs, tmp_path):
    runs, _ = demo_runs
    images = sorted((CIFAR_MINI / "test" / "frog").iterdir())[:2]
    path = mimkit.report(runs, tmp_path, images=images, title="two mask ratios")
    assert path == tmp_path / "report.html"
    text = path.read_text()
    assert "<title>two mask ratios</title>" in text
    # the pictures drawn here replace the run folders' training-time reconstructions
    assert text.count('alt="reconstructions of run') == 2
    # attention, features, reconstructions for each; the first run's kNN confusion
    assert text.count("<img") == 2 * 3 + 1


# ----------------------------------------------------------------------------- compare


def _preset(tmp_path: Path, method: str) -> Path:
    """A tiny preset for ``method`` (its small CPU preset, shrunk)."""
    from mimkit.config import preset_path

    base = yaml.safe_load(preset_path(f"{method}_vit_tiny_cpu").read_text())
    base["model"].setdefault("args", {}).update(embed_dim=32, depth=1, num_heads=2)
    base["data"].update(num_workers=0, batch_size=16)
    base.setdefault("train", {}).update(tensorboard=False, log_every=2)
    path = tmp_path / f"{method}_tiny.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def test_compare_passes_budget_epochs_and_presets_to_each_run(tmp_path, capsys):
    args = ["compare", "--data", "d", "--methods", "mae,simmim", "--time-budget", "10m",
            "--config-for", f"simmim={_preset(tmp_path, 'simmim')}", "--set",
            "data.num_workers=0", "--dry-run"]  # fmt: skip
    assert main(args) == 0
    printed = yaml.safe_load(capsys.readouterr().out)["compare"]
    assert printed["methods"] == "mae,simmim" and printed["time_budget"] == "10m"
    assert printed["config_for"] == [f"simmim={tmp_path / 'simmim_tiny.yaml'}"]
    values = {"compare.time_budget": "10m", "compare.overrides": ["data.num_workers=0"]}
    cfg, _ = resolve("compare", values=values)
    run = pretrain_config("simmim", str(tmp_path / "simmim_tiny.yaml"), cfg, "d", tmp_path / "s")
    assert run.train.time_budget == "10m" and run.data.num_workers == 0
    assert run.model.name == "simmim_vit_tiny_cifar" and run.model.args["embed_dim"] == 32
    with pytest.raises(UserError, match="not a mae model"):
        pretrain_config("mae", str(tmp_path / "simmim_tiny.yaml"), cfg, "d", tmp_path / "m")
    assert main(["compare", "--data", "d", "--methods", "mae"]) == 2
    assert "--time-budget" in capsys.readouterr().err  # neither budget nor epochs
    assert main(["compare", "--data", "d", "--epochs", "1", "--methods", "mae,maee"]) == 2
    assert "unknown method 'maee'" in capsys.readouterr().err
    assert main(["compare", "--data", "d", "--epochs", "1", "--methods", "mae",
                 "--config-for", "ibot=x"]) == 2  # fmt: skip
    assert "not among the compared methods" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_two_methods_end_to_end(labeled_root, tmp_path):
    rows = mimkit.compare(
        data=labeled_root,
        methods="mae,simmim",
        epochs=1,
        config_for={m: str(_preset(tmp_path, m)) for m in ("mae", "simmim")},
        eval_overrides=["train.epochs=2", "eval.cache_dir=none", "data.num_workers=0"],
        out=tmp_path / "cmp",
    )
    assert [r["run"] for r in rows] == [r["method"] for r in rows] == ["mae", "simmim"]
    for row in rows:
        for job in ("knn", "linprobe"):
            metrics = json.loads((tmp_path / "cmp" / row["run"] / job / "metrics.json").read_text())
            assert row[f"{job}/top1"] == metrics["top1"]
        assert row["pretrain/seconds"] > 0 and row["pretrain/loss"] > 0
        assert (
            yaml.safe_load((rows.out / row["run"] / "config.yaml").read_text())["train"]["epochs"]
            == 1
        )
    assert json.loads((rows.out / "comparison.json").read_text())["rows"] == list(rows)
    assert rows.report == rows.out / "report.html"
    text = rows.report.read_text()
    assert text.count('alt="attention of run') == 2 and "simmim" in format_rows(rows)
