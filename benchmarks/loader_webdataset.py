"""Loader throughput: image files (``files`` pipeline) vs webdataset tar shards, read from
a local shard folder and through a ``pipe:cat`` URL; same images, transform, batch size
and workers, epochs interleaved in one process.

    PYTHONPATH=src python benchmarks/loader_webdataset.py --data examples/cifar10-mini/train

The shards are written once into --work (``write_shards``, --shard-size samples each).
Every round runs one full epoch of each loader, in rotating order; the first round is a
warm-up (worker start, page cache). The median and best img/s per loader are printed
and a JSON line appended to benchmarks/results/loader_webdataset.jsonl.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from mimkit.data import EpochSampler, ImageDataset, build_loader, collate, open_source
from mimkit.data.shards import ShardDataset, ShardLoader, write_shards
from mimkit.data.transforms import pretrain_transform

RESULTS = Path(__file__).parent / "results"


def loaders(data: str, work: Path, args) -> dict:
    source = open_source(data)
    shard_dir = work / "shards"
    if not (shard_dir / "shards.json").is_file():
        write_shards(source, shard_dir, args.shard_size)
    n_shards = len(list(shard_dir.glob("*.tar")))
    transform = pretrain_transform(args.img_size, 0.2, True)
    max_side = 4 * args.img_size
    sampler = EpochSampler(len(source), shuffle=True, seed=0)
    files = build_loader(
        ImageDataset(source, transform, max_side=max_side),
        args.batch,
        sampler,
        args.workers,
        True,
        False,
        collate,
    )
    url = f"pipe:cat {shard_dir}/shard-{{000000..{n_shards - 1:06d}}}.tar"
    out = {"files": files}
    for name, spec in (("shards", shard_dir), ("shards_pipe", url)):
        ds = ShardDataset(
            spec, transform, seed=0, rank=0, world=1, num_samples=len(source), max_side=max_side
        )
        out[name] = ShardLoader(ds, args.batch, args.workers, False, collate)
    return out


def epoch(loader, e: int) -> tuple[int, float]:
    loader.sampler.set_epoch(e)
    t, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch["image"])
    return n, time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="examples/cifar10-mini/train")
    p.add_argument("--work", default=None, help="folder for the shards (default: a temp dir)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--shard-size", type=int, default=250)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work or tempfile.mkdtemp(prefix="mimkit-wds-"))
    runs = loaders(args.data, work, args)
    rates = {name: [] for name in runs}
    names = list(runs)
    for r in range(args.rounds + 1):
        for name in names[r % 3 :] + names[: r % 3]:  # rotate: no loader always goes first
            n, dt = epoch(runs[name], r)
            if r > 0:  # round 0 warms caches and the files loader's persistent workers
                rates[name].append(n / dt)
        if r > 0:
            print(f"round {r}: " + "  ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items()))
    median = {k: round(statistics.median(v), 1) for k, v in rates.items()}
    best = {k: round(max(v), 1) for k, v in rates.items()}
    print("median img/s: " + "  ".join(f"{k} {v}" for k, v in median.items()))
    print("best img/s:   " + "  ".join(f"{k} {v}" for k, v in best.items()))
    RESULTS.mkdir(exist_ok=True)
    line = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
        "args": vars(args),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "img_s_median": median,
        "img_s_best": best,
        "img_s_rounds": {k: [round(x, 1) for x in v] for k, v in rates.items()},
    }
    with (RESULTS / "loader_webdataset.jsonl").open("a") as f:
        f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
