"""Time to accuracy: the kNN a user gets after 5, 10 and 15 minutes of MAE pretraining,
for mimkit's small-budget preset and for the official facebookresearch/mae training loop
with the same model, hyperparameters, data and wall-clock budget.

Each implementation pretrains once for ``--budget`` with every schedule sized to end at
the budget (mimkit: ``train.time_budget``; official: the same plan computed the same way,
from its first 10 timed steps), saving a checkpoint after every epoch with the training
seconds it took. The checkpoint last written before each mark is scored by the same kNN
(mimkit's, k=20 weighted cosine, T=0.07, [CLS]) on ROOT/train -> ROOT/test. Rows go to
benchmarks/results/time_to_accuracy.jsonl.

    # /tmp/mae: models_mae.py + util/pos_embed.py of facebookresearch/mae (not in mimkit)
    python benchmarks/time_to_accuracy.py --data /tmp/cifar10 --official /tmp/mae \\
        --budget 15m --marks 5m,10m,15m

The official arm is ``main_pretrain.py`` + ``engine_pretrain.py`` as they run (ImageFolder
with PIL decode, RandomResizedCrop(scale 0.2-1, bicubic) + flip, a DataLoader with
``--workers`` processes, AdamW on timm's weight-decay groups with betas 0.9/0.95, the
per-iteration warm-up + half-cosine lr) under bf16 autocast (its best CPU mode; its own
default is fp32, 2x slower here), minus what does not run on a CPU (the GradScaler).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import mimkit  # noqa: E402
from mimkit.engine.loop import parse_seconds as parse_duration  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "time_to_accuracy.jsonl"


def run_mimkit(args, out: Path) -> tuple[list[tuple[float, Path]], dict]:
    if args.mimkit_run:  # a finished run with train.save_every=1 (e.g. small_budget.py's)
        from mimkit.config import load_config

        out = Path(args.mimkit_run)
        config = load_config(str(out / "config.yaml"))
    else:
        keys = {"train.save_every": 1, "eval.monitor": False, "data.num_workers": args.workers}
        run = mimkit.pretrain(args.preset, data=str(Path(args.data) / "train"), out=str(out),
                              time_budget=args.budget, **keys)  # fmt: skip
        config = run.config
    snaps = []
    for ckpt in sorted(out.glob("checkpoint-0*.pth")):
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        snaps.append((float(state["train_seconds"]), ckpt))
    return snaps, config


def run_official(args, cfg, out: Path) -> list[tuple[float, Path]]:
    """main_pretrain.py's loop on the official model, sized to the budget like mimkit."""
    import torchvision.datasets as datasets
    import torchvision.transforms as T
    from compare_peers import _official
    from timm.optim import param_groups_weight_decay

    torch.manual_seed(cfg.train.seed)
    out.mkdir(parents=True, exist_ok=True)
    a = cfg.model.args
    case = dict(img=cfg.data.img_size, patch=a.get("patch_size", 4),
                enc=(a.get("embed_dim", 192), a.get("depth", 12), a.get("num_heads", 3)),
                dec=(a.get("decoder_embed_dim", 192), a.get("decoder_depth", 4),
                     a.get("decoder_num_heads", 3)))  # fmt: skip
    model = _official(args.official, case)
    model.norm_pix_loss = cfg.model.norm_pix_loss
    size = cfg.data.img_size
    tf = T.Compose([
        T.RandomResizedCrop(size, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])  # fmt: skip
    data = datasets.ImageFolder(str(Path(args.data) / "train"), transform=tf)
    batch = cfg.data.batch_size
    loader = torch.utils.data.DataLoader(
        data, batch_size=batch, shuffle=True, num_workers=args.workers, drop_last=True,
        persistent_workers=args.workers > 0,
    )  # fmt: skip
    lr = cfg.optim.lr or cfg.optim.blr * batch / 256
    groups = param_groups_weight_decay(model, cfg.optim.weight_decay)
    opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.optim.betas))
    per_epoch = len(loader)
    warm = cfg.optim.warmup_epochs
    budget = parse_duration(args.budget)

    def adjust(epoch_float: float, epochs: float) -> None:  # util/lr_sched.py
        if epoch_float < warm:
            v = lr * epoch_float / warm
        else:
            v = cfg.optim.min_lr + (lr - cfg.optim.min_lr) * 0.5 * (
                1.0 + math.cos(math.pi * (epoch_float - warm) / (epochs - warm))
            )
        for g in opt.param_groups:
            g["lr"] = v

    model.train()
    snaps, step, total, epochs, t0 = [], 0, None, None, time.perf_counter()
    epoch, t1 = 0, None
    while total is None or step < total:
        for images, _ in loader:
            if step == 1:
                t1 = time.perf_counter()
            if total is None and step == 11:  # the plan: mimkit's rule (engine.loop): the
                now = time.perf_counter()  # rate leaves the first step out, its time counts
                rate = (now - t1) / 10
                total = step + int(max(budget - (now - t0), 0) // rate)
                epochs = total / per_epoch
                print(f"official: {rate:.3f} s/step -> {total} steps "
                      f"({epochs:.2f} epochs)", flush=True)  # fmt: skip
            if total is not None and step >= total:
                break
            adjust(step / per_epoch, epochs or 1e9)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(images, mask_ratio=cfg.model.mask_ratio)[0]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step % 50 == 0:
                print(f"official: step {step} loss {loss.item():.4f}", flush=True)
        epoch += 1
        seconds = time.perf_counter() - t0
        ckpt = out / f"checkpoint-{epoch:04d}.pth"
        torch.save({"model": model.state_dict(), "epoch": epoch}, ckpt)
        snaps.append((seconds, ckpt))
    return snaps


def knn(ckpt: Path, args, cfg, out: Path) -> float:
    a = cfg.model.args
    keys = {"eval.baselines": False, "data.num_workers": args.workers}
    keys |= {f"model.args.{k}": v for k, v in a.items()}
    r = mimkit.knn(str(ckpt), data=args.data, out=str(out), model=cfg.model.name, **keys)
    return r["per_k"]["20"]["top1"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="ROOT with train/ and test/ class folders")
    p.add_argument("--official", help="facebookresearch/mae checkout (models_mae.py)")
    p.add_argument("--preset", default="mae_vit_tiny_cpu")
    p.add_argument("--budget", default="15m")
    p.add_argument("--marks", default="5m,10m,15m")
    p.add_argument("--impls", default="mimkit,official")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--mimkit-run", help="reuse a finished mimkit run (train.save_every=1)")
    p.add_argument("--out", default="runs/time_to_accuracy")
    args = p.parse_args()
    out = Path(args.out) / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    marks = [parse_duration(m) for m in args.marks.split(",")]
    impls = args.impls.split(",")

    snaps, cfg = run_mimkit(args, out / "mimkit")
    runs = {"mimkit": snaps}
    if "official" in impls:
        runs["official"] = run_official(args, cfg, (out / "official"))
    stamp = {"date": datetime.date.today().isoformat(), "data": args.data,
             "budget": args.budget, "preset": args.preset, "cpu": platform.processor(),
             "threads": torch.get_num_threads()}  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    for impl, snaps in runs.items():
        if impl not in impls:
            continue
        row = {"impl": impl, "epochs_saved": [(round(s, 1), c.name) for s, c in snaps]}
        for mark in marks:
            # the last checkpoint written by the mark (a little slack for the final save)
            done = [(s, c) for s, c in snaps if s <= mark + 5]
            if not done:
                row[f"knn@{mark / 60:g}m"] = None
                continue
            s, c = done[-1]
            row[f"knn@{mark / 60:g}m"] = knn(c, args, cfg, c.parent / f"knn_{c.stem}")
            row[f"t@{mark / 60:g}m"] = round(s, 1)
        with RESULTS.open("a") as f:
            f.write(json.dumps({**row, **stamp}) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
