"""The 2-epoch iBOT diagnostic of docs/BENCHMARKS.md: the CPU recipe's iBOT settings for 2
full epochs of the 50k CIFAR-10 training images, then kNN of the teacher and the student.
Paths are those of the 2026-11-26 run (the recipe script's --work folder)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from cifar10_recipe import RECIPES, _merge  # noqa: E402

import mimkit  # noqa: E402

WORK = Path("/tmp/bench-cpu")
OUT = Path("/tmp/ibot-long")

settings = _merge(RECIPES["cpu"]["ibot"], {"epochs": 2, "name": "ibot-2ep"})
run = mimkit.pretrain(data=WORK / "cifar10" / "train", out=OUT / "pretrain", **settings)
labeled = {
    "data.file_list": str(WORK / "train.txt"),
    "data.val_list": str(WORK / "test.txt"),
    "eval.cache_dir": "none",
}
for net in ("teacher", "student"):
    knn = mimkit.knn(
        run.checkpoint,
        data=WORK / "cifar10",
        out=OUT / f"knn-{net}",
        **labeled,
        **{"model.checkpoint_network": net},
    )
    print("KNN", net, json.dumps({k: v["top1"] for k, v in knn["per_k"].items()}), flush=True)
