"""The run-comparison page: reading run folders, the table rows, and the page itself,
opened in a real headless Chromium (skipped only where no browser is installed)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mimkit.errors import UserError
from mimkit.report import best_per_column, build_report, comparison_rows, read_run
from mimkit.report.collect import baseline_of, config_differences, read_runs
from mimkit.viz.attention import draw_attention

STEPS = 300


def _loss(step: int, offset: float) -> float:
    return 2.0 * math.exp(-step / 80) + 0.3 + offset + 0.01 * math.sin(step)


def _lr(step: int, blr: float) -> float:
    warm = 30
    if step < warm:
        return blr * step / warm
    return blr * 0.5 * (1 + math.cos(math.pi * (step - warm) / (STEPS - warm)))


def _config(out: Path, blr: float, mask_ratio: float) -> dict:
    return {
        "task": "pretrain",
        "name": "mae_vit_tiny_cifar",
        "out": str(out),
        "model": {"name": "mae_vit_tiny_cifar", "mask_ratio": mask_ratio, "args": {"depth": 6}},
        "data": {"img_size": 32, "batch_size": 64, "path": "examples/cifar10-mini/train"},
        "optim": {"blr": blr, "weight_decay": 0.05, "betas": [0.9, 0.95]},
        "train": {"epochs": 10, "precision": "auto", "precision_resolved": "bf16", "seed": 0},
    }


def _log_lines(blr: float, offset: float, knn_gain: float) -> list[str]:
    t0 = 1_700_000_000.0
    rows: list[dict] = [
        {"time": t0, "kind": "run", "device": "cpu", "hostname": "testbox", "world_size": 1},
        {"time": t0, "kind": "monitor", "step": 0, "knn_top1_raw_pixels": 24.5},
        {"time": t0, "kind": "monitor", "step": 0, "knn_top1_random_init": 19.25},
    ]
    for step in range(1, STEPS + 1):
        rows.append(
            {
                "time": t0 + 0.5 * step,
                "kind": "train",
                "epoch": (step - 1) // 30 + 1,
                "step": step,
                "loss": _loss(step, offset),
                "lr": _lr(step, blr),
                "img_s": 400.0 + (step % 7),
                "data_wait": 0.01,
            }
        )
        if step % 30 == 0:
            epoch = step // 30
            rows.append(
                {"time": t0 + 0.5 * step, "kind": "epoch", "epoch": epoch, "step": step,
                 "loss": _loss(step, offset), "skipped_images": 0}
            )  # fmt: skip
            rows.append(
                {"time": t0 + 0.5 * step, "kind": "monitor", "epoch": epoch, "step": step,
                 "knn_top1": 20 + knn_gain * epoch}
            )  # fmt: skip
    lines = [json.dumps(r) for r in rows]
    return lines + ['{"time": 1700000200.0, "kind": "train", "step": 3']  # killed mid-line


KNN_KEYS = ("top1", "top5")


def _metrics(folder: Path, metrics: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))


def _confusion_png(path: Path, seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.random.default_rng(seed).integers(0, 20, (4, 4))
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(cm, cmap="Blues")
    ax.set_title("kNN (k=20)")
    fig.savefig(path, dpi=60)
    plt.close(fig)


def make_run(root: Path, name: str, blr: float, offset: float, knn: float, qscore: bool) -> Path:
    """A realistic finished run folder: config, log, kNN + linear probe (+ Q-score)."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(_config(run, blr, 0.75 if qscore else 0.6)))
    (run / "log.jsonl").write_text("\n".join(_log_lines(blr, offset, knn / 50)) + "\n")
    per_class = {"airplane": knn + 3, "cat": knn - 3}
    _metrics(
        run / "knn",
        {"protocol": "knn", "checkpoint": str(run / "checkpoint-last.pth"), "pool": "cls",
         "temperature": 0.07, "best_k": 20, "k": {"10": {"top1": knn - 1, "top5": 70.0},
         "20": {"top1": knn, "top5": 71.5}}, "top1": knn, "top5": 71.5,
         "per_class": per_class, "num_images": 500, "num_train": 2000, "skipped_images": 0},
    )  # fmt: skip
    _metrics(
        run / "linprobe",
        {"protocol": "linprobe", "checkpoint": "x", "top1": knn + 5.125, "top5": 80.25,
         "best_top1": knn + 6, "val/loss": 1.5 - knn / 100, "epochs": 90, "num_images": 500},
    )  # fmt: skip
    if qscore:
        _metrics(run / "qscore", {"protocol": "qscore", "num_images": 500, "mean": 0.4375})
    Image.fromarray(
        np.random.default_rng(len(name)).integers(0, 255, (64, 128, 3), dtype=np.uint8)
    ).save(run / "reconstructions.png")
    _confusion_png(run / "knn" / "confusion.png", len(name))
    (run / "loss.png").write_bytes((run / "reconstructions.png").read_bytes())  # not shown
    return run


