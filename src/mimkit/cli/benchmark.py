"""``mimkit benchmark``: training throughput, loader throughput, memory and MFU."""

from __future__ import annotations

from ..engine.logging import setup_console
from ..recipes import benchmark as recipe
from ..recipes.run import resolve


def add_parser(sub) -> None:
    p = sub.add_parser(
        "benchmark",
        help=recipe.RECIPE.help,
        description="Times the real training step on synthetic data (model only) and, with "
        "--data PATH, the data pipeline alone (loader img/s) and data + model together "
        "(end to end), for the preset's data.pipeline. Prints and saves JSON. MFU divides by "
        "the GPU's datasheet bf16 peak, or on a CPU by a matmul peak measured at start. "
        "Pretraining presets time their method's step, detection presets the ViTDet "
        "backbone + pyramid, others a classifier step.",
    )
    p.add_argument("--config", "-c", default="mae_vit_base_patch16", help="preset or YAML path")
    p.add_argument("--data", default=None, help="synthetic, or an image folder / shards")
    p.add_argument("--steps", type=int, help="timed steps (default 20)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 5)")
    p.add_argument("--batch-size", type=int, help="data.batch_size")
    p.add_argument("--device", help="train.device")
    p.add_argument("--json", help="where to save the result (default runs/benchmark/<preset>.json)")
    p.add_argument(
        "--profile",
        action="store_true",
        default=None,
        help="also profile 3 steps: a Chrome/Perfetto trace next to the JSON and the top 10 "
        "operators by self time (bench.profile)",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="e.g. train.precision=bf16 train.compile=true data.pipeline=tensor_cache",
    )
    p.set_defaults(func=cmd_benchmark)


def cmd_benchmark(args) -> int:
    setup_console()
    pairs = {
        "data.batch_size": args.batch_size,
        "train.device": args.device,
        "bench.data": args.data,
        "bench.steps": args.steps,
        "bench.warmup": args.warmup,
        "bench.json": args.json,
        "bench.profile": args.profile,
    }
    flags = [f"{k}={v!s}" for k, v in pairs.items() if v is not None]
    cfg, _ = resolve("benchmark", args.config, [*flags, *args.overrides])
    result = recipe.run(cfg)
    print(recipe.report(result.metrics) + f"\nsaved {result.json}")
    return 0
