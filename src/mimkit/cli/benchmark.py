"""``mimkit benchmark``: model-only and end-to-end training throughput, loader throughput,
peak memory and model FLOPs utilisation, for a preset on this device."""

from __future__ import annotations

import datetime
import itertools
import json
import tempfile
from pathlib import Path

import torch

from .. import config as C
from ..bench import device_name, make_trainer, time_loader, time_steps
from ..data.pipelines import open_pretrain_data
from ..engine import distributed as dist
from ..engine import precision as P
from ..engine.checkpoint import seed_all
from ..engine.logging import setup_console
from ..errors import UserError
from ..flops import model_step_flops, peak_tflops
from .pretrain import PretrainTask, build_model, pretrain_loader


def add_parser(sub) -> None:
    p = sub.add_parser(
        "benchmark",
        help="measure training throughput, memory and MFU on this device",
        description="Times the real training step on synthetic data (model only) and, with "
        "--data PATH, the data pipeline alone (loader img/s) and data + model together "
        "(end to end), for the preset's data.pipeline. Prints and saves JSON.",
    )
    p.add_argument("--config", "-c", default="mae_vit_base_patch16", help="preset or YAML path")
    p.add_argument("--data", default="synthetic", help="synthetic, or an image folder / shards")
    p.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    p.add_argument("--batch-size", type=int, help="data.batch_size")
    p.add_argument("--device", help="train.device")
    p.add_argument("--json", help="where to save the result (default runs/benchmark/<preset>.json)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="e.g. train.precision=fp16 train.compile=true data.pipeline=tensor_cache",
    )
    p.set_defaults(func=cmd_benchmark)


def cmd_benchmark(args) -> int:
    setup_console()
    flags = [f"data.batch_size={args.batch_size}"] if args.batch_size else []
    flags += [f"train.device={args.device}"] if args.device else []
    cfg = C.load_config(args.config, [*flags, *args.overrides], task="pretrain")
    if dist.world_size() > 1:
        raise UserError("benchmark measures one device: run it without torchrun")
    device = dist.resolve_device(cfg.train.device)
    precision = P.resolve(cfg.train.precision, device)
    seed_all(cfg.train.seed)
    model = build_model(cfg).to(device)
    if cfg.train.grad_checkpointing:
        model.set_grad_checkpointing(True)
    stepped = torch.compile(model) if cfg.train.compile else model
    size, batch = model.patch_embed.img_size[0], cfg.data.batch_size
    flops, formula = model_step_flops(model)
    name = device_name(device)
    peak = peak_tflops(name) if device.type == "cuda" else None
    mfu = (lambda img_s: img_s * flops / (peak * 1e12)) if peak else (lambda img_s: None)
    result = {
        "date": datetime.date.today().isoformat(),
        "preset": args.config,
        "model": cfg.model.name,
        "device": name,
        "torch": torch.__version__,
        "precision": precision,
        "compile": cfg.train.compile,
        "batch": batch,
        "img_size": size,
        "train_gflop_per_image": round(flops / 1e9, 3),
        "flop_formula": formula,
        "peak_bf16_tflops": peak,
    }
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(PretrainTask(), stepped, device, precision, tmp, batch, size)
        r = time_steps(trainer, trainer.loader, args.steps, args.warmup)
        result.update(
            model_img_s=r["img_s"],
            model_step_ms=r["step_ms"],
            model_mfu=mfu(r["img_s"]),
            model_tflops=r["img_s"] * flops / 1e12,
            peak_mem_gb=r["peak_mem_gb"],
        )
        if args.data != "synthetic":
            data = open_pretrain_data(cfg.data.pipeline, args.data, cfg.data.file_list)
            loader = pretrain_loader(cfg, data, device, size)
            result["pipeline"] = cfg.data.pipeline
            result["loader_img_s"] = time_loader(loader, device, args.steps, args.warmup)
            batches = itertools.chain.from_iterable(itertools.repeat(loader))
            e2e = time_steps(trainer, batches, args.steps, args.warmup)
            result.update(
                end_to_end_img_s=e2e["img_s"],
                end_to_end_mfu=mfu(e2e["img_s"]),
                end_to_end_vs_model=e2e["img_s"] / r["img_s"],
            )
    _report(result, Path(args.json or f"runs/benchmark/{Path(args.config).stem}.json"))
    return 0


def _report(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    pct = lambda v: f"{100 * v:.1f}%" if v is not None else "n/a (no bf16 peak for this device)"
    lines = [
        f"device        {result['device']}  ({result['precision']}, compile={result['compile']})",
        f"model         {result['model']} @ {result['img_size']} px, batch {result['batch']}, "
        f"{result['train_gflop_per_image']} GFLOP/image/step",
        f"model only    {result['model_img_s']:.1f} img/s "
        f"({result['model_step_ms']:.1f} ms/step), "
        f"MFU {pct(result['model_mfu'])}, {result['model_tflops'] * 1e3:.1f} GFLOP/s achieved",
    ]
    if "loader_img_s" in result:
        lines += [
            f"loader        {result['loader_img_s']:.1f} img/s  ({result['pipeline']})",
            f"end to end    {result['end_to_end_img_s']:.1f} img/s  "
            f"({100 * result['end_to_end_vs_model']:.0f}% of model only), "
            f"MFU {pct(result['end_to_end_mfu'])}",
        ]
    if result["peak_mem_gb"] is not None:
        lines.append(f"peak memory   {result['peak_mem_gb']:.2f} GiB")
    print("\n".join(lines) + f"\nsaved {path}")