@pytest.fixture
def two_runs(tmp_path) -> list[Path]:
    return [
        make_run(tmp_path / "runs", "mae-blr4e-3", 4e-3, 0.0, 31.5, qscore=True),
        make_run(tmp_path / "runs", "mae-blr2e-3", 2e-3, 0.05, 28.25, qscore=False),
    ]


def _attention_pictures(runs: list[Path]) -> dict:
    """What the CLI passes: one attention picture per run, on the same images."""
    display = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return {
        "attention (last block)": {
            run: draw_attention(display, torch.rand(2, 3, 4, 4), tile=48) for run in runs
        }
    }


# ----------------------------------------------------------------------------- reading


def test_read_run_finds_series_evaluations_pictures_and_info(two_runs):
    run = read_run(two_runs[0])
    assert run.bad_log_lines == 1  # the truncated last line
    assert {"loss", "lr", "img_s", "epoch/loss", "monitor/knn_top1"} <= set(run.series)
    assert len(run.series["loss"].x) == STEPS and run.series["loss"].x_name == "step"
    assert run.series["monitor/knn_top1_raw_pixels"].y == [24.5]
    names = list(run.series)
    assert baseline_of("monitor/knn_top1_raw_pixels", names) == "monitor/knn_top1"
    assert baseline_of("monitor/knn_top1_random_init", names) == "monitor/knn_top1"
    assert baseline_of("monitor/knn_top1", names) is None
    assert [e.name for e in run.evaluations] == ["knn", "linprobe", "qscore"]
    assert list(run.pictures) == ["reconstructions", "knn/confusion"]  # loss.png left out
    assert run.info["device"] == "cpu" and run.info["hostname"] == "testbox"
    assert run.info["precision"] == "bf16"
    assert run.info["wall-clock"] == "0:02:30"  # 300 steps at 0.5 s
    assert run.info["steps"] == "300"


def test_comparison_rows_are_the_headline_numbers(two_runs):
    rows = comparison_rows(two_runs)
    assert rows[0] == {
        "run": "mae-blr4e-3",
        "knn/top1": 31.5,
        "knn/top5": 71.5,
        "linprobe/top1": 36.625,
        "linprobe/top5": 80.25,
        "linprobe/best_top1": 37.5,
        "linprobe/val/loss": 1.5 - 0.315,
        "qscore/mean": 0.4375,
    }
    assert "qscore/mean" not in rows[1]  # that run has no Q-score
    best = best_per_column(rows)
    assert best["knn/top1"] == {"mae-blr4e-3"}
    assert best["linprobe/val/loss"] == {"mae-blr4e-3"}  # lower is better for a loss
    assert best["knn/top5"] == {"mae-blr4e-3", "mae-blr2e-3"}  # a tie marks both
    assert "qscore/mean" not in best  # one value is no comparison


def test_config_differences_and_unique_names(tmp_path, two_runs):
    runs = read_runs(two_runs)
    assert config_differences(runs) == ["model.mask_ratio", "optim.blr"]  # 'out' ignored
    twin = make_run(tmp_path / "other", "mae-blr4e-3", 4e-3, 0.0, 30.0, qscore=False)
    names = [r.name for r in read_runs([two_runs[0], twin])]
    assert names == ["runs/mae-blr4e-3", "other/mae-blr4e-3"]


def test_bad_inputs_are_refused(tmp_path, two_runs):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a run"):
        build_report([tmp_path / "empty"], tmp_path / "r.html")
    with pytest.raises(UserError, match="does not exist"):
        build_report([tmp_path / "missing"], tmp_path / "r.html")
    with pytest.raises(UserError, match="not one of the runs"):
        build_report(two_runs, tmp_path / "r.html", {"attention": {tmp_path / "x": "a.png"}})


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_page_is_self_contained_and_accessible(tmp_path, two_runs):
    out = build_report(two_runs, tmp_path, _attention_pictures(two_runs))
    assert out == tmp_path / "report.html"
    text = out.read_text()
    parser = _Tags()
    parser.feed(text)
    tags = parser.tags
    assert ("html", {"lang": "en"}) in tags
    imgs = [a for t, a in tags if t == "img"]
    assert len(imgs) == 2 * 3  # attention, reconstructions, knn/confusion for each run
    assert all(a["src"].startswith("data:image/") and a["alt"].strip() for a in imgs)
    assert all(a.get("scope") in ("col", "row", "colgroup") for t, a in tags if t == "th")
    for t, a in tags:  # nothing fetched at view time
        for key in ("src", "href"):
            assert not re.match(r"(https?:)?//", a.get(key) or ""), (t, a)
    assert not [a for t, a in tags if t == "script" and "src" in a]
    assert "@media print" in text and text.count("<svg") >= 4


