"""Training throughput of the real step (the Trainer's hot path) on this device: model-only
img/s, loader img/s and end to end, peak memory, FLOPs (counted, not assumed) and MFU."""

from __future__ import annotations

import datetime
import itertools
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import config as config_lib
from ..data.pipelines import open_pretrain_data
from ..engine import precision as precision_lib
from ..engine.loop import LoopConfig, Trainer
from ..engine.optim import adamw, weight_decay_groups
from ..engine.timing import (
    SyntheticLoader,
    device_name,
    images_in,
    profile_steps,
    time_loader,
    time_steps,
)
from ..errors import UserError
from ..flops import count_step_flops, device_peak
from ..methods import Schedule, method_for
from ..models import create_model, is_pretrainer
from ..utils import distributed as dist
from ..utils.batch import batch_images
from ..utils.rng import seed_all
from .detect import DetectConfig
from .registry import Flag, Recipe, register
from .results import BenchmarkResult
from .segment import SegmentConfig, SegmentStep, bench_model


@dataclass
class BenchConfig:
    steps: int = 20  # timed steps
    warmup: int = 5  # untimed steps first
    data: str = "synthetic"  # or an image folder / shards: also time the loader, end to end
    json: str | None = None  # where to save the result (default runs/benchmark/<preset>.json)
    profile: bool = False  # also trace a few steps: Chrome trace next to the JSON + top ops


# --------------------------------------------------------------------------- synthetic data


def synthetic_batch(model, batch_size: int, device: torch.device, seed: int = 0) -> dict:
    """Random inputs of the model's size: its method's batch for a pretraining model
    (e.g. multi-crop views with block masks), else images and labels."""
    g = torch.Generator().manual_seed(seed)
    method = method_for(model)
    if method is not None:
        return method.synthetic_batch(model, batch_size, device, g)
    size = model.patch_embed.img_size[0] if hasattr(model, "patch_embed") else model.img_size
    images = torch.randn(batch_size, 3, size, size, generator=g).to(device)
    labels = torch.zeros(batch_size, dtype=torch.long, device=device)
    return {"image": images, "label": labels}


# --------------------------------------------------------------------------- what is timed


class ClassifyStep:
    """A classifier's training step (cross-entropy): ConvMixer, ViT."""

    def training_step(self, model, batch: dict) -> dict[str, torch.Tensor]:
        return {"loss": torch.nn.functional.cross_entropy(model(batch["image"]), batch["label"])}


class BackboneStep:
    """A detection backbone's step without the heads: ViTDet + simple pyramid, loss = mean
    of every pyramid level (the heads' cost depends on the boxes, not the backbone)."""

    def training_step(self, model, batch: dict) -> dict[str, torch.Tensor]:
        return {"loss": sum(m.float().mean() for m in model(batch["image"]).values())}


def bench_parts(cfg: config_lib.Config) -> tuple[torch.nn.Module, object, str]:
    """(model, task, kind) for a preset: pretraining models with their method's task, a
    detection preset's backbone + pyramid, anything else as a classifier."""
    from .pretrain import build_model

    if is_pretrainer(cfg.model.name):
        model = build_model(cfg)
        return model, _method_parts(model, cfg).task, "pretrain"
    if cfg.detect != DetectConfig():  # a detection preset: its backbone + pyramid
        from ..detection.maskrcnn import ViTDetWithPyramid
        from ..detection.vitdet import ViTDetBackbone
        from .detect import backbone_args

        args, _ = backbone_args(cfg)
        vit = ViTDetBackbone(**args)
        return ViTDetWithPyramid(vit, cfg.detect.out_channels), BackboneStep(), "detect backbone"
    if cfg.segment != SegmentConfig():  # a segmentation preset: its model, random init
        return bench_model(cfg), SegmentStep(), "segment"
    args = {"img_size": cfg.data.img_size} if cfg.data.img_size else {}
    model = create_model(cfg.model.name, **{"num_classes": 1000, **args, **cfg.model.args})
    return model, ClassifyStep(), "classify"


def _method_parts(model, cfg: config_lib.Config | None = None):
    """The method's training parts for a one-epoch, one-step-per-epoch schedule (what the
    step costs does not depend on where in its schedule it is)."""
    wd = cfg.optim.weight_decay if cfg else 0.05
    clip = cfg.optim.clip_grad if cfg else None
    return method_for(model).training_parts(model, Schedule(1, 1, 1e-4), wd, clip)


