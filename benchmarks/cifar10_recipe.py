"""CIFAR-10 end to end: MAE and iBOT pretraining at the same wall-clock budget, then kNN
and linear probe for MAE, iBOT, a random-init encoder and raw pixels (the floor any
feature must beat), and fine-tuning MAE-initialised vs from scratch.

    python benchmarks/cifar10_recipe.py --recipe cpu --data ../shared/data/cifar10.tar.gz
    python benchmarks/cifar10_recipe.py --recipe gpu --data /data/cifar10
    python benchmarks/cifar10_recipe.py --recipe cpu --data examples/cifar10-mini --smoke

--data is ROOT with train/<class>/ and test/<class>/ JPEGs, or the .tar.gz holding them
(extracted once into --work). Every step is a call of mimkit's Python API (the same
recipes as the CLI); the numbers, wall-clock per step and the settings are appended as
one JSON line to benchmarks/results/cifar10_<recipe>.jsonl, run folders stay under --work.

Same budget: MAE pretrains for its epochs and is timed; iBOT then gets the same seconds:
a short timed run measures its seconds per step, and its schedule is sized to fit (whole
epochs on all images, or one epoch on a random subset when an epoch does not fit), so both
finish their lr schedules.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import random
import tarfile
import time
from pathlib import Path

import torch

import mimkit

RESULTS = Path(__file__).parent / "results"
ENCODER = {"model.args.depth": 6}  # both methods: a 6-block ViT-Tiny/4 encoder (192 wide)

RECIPES = {
    # ~1 hour on 2 CPU cores (see docs/BENCHMARKS.md)
    "cpu": {
        "mae": dict(
            config="mae_vit_tiny_cifar",
            epochs=3,
            batch_size=128,
            **ENCODER,
            **{
                "model.args.decoder_embed_dim": 128,
                "model.args.decoder_depth": 2,
                "model.args.decoder_num_heads": 4,
                "optim.blr": 1e-3,
                "optim.warmup_epochs": 0.5,
                "train.save_every": 1,
                "data.num_workers": 2,
                "train.log_every": 50,
            },
        ),
        # iBOT with a head sized for the CPU budget (the official 2048-wide MLP to 8192
        # prototypes costs ~15x the 6-block encoder per patch token on 32 px images)
        "ibot": dict(
            config="ibot_vit_tiny_cifar",
            batch_size=128,
            **ENCODER,
            **{
                "model.args.out_dim": 1024,
                "model.args.head_hidden_dim": 512,
                "model.args.head_bottleneck_dim": 128,
                "model.args.local_crops_number": 4,
                "model.args.warmup_teacher_temp_epochs": 0,
                "model.args.teacher_temp": 0.04,
                "model.args.teacher_patch_temp": 0.04,
                "model.args.momentum_teacher": 0.99,
                "optim.blr": 1e-3,
                "optim.warmup_epochs": 0.5,
                "train.save_every": 1,
                "data.num_workers": 2,
                "train.log_every": 50,
            },
        ),
        "encoder": {"model.name": "mae_vit_tiny_cifar", **ENCODER},
        "linprobe": dict(
            epochs=30,
            batch_size=256,
            **{"linprobe.optimizer": "sgd", "optim.blr": 0.1, "optim.warmup_epochs": 3},
        ),
        "finetune": dict(
            epochs=2,
            batch_size=128,
            **{
                "optim.warmup_epochs": 0.2,
                "finetune.mixup": 0,
                "finetune.cutmix": 0,
                "finetune.auto_augment": None,
                "finetune.reprob": 0,
                "train.eval_every": 2,
                "data.num_workers": 2,
            },
        ),
        "finetune_subset": 10_000,
    },
    # One H100 (not yet run): the full ViT-Tiny presets, 400 epochs, then 100 fine-tune epochs.
    "gpu": {
        "mae": dict(
            config="mae_vit_tiny_cifar",
            epochs=400,
            batch_size=512,
            **{"data.num_workers": 16, "train.save_every": 50},
        ),
        "ibot": dict(
            config="ibot_vit_tiny_cifar",
            batch_size=512,
            **{"data.num_workers": 16, "train.save_every": 50},
        ),
        "encoder": {"model.name": "mae_vit_tiny_cifar"},
        "linprobe": dict(epochs=90, batch_size=1024),
        "finetune": dict(
            epochs=100,
            batch_size=256,
            **{"optim.blr": 1e-3, "data.num_workers": 16, "train.eval_every": 10},
        ),
        "finetune_subset": None,
    },
}
SMOKE = {  # a few steps of everything, for the test suite
    "pretrain": {
        "epochs": 1,
        "train.max_steps": 2,
        "batch_size": 16,
        "data.num_workers": 0,
        "model.args.depth": 1,
        "train.tensorboard": False,
    },
    "mae": {"model.args.decoder_depth": 1},
    "ibot": {
        "model.args.out_dim": 64,
        "model.args.head_hidden_dim": 64,
        "model.args.head_bottleneck_dim": 32,
        "model.args.local_crops_number": 2,
    },
    "encoder": {"model.args.depth": 1},
    "eval": {
        "batch_size": 16,
        "epochs": 1,
        "train.max_steps": 2,
        "data.num_workers": 0,
        "train.tensorboard": False,
        "eval.batch_size": 64,
    },
}


def prepare_data(data: str, work: Path) -> Path:
    path = Path(data)
    if path.is_dir():
        return path
    out = work / "cifar10"
    if not (out / "train").is_dir():
        print(f"extracting {path} -> {out}", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path) as tar:
            tar.extractall(out, filter="data")
    return out


def write_lists(root: Path, work: Path, subset: int | None, seed: int = 0) -> tuple[Path, Path]:
    """train.txt (optionally a class-balanced random subset) and test.txt, 'path label' lines."""
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    lists = []
    for split, n in (("train", subset), ("test", None)):
        rows = []
        for label, cls in enumerate(classes):
            files = sorted((root / split / cls).glob("*.jpg"))
            if n is not None:
                files = random.Random(seed + label).sample(
                    files, min(n // len(classes), len(files))
                )
            rows += [f"{split}/{cls}/{f.name} {label}" for f in files]
        path = work / f"{split}{'-' + str(n) if n else ''}.txt"
        path.write_text("\n".join(rows) + "\n")
        lists.append(path)
    return lists[0], lists[1]


class Steps:
    """Runs mimkit jobs in this process, timing each and keeping its settings."""

    def __init__(self):
        self.log: dict[str, dict] = {}

    def __call__(self, step: str, job, *args, **values):
        print(f"\n== {step}", flush=True)
        t0 = time.perf_counter()
        result = job(*args, **values)
        seconds = time.perf_counter() - t0
        shown = {k: str(v) for k, v in values.items()}
        self.log[step] = {"seconds": round(seconds, 1), "args": [str(a) for a in args], **shown}
        return result


def _merge(*parts: dict) -> dict:
    out: dict = {}
    for p in parts:
        out.update(p)
    return out


def ibot_budget(
    steps: Steps, root: Path, work: Path, settings: dict, seconds: float, smoke: bool
) -> tuple[dict, Path]:
    """Size iBOT's schedule to ``seconds``: time a few steps, then whole epochs on all
    images, or one epoch on a class-balanced subset when an epoch does not fit. Returns
    (settings, data path)."""
    if smoke:
        return {}, root / "train"
    probe = work / "ibot-calibrate"
    calib = _merge(
        settings,
        {"epochs": 1, "train.max_steps": 40, "train.log_every": 10, "name": "ibot-calibrate"},
    )
    steps("ibot-calibrate", mimkit.pretrain, data=root / "train", out=probe, **calib)
    rows = [json.loads(line) for line in (probe / "log.jsonl").read_text().splitlines()]
    rates = [r["img_s"] for r in rows if r["kind"] == "train"][1:]  # the first has start-up
    if not rates:
        raise SystemExit(f"{probe / 'log.jsonl'}: no timed steps to size iBOT's budget from")
    img_s = sorted(rates)[len(rates) // 2]
    images = int(seconds * img_s)
    n_train = sum(1 for _ in (root / "train").rglob("*.jpg"))
    if images >= n_train:
        return {
            "epochs": max(1, round(images / n_train)),
            "calibrated_img_s": img_s,
        }, root / "train"
    subset, _ = write_lists(root, work, images)
    return {"epochs": 1, "data.file_list": str(subset), "calibrated_img_s": img_s}, root


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--recipe", choices=list(RECIPES), default="cpu")
    p.add_argument("--data", required=True)
    p.add_argument("--work", default="runs/cifar10-recipe")
    p.add_argument("--methods", nargs="+", default=["mae", "ibot"], choices=["mae", "ibot"])
    p.add_argument("--smoke", action="store_true", help="a few steps of each job (tests)")
    p.add_argument("--results", default=None, help="JSONL to append to")
    args = p.parse_args()
    recipe, smoke = RECIPES[args.recipe], args.smoke
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    root = prepare_data(args.data, work)
    ft_train, test = write_lists(root, work, None if smoke else recipe["finetune_subset"])
    all_train, _ = write_lists(root, work, None)
    log = {
        "date": datetime.date.today().isoformat(),
        "recipe": args.recipe,
        "smoke": smoke,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "host": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "results": {},
    }
    steps, t_start = Steps(), time.perf_counter()
    pre_smoke = SMOKE["pretrain"] if smoke else {}

    checkpoints = {}
    if "mae" in args.methods:
        out = work / "pretrain"
        steps(
            "pretrain",
            mimkit.pretrain,
            data=root / "train",
            out=out,
            **_merge(recipe["mae"], pre_smoke, SMOKE["mae"] if smoke else {}),
        )
        checkpoints["mae"] = out / "checkpoint-last.pth"
    if "ibot" in args.methods:
        seconds = steps.log.get("pretrain", {}).get("seconds", 900.0)
        budget, data = ibot_budget(steps, root, work, recipe["ibot"], seconds, smoke)
        img_s = budget.pop("calibrated_img_s", None)
        out = work / "pretrain-ibot"
        settings = _merge(recipe["ibot"], budget, pre_smoke, SMOKE["ibot"] if smoke else {})
        steps("pretrain-ibot", mimkit.pretrain, data=data, out=out, **settings)
        checkpoints["ibot"] = out / "checkpoint-last.pth"
        log["ibot_budget"] = {
            "mae_seconds": seconds,
            "calibrated_img_s": img_s,
            **{k: str(v) for k, v in budget.items()},
        }

    labeled = dict(data=root, **{"data.file_list": str(all_train), "data.val_list": str(test)})
    eval_smoke = SMOKE["eval"] if smoke else {}
    encoder = _merge(recipe["encoder"], SMOKE["encoder"] if smoke else {})
    arms = {name: (ckpt, {}) for name, ckpt in checkpoints.items()}
    arms["random"] = ("none", encoder)
    arms["pixels"] = ("none", {"model.name": "raw_pixels", "data.img_size": 32})
    cache = {"eval.cache_dir": "none"}
    for arm, (ckpt, extra) in arms.items():
        knn_values = _merge(extra, cache, {k: v for k, v in eval_smoke.items() if "eval." in k})
        knn = steps(
            f"knn-{arm}", mimkit.knn, ckpt, out=work / f"knn-{arm}", **labeled, **knn_values
        )
        probe = steps(
            f"linprobe-{arm}",
            mimkit.linprobe,
            ckpt,
            out=work / f"linprobe-{arm}",
            **labeled,
            **_merge(extra, cache, recipe["linprobe"], eval_smoke),
        )
        log["results"][f"knn_{arm}"] = {k: v["top1"] for k, v in knn["per_k"].items()}
        log["results"][f"linprobe_{arm}"] = probe["top1"]

    if "mae" in checkpoints:
        ft_data = dict(data=root, **{"data.file_list": str(ft_train), "data.val_list": str(test)})
        for arm, (ckpt, extra) in (
            ("mae", (checkpoints["mae"], {})),
            ("scratch", ("none", encoder)),
        ):
            ft = steps(
                f"finetune-{arm}",
                mimkit.finetune,
                ckpt,
                out=work / f"finetune-{arm}",
                **ft_data,
                **_merge(extra, recipe["finetune"], eval_smoke),
            )
            log["results"][f"finetune_{arm}"] = ft["top1"]

    log["steps"] = steps.log
    log["total_minutes"] = round((time.perf_counter() - t_start) / 60, 2)
    results = Path(args.results) if args.results else RESULTS / f"cifar10_{args.recipe}.jsonl"
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a") as f:
        f.write(json.dumps(log) + "\n")
    print("\n" + json.dumps(log["results"], indent=2))
    print(f"total {log['total_minutes']} min -> {results}")


if __name__ == "__main__":
    main()
