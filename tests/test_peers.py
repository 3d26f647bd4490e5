"""benchmarks/compare_peers.py in its smoke mode: every installed peer builds, steps in
fp32 and bf16, and the ratios and JSON come out; an absent peer is skipped, not fatal."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_peers.py"


def _load():
    spec = importlib.util.spec_from_file_location("compare_peers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peer_benchmark_smoke(tmp_path, capsys):
    peers = _load()
    out = tmp_path / "peers.jsonl"
    missing_checkout = tmp_path / "no-mae"  # no models_mae.py: the official peers are skipped
    result = peers.main(["--smoke", "--official", str(missing_checkout), "--json", str(out)])
    assert set(result["skipped"]) >= {"official", "official-sdpa"}
    ran = [i for i in peers.DEFAULT_IMPLS if i not in result["skipped"]]  # compile: opt-in
    assert "mimkit" in ran
    assert set(result["results"]) == {f"{i} {p}" for i in ran for p in ("fp32", "bf16")}
    assert all(r["img_s"] > 0 for r in result["results"].values())
    assert set(result["ratios"]) == set(ran) - {"mimkit"}
    assert all(r["best"] > 0 for r in result["ratios"].values())
    assert json.loads(out.read_text().splitlines()[-1])["case"] == "smoke"
    printed = capsys.readouterr().out
    assert "skipping official: no official checkout" in printed and "mimkit bf16" in printed


def test_peer_memory_child_reports_peak_rss():
    peers = _load()
    r = peers.peak_rss_child("mimkit", "bf16", "smoke", None, False, 1)
    assert r["peak_rss_mb"] >= r["rss_after_imports_mb"] > 0