def make_trainer(task, model, device, precision: str, out_dir, batch: dict, batch_size: int):
    """A Trainer whose optimizer and step are the ones training uses (AdamW, fused on CUDA;
    a pretraining model's own parameter groups and loop settings)."""
    loop_changes, groups = {}, weight_decay_groups(model, 0.05)
    if method_for(model) is not None:
        parts = _method_parts(dist.unwrap(model))
        groups = parts.param_groups(dist.unwrap(model), 0.05)
        loop_changes = {k: v for k, v in parts.loop.items() if k != "lr_fn"}
    optimizer = adamw(groups, 1e-4, (0.9, 0.95), device)
    loop = LoopConfig(epochs=1, base_lr=1e-4, precision=precision, **loop_changes)
    loader = SyntheticLoader(batch, batch_size)
    return Trainer(task, model, optimizer, loader, device, loop, out_dir)


def measure_step(
    task, model, make_batch: Callable[[], dict], device, precision: str, steps: int, warmup: int
) -> dict:
    """Model-only training-step throughput (for scripts comparing models)."""
    precision = precision_lib.resolve(precision, device)
    batch = make_batch()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(task, model, device, precision, tmp, batch, images_in(batch))
        return time_steps(trainer, trainer.loader, steps, warmup) | {"precision": precision}


# --------------------------------------------------------------------------- the recipe


