"""FLOP counts for model FLOPs utilisation (MFU).

Every model is counted the same way: one training step (forward + backward) under
``torch.utils.flop_counter.FlopCounterMode`` (``count_step_flops``). The closed-form
ViT formula below (and each method's, ``PretrainMethod.flops_formula``) document what that
count is made of; a test checks that the counter and the MAE formula agree within 5%.

Per transformer block on n tokens of width d (MLP ratio r), in multiply-adds:
M(n, d) = (4 + 2r) n d^2 + 2 n^2 d   (qkv + proj: 4nd^2, MLP: 2r nd^2, QK^T and AV: 2n^2 d);
r = 4 gives the usual 12 n d^2 + 2 n^2 d. FLOPs = 2 x multiply-adds; a training step
(forward + backward) = 3 x forward.

The peak MFU divides by: a GPU's dense bf16 datasheet figure (``peak_tflops``); a CPU's
practical matmul peak, measured when the benchmark starts (``measure_cpu_peak_tflops``).
"""

from __future__ import annotations

import functools
import time

import torch

from .engine.precision import cpu_bf16
from .utils.batch import batch_images

FORMULA_VIT = (
    "forward = 2 x [P*patch_dim*d + L*M(N,d) + d*classes], "
    "M(n,d) = 12*n*d^2 + 2*n^2*d, step = 3 x forward"
)

# Dense bf16 tensor-core peaks (TFLOP/s), from vendor datasheets; matched by name.
PEAK_BF16_TFLOPS = [
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("V100", 125.0),
]


def count_step_flops(task, model, batch: dict) -> float:
    """Training FLOPs per image: the task's forward and the backward of its loss on
    ``batch`` (gradients are cleared afterwards; no optimizer step)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    with FlopCounterMode(display=False) as counter:
        task.training_step(model, batch)["loss"].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(batch_images(batch))


def block_macs(n: int, d: int, mlp_ratio: float = 4.0) -> float:
    return (4 + 2 * mlp_ratio) * n * d * d + 2 * n * n * d


def vit_step_flops(
    img_size: int,
    patch: int,
    d: int,
    depth: int,
    num_classes: int,
    in_chans: int = 3,
    mlp_ratio: float = 4.0,
) -> float:
    """Training FLOPs per image of a ViT classifier step (all tokens + cls)."""
    p = (img_size // patch) ** 2
    macs = p * patch * patch * in_chans * d + depth * block_macs(p + 1, d, mlp_ratio)
    return 3 * 2 * (macs + d * num_classes)


@functools.cache
def measure_cpu_peak_tflops(dtype: str = "fp32", seconds: float = 1.0) -> float:
    """The practical matmul peak of this CPU in TFLOP/s: the fastest of repeated large
    square GEMMs (fp32 2048, bf16 4096: big enough for MKL / oneDNN's best kernels) on
    all threads, over ``seconds``. Measured once per process. On a shared machine this
    is what the cores give now, which is also what the training step gets."""
    n, dt = {"fp32": (2048, torch.float32), "bf16": (4096, torch.bfloat16)}[dtype]
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(dt) for _ in range(2))
    c = torch.mm(a, b)  # warm-up: kernel selection, AMX tile set-up
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        torch.mm(a, b, out=c)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e12


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a known GPU; None for CPUs and unknown devices."""
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def device_peak(device: torch.device, name: str, precision: str) -> dict:
    """The peak MFU divides by: a GPU's dense bf16 datasheet figure; on a CPU the matmul
    peak measured now for the run's precision (fp32, and bf16 where the CPU has native
    bf16 or the run uses it). {'tflops', 'source', 'fp32'?, 'bf16'?}"""
    if device.type == "cuda":
        value = peak_tflops(name)
        return {"tflops": value, "source": "datasheet dense bf16" if value else None, "bf16": value}
    if device.type != "cpu":
        return {"tflops": None, "source": None}
    dtypes = ["fp32"]
    if precision == "bf16" or cpu_bf16()[0]:
        dtypes.append("bf16")
    peaks = {d: round(measure_cpu_peak_tflops(d), 4) for d in dtypes}
    used = "bf16" if precision == "bf16" else "fp32"
    source = (
        f"measured: fastest {used} GEMM ({'4096' if used == 'bf16' else '2048'}^2) on "
        f"{torch.get_num_threads()} threads"
    )
    return {"tflops": peaks[used], "source": source, **peaks}