# ----------------------------------------------------------------------------- browser


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if path := shutil.which(name):
            return path
    return None


def _driver(browser: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver_path = shutil.which("chromedriver")
    if driver_path is None:  # Selenium Manager would try to download one: no network
        pytest.fail(f"{browser} is installed but chromedriver is not (apt: chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
        f"--user-data-dir={tempfile.mkdtemp(prefix='mimkit-chromium-')}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_path), options=options)


def _table_cells(driver) -> dict[tuple[str, str], tuple[float, str, bool]]:
    cells = driver.execute_script(
        "return [...document.querySelectorAll('#evaluations-table td[data-column]')].map("
        "c => [c.dataset.run, c.dataset.column, c.dataset.value, c.innerText,"
        " c.classList.contains('best')]);"
    )
    return {(r, c): (float(v), text, best) for r, c, v, text, best in cells}


def _check_table(driver, runs: list[Path]) -> None:
    """Every headline number in the table equals the run's metrics.json value."""
    cells = _table_cells(driver)
    expected = {}
    for run in runs:
        knn = json.loads((run / "knn" / "metrics.json").read_text())
        lin = json.loads((run / "linprobe" / "metrics.json").read_text())
        expected.update({(run.name, f"knn/{k}"): knn[k] for k in KNN_KEYS})
        for k in ("top1", "top5", "best_top1", "val/loss"):
            expected[(run.name, f"linprobe/{k}")] = lin[k]
        q = run / "qscore" / "metrics.json"
        if q.is_file():
            expected[(run.name, "qscore/mean")] = json.loads(q.read_text())["mean"]
    assert set(cells) == set(expected)
    for key, value in expected.items():
        shown, text, _ = cells[key]
        assert shown == value, key
        assert float(text.split()[0].replace(",", "")) == pytest.approx(value, rel=1e-3), key
    assert cells[("mae-blr4e-3", "knn/top1")][2] and not cells[("mae-blr2e-3", "knn/top1")][2]


def _hover_loss_chart(driver, runs: list[Path]) -> str:
    """Hover the loss chart; the tooltip names a run, a step and that run's logged loss."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    svg = next(
        s
        for s in driver.find_elements(By.CSS_SELECTOR, "svg.chart")
        if s.find_element(By.TAG_NAME, "title").get_attribute("textContent") == "Training loss"
    )
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", svg)
    ActionChains(driver).move_to_element_with_offset(svg, -40, 0).perform()
    tip = svg.find_element(By.CSS_SELECTOR, ".tip")
    assert tip.get_attribute("visibility") == "visible"
    text = tip.find_element(By.TAG_NAME, "text").get_attribute("textContent")
    m = re.fullmatch(r"(.+) \u00b7 step (\d+): ([-\d.e+]+)", text)
    assert m, text
    run = {r.name: r for r in runs}[m.group(1)]
    logged = {
        r["step"]: r["loss"]
        for line in (run / "log.jsonl").read_text().splitlines()[:-1]
        if (r := json.loads(line)).get("kind") == "train"
    }
    assert float(m.group(3)) == pytest.approx(logged[int(m.group(2))], rel=1e-3)
    return text


@pytest.mark.slow
def test_page_in_a_headless_browser(tmp_path, two_runs):
    browser = _browser()
    if browser is None:
        pytest.skip(
            "no Chromium/Chrome binary installed (apt-get install -y chromium chromium-driver)"
        )
    out = build_report(two_runs, tmp_path / "report.html", _attention_pictures(two_runs))
    artifacts = Path(os.environ.get("MIMKIT_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    driver = _driver(browser)
    try:
        driver.get(out.resolve().as_uri())
        images = driver.execute_script(
            "return [...document.images].map(i => [i.complete, i.naturalWidth, i.alt]);"
        )
        assert len(images) == 6
        assert all(done and width > 0 and alt for done, width, alt in images), images
        _check_table(driver, two_runs)
        _hover_loss_chart(driver, two_runs)
        driver.execute_script("window.scrollTo(0, 0);")
        height = driver.execute_script("return document.body.scrollHeight;")
        driver.set_window_size(1280, min(height + 40, 8000))
        shot = artifacts / "report-screenshot.png"
        assert driver.save_screenshot(str(shot))
        with Image.open(shot) as img:
            assert img.width >= 1000 and img.height >= 900
        # the print stylesheet hides the navigation and the hover parts
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
        assert (
            driver.execute_script("return getComputedStyle(document.querySelector('nav')).display;")
            == "none"
        )
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == []
    finally:
        driver.quit()
    if artifacts != tmp_path:  # CI keeps the page beside its screenshot
        shutil.copy(out, artifacts / "report.html")