def run(cfg: config_lib.Config, resume: Path | None = None) -> BenchmarkResult:
    from .pretrain import pretrain_loader

    if dist.launched() or dist.world_size() > 1:
        raise UserError("benchmark measures one device: run it without torchrun")
    device = dist.resolve_device(cfg.train.device)
    resolved = precision_lib.resolve_with_reason(str(cfg.train.precision), device)
    precision = resolved.precision
    seed_all(cfg.train.seed)
    model, task, kind = bench_parts(cfg)
    model = model.to(device)
    if cfg.train.grad_checkpointing and hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(True)
    stepped = torch.compile(model) if cfg.train.compile else model
    batch_size = cfg.data.batch_size
    batch = synthetic_batch(model, batch_size, device)
    # two images where BatchNorm needs a batch (UperNet's pooling branch); FLOPs per image
    flops = count_step_flops(
        task, model, synthetic_batch(model, 2 if kind == "segment" else 1, device)
    )
    name = device_name(device)
    peak = device_peak(device, name, precision)

    def mfu(img_s: float) -> float | None:
        return img_s * flops / (peak["tflops"] * 1e12) if peak["tflops"] else None

    b = cfg.bench
    result = {
        "date": datetime.date.today().isoformat(),
        "preset": cfg.name,
        "model": cfg.model.name,
        "kind": kind,
        "device": name,
        "torch": torch.__version__,
        "precision": precision,
        "precision_reason": resolved.reason,
        "compile": cfg.train.compile,
        "batch": batch_size,
        "img_size": _images_size(batch),
        "train_gflop_per_image": round(flops / 1e9, 3),
        "train_flop_per_image": flops,
        "flop_formula": "counted: torch.utils.flop_counter.FlopCounterMode on one training "
        "step (forward + backward)",
        "peak_tflops": peak["tflops"],
        "peak_source": peak["source"],
        "peak_bf16_tflops": peak.get("bf16"),
        "peak_fp32_tflops": peak.get("fp32"),
    }
    path = Path(b.json or f"runs/benchmark/{cfg.name or cfg.model.name}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(task, stepped, device, precision, tmp, batch, batch_size)
        r = time_steps(trainer, trainer.loader, b.steps, b.warmup)
        result.update(
            model_img_s=r["img_s"],
            model_step_ms=r["step_ms"],
            model_mfu=mfu(r["img_s"]),
            model_tflops=r["img_s"] * flops / 1e12,
            peak_mem_gb=r["peak_mem_gb"],
        )
        if b.profile:
            trace = path.with_name(path.stem + ".trace.json")
            result["profile"] = profile_steps(trainer, min(b.steps, 3), trace)
        if b.data != "synthetic":
            data = open_pretrain_data(str(cfg.data.pipeline), b.data, cfg.data.file_list)
            loader = pretrain_loader(cfg, data, device, model)
            result["pipeline"] = data.pipeline
            result["loader_img_s"] = time_loader(loader, device, b.steps, b.warmup)
            batches = itertools.chain.from_iterable(itertools.repeat(loader))
            e2e = time_steps(trainer, batches, b.steps, b.warmup)
            result.update(
                end_to_end_img_s=e2e["img_s"],
                end_to_end_mfu=mfu(e2e["img_s"]),
                end_to_end_vs_model=e2e["img_s"] / r["img_s"],
            )
    path.write_text(json.dumps(result, indent=2) + "\n")
    return BenchmarkResult(out=path.parent, metrics=result, config=cfg, json=path)


def _images_size(batch: dict) -> int:
    return batch_images(batch).shape[-1]


def report(result: dict) -> str:
    """The benchmark as lines of text (the CLI prints this)."""
    pct = lambda v: f"{100 * v:.1f}%" if v is not None else "n/a (no peak for this device)"
    lines = [
        f"device        {result['device']}  ({result['precision']}: "
        f"{result.get('precision_reason', 'set')}, compile={result['compile']})",
        f"model         {result['model']} ({result['kind']}) @ {result['img_size']} px, batch "
        f"{result['batch']}, {result['train_gflop_per_image']} GFLOP/image/step",
    ]
    if result.get("peak_tflops"):
        lines.append(f"peak          {result['peak_tflops']:.3f} TFLOP/s ({result['peak_source']})")
    lines.append(
        f"model only    {result['model_img_s']:.1f} img/s "
        f"({result['model_step_ms']:.1f} ms/step), "
        f"MFU {pct(result['model_mfu'])}, {result['model_tflops'] * 1e3:.1f} GFLOP/s achieved"
    )
    if "loader_img_s" in result:
        lines += [
            f"loader        {result['loader_img_s']:.1f} img/s  ({result['pipeline']})",
            f"end to end    {result['end_to_end_img_s']:.1f} img/s  "
            f"({100 * result['end_to_end_vs_model']:.0f}% of model only), "
            f"MFU {pct(result['end_to_end_mfu'])}",
        ]
    if result["peak_mem_gb"] is not None:
        lines.append(f"peak memory   {result['peak_mem_gb']:.2f} GiB")
    if "profile" in result:
        lines += profile_table(result["profile"])
    return "\n".join(lines)


def profile_table(profile: dict) -> list[str]:
    """The profile's top operators as text lines."""
    lines = [
        f"top {len(profile['top'])} operators by self {profile['time']} time "
        f"({profile['steps']} steps; trace {profile['trace']}):",
        f"  {'operator':<44s} {'ms/step':>9s} {'share':>7s} {'calls/step':>10s}",
    ]
    for r in profile["top"]:
        lines.append(
            f"  {r['op'][:44]:<44s} {r['self_ms_per_step']:9.1f} {100 * r['share']:6.1f}% "
            f"{r['calls_per_step']:10.0f}"
        )
    return lines


RECIPE = register(
    Recipe(
        "benchmark",
        run,
        help="measure training throughput, memory and MFU on this device",
        description="Times the real training step on synthetic data (model only) and, with "
        "--data PATH, the data pipeline alone (loader img/s) and data + model together "
        "(end to end), for the preset's data.pipeline. Prints and saves JSON. MFU divides by "
        "the GPU's datasheet bf16 peak, or on a CPU by a matmul peak measured at start. "
        "Pretraining presets time their method's step, detection presets the ViTDet "
        "backbone + pyramid, others a classifier step.",
        preset="mae_vit_base_patch16",
        trains=False,
        section=("bench", BenchConfig),
        flags=(
            Flag("--data", "bench.data", "synthetic, or an image folder / shards"),
            Flag("--steps", "bench.steps", "timed steps (default 20)", type=int),
            Flag("--warmup", "bench.warmup", "untimed steps first (default 5)", type=int),
            Flag(
                "--json",
                "bench.json",
                "where to save the result (default runs/benchmark/<preset>.json)",
            ),
            Flag(
                "--profile",
                "bench.profile",
                "also profile 3 steps: a Chrome/Perfetto "
                "trace next to the JSON and the top 10 operators by self time",
                action="store_true",
            ),
        ),
        api_keys={"data": "bench.data"},
        report=lambda result: report(result.metrics) + f"\nsaved {result.json}",
        order=90,
    )
)
