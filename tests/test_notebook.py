"""The notebook in examples/ runs top to bottom (quick mode) on the shipped sample."""

from __future__ import annotations

import os

import pytest

from .conftest import ROOT


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch, labeled_root):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    # the suite's small labeled set (64 train / 32 val real CIFAR-10 images) keeps it quick;
    # the notebook itself defaults to the shipped sample
    monkeypatch.setenv("MIMKIT_DATA", str(labeled_root))
    monkeypatch.setenv("MIMKIT_QUICK", "1")
    monkeypatch.setenv("MIMKIT_CACHE", str(tmp_path / "cache"))
    nb = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute(env=dict(os.environ))
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "kNN top-1" in text and "fine-tuned top-1" in text and "UserError:" in text
    pictures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pictures) >= 3  # loss curve, reconstructions, confusion matrices
    assert (tmp_path / "runs" / "notebook-mae" / "checkpoint-last.pth").is_file()
