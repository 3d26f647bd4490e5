"""MAE pretraining step throughput: mimkit against its peers, same architecture and batch,
interleaved in one process, in fp32 and in bf16 autocast.

Peers (each skipped, with a note, when its package or checkout is absent):
  official       facebookresearch/mae ``models_mae.py`` from a local checkout (--official),
                 with the attention arithmetic of the timm 0.3.2 it pins (manual softmax);
                 AdamW as ``main_pretrain.py`` builds it (torch's default implementation)
  official-sdpa  the same file on the installed timm's fused attention
  transformers   ``ViTMAEForPreTraining`` (SDPA attention); fused AdamW, as the HF
                 Trainer's default optimizer (``adamw_torch_fused``) on torch >= 2.8
  lightly        timm ViT + ``MaskedVisionTransformerTIMM`` + ``MAEDecoderTIMM``, the model
                 of lightly's MAE example; torch's default AdamW, as the example
  mimkit         ``mimkit.create_model`` through the Trainer's real step (fused AdamW)

Every model has the same encoder/decoder sizes, LayerNorm eps 1e-6, norm-pix loss, 75%
masking and AdamW (lr 1.5e-4, betas 0.9/0.95, weight decay 0.05 on all but 1-D
tensors and biases). ``--fused-peers`` gives every peer fused AdamW too.

Timing: per round every configuration (implementation x precision) runs ``--warmup``
untimed steps, then ``--steps`` timed steps; rounds alternate the order (ABBA), so drift
on a shared machine hits all alike; the minimum over ``--rounds`` is reported (the
median too). Peak memory: each configuration once more, 2 steps in its own subprocess (a
process's peak RSS covers all it ever held), reported as that process's peak RSS
(``VmHWM``) and as the rise over its RSS after imports. ``--memory-only`` skips the
timing. Results are appended to benchmarks/results/compare_peers.jsonl.

    # the official code is not part of mimkit: a checkout with models_mae.py, util/pos_embed.py
    python benchmarks/compare_peers.py --official /tmp/mae --case base     # ViT-B/16, batch 8
    python benchmarks/compare_peers.py --official /tmp/mae --case cifar    # CIFAR preset, 128
    python benchmarks/compare_peers.py --smoke                             # seconds: a check
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

# architecture per case: image, patch, encoder (dim, depth, heads), decoder (dim, depth, heads)
CASES = {
    "base": dict(img=224, patch=16, enc=(768, 12, 12), dec=(512, 8, 16), batch=8),
    "cifar": dict(img=32, patch=4, enc=(192, 12, 3), dec=(192, 4, 3), batch=128),
    "smoke": dict(img=32, patch=8, enc=(32, 1, 2), dec=(32, 1, 2), batch=4),
}
MIMKIT_PRESET = {"base": "mae_vit_base_patch16", "cifar": "mae_vit_tiny_cifar"}
IMPLS = ["mimkit", "mimkit-compile", "mimkit-autotune", "official", "official-sdpa"]
IMPLS += ["transformers", "lightly"]
OPT_IN = ("mimkit-compile", "mimkit-autotune")  # each compiles for ~1 min: only when named
DEFAULT_IMPLS = [i for i in IMPLS if i not in OPT_IN]
PRECISIONS = ["fp32", "bf16"]
LR, BETAS, WD, EPS = 1.5e-4, (0.9, 0.95), 0.05, 1e-6


# --------------------------------------------------------------------------- availability


def missing(impl: str, official: str | None) -> str | None:
    """Why ``impl`` cannot run here, or None."""
    if impl.startswith("official"):
        if not official or not (Path(official) / "models_mae.py").is_file():
            return "no official checkout (--official PATH with models_mae.py)"
        return None
    package = {"transformers": "transformers", "lightly": "lightly"}.get(impl)
    if package and importlib.util.find_spec(package) is None:
        return f"{package} is not installed (pip install 'mimkit[bench]')"
    return None


# --------------------------------------------------------------------------- models


def build(impl: str, case: str, official: str | None):
    """(model, loss_fn(model, images) -> scalar, fused AdamW?) for one implementation."""
    c = CASES[case]
    if impl.startswith("mimkit"):
        return _mimkit(case), None, True
    if impl.startswith("official"):
        model = _official(official, c)
        if impl == "official":  # timm 0.3.2 attention: q @ k^T * scale, softmax, @ v
            for m in model.modules():
                if hasattr(m, "fused_attn"):
                    m.fused_attn = False
        return model, lambda m, x: m(x, mask_ratio=0.75)[0], False
    if impl == "transformers":
        return _transformers(c), lambda m, x: m(pixel_values=x).loss, True
    if impl == "lightly":
        return _lightly(c), lambda m, x: m(x), False
    raise ValueError(impl)


def _mimkit(case: str):
    import mimkit

    c = CASES[case]
    (dim, depth, heads), (ddim, ddepth, dheads) = c["enc"], c["dec"]
    arch = dict(img_size=c["img"], patch_size=c["patch"], embed_dim=dim, depth=depth)
    arch |= dict(num_heads=heads, decoder_embed_dim=ddim, decoder_depth=ddepth)
    arch |= dict(decoder_num_heads=dheads, norm_pix_loss=True, mask_ratio=0.75)
    if case in MIMKIT_PRESET:  # the registered preset model, checked to be this architecture
        model = mimkit.create_model(MIMKIT_PRESET[case], norm_pix_loss=True)
        got = model.arch_config()
        assert all(got[k] == v for k, v in arch.items()), (got, arch)
        return model
    return mimkit.create_model("mae_vit", **arch)


def _official(path: str, c: dict):
    import numpy as np
    import timm.models.vision_transformer as tv
    import torch.nn as nn

    class Block(tv.Block):  # timm 0.3.2 signature: qk_scale was removed later
        def __init__(self, *args, qk_scale=None, **kwargs):
            super().__init__(*args, **kwargs)

    if not hasattr(np, "float"):  # util/pos_embed.py uses np.float, gone since numpy 1.24
        np.float = float
    timm_block, tv.Block = tv.Block, Block
    sys.path.insert(0, str(path))
    try:
        import models_mae
    finally:
        tv.Block = timm_block
    (dim, depth, heads), (ddim, ddepth, dheads) = c["enc"], c["dec"]
    return models_mae.MaskedAutoencoderViT(
        img_size=c["img"],
        patch_size=c["patch"],
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        decoder_embed_dim=ddim,
        decoder_depth=ddepth,
        decoder_num_heads=dheads,
        norm_layer=partial(nn.LayerNorm, eps=EPS),
        norm_pix_loss=True,
    )


def _transformers(c: dict):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    (dim, depth, heads), (ddim, ddepth, dheads) = c["enc"], c["dec"]
    config = ViTMAEConfig(
        image_size=c["img"],
        patch_size=c["patch"],
        hidden_size=dim,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        intermediate_size=4 * dim,
        decoder_hidden_size=ddim,
        decoder_num_hidden_layers=ddepth,
        decoder_num_attention_heads=dheads,
        decoder_intermediate_size=4 * ddim,
        layer_norm_eps=EPS,
        mask_ratio=0.75,
        norm_pix_loss=True,
    )
    return ViTMAEForPreTraining(config)


def _lightly(c: dict):
    """The MAE of lightly's examples/pytorch/mae.py, on a timm ViT of the case's size."""
    import torch
    import torch.nn as nn
    from lightly.models import utils
    from lightly.models.modules.masked_autoencoder_timm import MAEDecoderTIMM
    from lightly.models.modules.masked_vision_transformer_timm import (
        MaskedVisionTransformerTIMM,
    )
    from timm.models.vision_transformer import VisionTransformer

    (dim, depth, heads), (ddim, ddepth, dheads) = c["enc"], c["dec"]

    class LightlyMAE(nn.Module):
        def __init__(self):
            super().__init__()
            vit = VisionTransformer(
                img_size=c["img"],
                patch_size=c["patch"],
                embed_dim=dim,
                depth=depth,
                num_heads=heads,
                qkv_bias=True,
                num_classes=0,
                norm_layer=partial(nn.LayerNorm, eps=EPS),
            )
            self.patch_size = c["patch"]
            self.backbone = MaskedVisionTransformerTIMM(vit=vit)
            self.sequence_length = self.backbone.sequence_length
            with _quiet_deprecation():
                self.decoder = MAEDecoderTIMM(
                    num_patches=vit.patch_embed.num_patches,
                    patch_size=self.patch_size,
                    embed_dim=dim,
                    decoder_embed_dim=ddim,
                    decoder_depth=ddepth,
                    decoder_num_heads=dheads,
                    mlp_ratio=4.0,
                    mask_token=nn.Parameter(torch.zeros(1, 1, ddim)),
                )

        def forward(self, images):
            n = images.shape[0]
            idx_keep, idx_mask = utils.random_token_mask(
                size=(n, self.sequence_length), mask_ratio=0.75, device=images.device
            )
            x = self.backbone.encode(images=images, idx_keep=idx_keep)
            x = self.decoder.embed(x)
            tokens = utils.repeat_token(self.decoder.mask_token, (n, self.sequence_length))
            tokens = utils.set_at_index(tokens, idx_keep, x.type_as(tokens))
            pred = self.decoder.predict(utils.get_at_index(self.decoder.decode(tokens), idx_mask))
            target = utils.get_at_index(utils.patchify(images, self.patch_size), idx_mask - 1)
            target = utils.normalize_mean_var(target, dim=-1)  # norm-pix loss
            return nn.functional.mse_loss(pred.float(), target)

    return LightlyMAE()


@contextlib.contextmanager
def _quiet_deprecation():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# --------------------------------------------------------------------------- steps


class Runner:
    """One implementation's model and optimizer; ``step(precision)`` is one training step
    (forward, loss, backward, AdamW step) on the same batch."""

    def __init__(self, impl: str, case: str, official: str | None, fused_peers: bool, seed=0):
        import torch
        from timm.optim import param_groups_weight_decay

        torch.manual_seed(seed)
        self.impl, self.case = impl, case
        model, self.loss_fn, fused = build(impl, case, official)
        self.model = model.train()
        self.fused = fused or fused_peers
        c = CASES[case]
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(c["batch"], 3, c["img"], c["img"], generator=g)
        self.trainers, self.index = {}, 0
        if impl.startswith("mimkit"):
            # mimkit-compile: the Trainer steps torch.compile(model), as train.compile=true
            self.stepped = model
            if impl.endswith("compile"):
                self.stepped = torch.compile(model)
            elif impl.endswith("autotune"):  # inductor's GEMM templates, tuned per shape
                self.stepped = torch.compile(model, mode="max-autotune-no-cudagraphs")
            self.trainers = {}
        else:
            groups = param_groups_weight_decay(model, WD)
            self.opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, fused=self.fused)

    def _trainer(self, precision: str):
        """mimkit: the Trainer with the optimizer and step pretraining uses (one optimizer
        for both precisions, so model and state are shared as for the peers)."""
        from mimkit.engine.logging import RunLogger
        from mimkit.engine.loop import LoopConfig, Trainer
        from mimkit.engine.optim import adamw, weight_decay_groups
        from mimkit.engine.timing import SyntheticLoader
        from mimkit.recipes.pretrain import PretrainTask

        if precision not in self.trainers:
            if not hasattr(self, "opt"):
                groups = weight_decay_groups(self.model, WD)
                self.opt = adamw(groups, LR, BETAS, _cpu())
            loader = SyntheticLoader({"image": self.images}, len(self.images))
            loop = LoopConfig(epochs=1, base_lr=LR, precision=precision)
            out = tempfile.mkdtemp(prefix="mimkit-peers-")
            trainer = Trainer(
                PretrainTask(),
                self.stepped,
                self.opt,
                loader,
                _cpu(),
                loop,
                out,
                logger=RunLogger(out, False),
            )
            self.trainers[precision] = trainer
        return self.trainers[precision]

    def step(self, precision: str) -> None:
        import torch

        if self.impl.startswith("mimkit"):
            self.index += 1
            self._trainer(precision).step({"image": self.images}, index=self.index)
            return
        ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
        with ctx:
            loss = self.loss_fn(self.model, self.images)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def _cpu():
    import torch

    return torch.device("cpu")


def time_rounds(runners: dict, configs: list, rounds: int, steps: int, warmup: int) -> dict:
    """Seconds per step of each (impl, precision), per round, in ABBA order."""
    times = {cfg: [] for cfg in configs}
    for r in range(rounds):
        for impl, prec in configs if r % 2 == 0 else configs[::-1]:
            runner = runners[impl]
            for _ in range(warmup):
                runner.step(prec)
            t0 = time.perf_counter()
            for _ in range(steps):
                runner.step(prec)
            times[(impl, prec)].append((time.perf_counter() - t0) / steps)
            print(f"  round {r + 1}: {impl:<14s} {prec}  {times[(impl, prec)][-1]:.3f} s/step")
    return times


# --------------------------------------------------------------------------- memory


def peak_rss_child(impl, prec, case, official, fused_peers, steps) -> dict:
    """In this (fresh) process: RSS after imports, then peak RSS over ``steps`` steps."""
    import torch  # noqa: F401  (imports first: they are not the configuration's memory)

    if impl == "transformers":
        import transformers  # noqa: F401
    if impl == "lightly":
        import lightly  # noqa: F401
    if impl.startswith("mimkit"):
        import mimkit  # noqa: F401
    base = _peak_rss_mb()
    runner = Runner(impl, case, official, fused_peers)
    for _ in range(steps):
        runner.step(prec)
    return {"peak_rss_mb": round(_peak_rss_mb(), 1), "rss_after_imports_mb": round(base, 1)}


def _peak_rss_mb() -> float:
    """This process's peak resident set so far: ``VmHWM`` (per address space, so it
    starts afresh at exec), else ``ru_maxrss``, which Linux carries over from the parent
    across exec (the parent holds every model while it times them)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure_memory(args, configs: list) -> dict:
    out = {}
    for impl, prec in configs:
        cmd = [sys.executable, __file__, "--memory-child", impl, prec, "--case", args.case]
        cmd += ["--official", args.official] if args.official else []
        cmd += ["--fused-peers"] if args.fused_peers else []
        env = dict(os.environ, OMP_NUM_THREADS=str(_threads()))
        run = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if run.returncode:
            out[f"{impl} {prec}"] = {"error": run.stderr.strip().splitlines()[-1:]}
            continue
        r = json.loads(run.stdout.strip().splitlines()[-1])
        r["rise_mb"] = round(r["peak_rss_mb"] - r["rss_after_imports_mb"], 1)
        out[f"{impl} {prec}"] = r
    return out


def _threads() -> int:
    import torch

    return torch.get_num_threads()


# --------------------------------------------------------------------------- report


def summarise(times: dict, batch: int) -> dict:
    rows = {}
    for (impl, prec), t in times.items():
        rows[f"{impl} {prec}"] = {
            "step_s_min": round(min(t), 4),
            "step_s_median": round(statistics.median(t), 4),
            "img_s": round(batch / min(t), 3),
            "rounds_s": [round(v, 4) for v in t],
        }
    return rows


def ratios(rows: dict, impls: list, mimkit_default: str) -> dict:
    """mimkit over each peer: fp32 vs fp32, bf16 vs bf16, best vs best, and mimkit as it
    runs by default (train.precision=auto) over each peer in fp32 (their default)."""
    img = lambda impl, p: rows.get(f"{impl} {p}", {}).get("img_s")
    best = lambda impl: max((img(impl, p), p) for p in PRECISIONS if img(impl, p))
    out = {}
    m_best, m_best_p = best("mimkit")
    for peer in impls:
        if peer == "mimkit":
            continue
        p_best, p_best_p = best(peer)
        out[peer] = {
            "fp32": round(img("mimkit", "fp32") / img(peer, "fp32"), 3),
            "bf16": round(img("mimkit", "bf16") / img(peer, "bf16"), 3),
            "best": round(m_best / p_best, 3),
            "best_modes": f"mimkit {m_best_p} vs {peer} {p_best_p}",
            "default_vs_fp32": round(img("mimkit", mimkit_default) / img(peer, "fp32"), 3),
        }
    return out


def machine() -> dict:
    import timm
    import torch

    info = {
        "cpu": _cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
    }
    for package in ("transformers", "lightly"):
        if importlib.util.find_spec(package):
            info[package] = __import__(package).__version__
    return info


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--official", help="folder of a facebookresearch/mae checkout")
    p.add_argument("--case", choices=list(CASES), default="base")
    p.add_argument("--batch", type=int, help="default: the case's (base 8, cifar 128)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=2, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per round")
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=DEFAULT_IMPLS,
                   help="mimkit-compile / mimkit-autotune (torch.compile, opt-in) are not "
                   "in the default list: each compiles for about a minute on 2 cores")  # fmt: skip
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=PRECISIONS)
    p.add_argument("--fused-peers", action="store_true", help="fused AdamW for every peer")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocesses")
    p.add_argument("--memory-only", action="store_true", help="only the peak-RSS subprocesses")
    p.add_argument("--smoke", action="store_true", help="tiny model, 1 round, 1 step: a check")
    p.add_argument("--json", help="append the result here (default benchmarks/results/...)")
    p.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        impl, prec = args.memory_child
        r = peak_rss_child(impl, prec, args.case, args.official, args.fused_peers, 2)
        print(json.dumps(r))
        return r
    if args.smoke:
        args.case, args.rounds, args.steps, args.warmup = "smoke", 1, 1, 0
        args.no_memory = True
    if args.batch:
        CASES[args.case]["batch"] = args.batch
    return compare(args)


def compare(args) -> dict:
    import mimkit.engine.precision as P

    skipped = {i: why for i in args.impls if (why := missing(i, args.official))}
    for impl, why in skipped.items():
        print(f"skipping {impl}: {why}")
    impls = [i for i in args.impls if i not in skipped]
    if "mimkit" not in impls:
        raise SystemExit("mimkit must be among --impls")
    configs = [(i, p) for i in impls for p in args.precisions]
    c = CASES[args.case]
    rows = {}
    if not args.memory_only:
        print(f"building {', '.join(impls)} for case {args.case} (batch {c['batch']})")
        runners = {i: Runner(i, args.case, args.official, args.fused_peers) for i in impls}
        times = time_rounds(runners, configs, args.rounds, args.steps, args.warmup)
        del runners
        rows = summarise(times, c["batch"])
    default = P.resolve_with_reason("auto", _cpu())
    result = {
        "date": datetime.date.today().isoformat(),
        "case": args.case,
        "arch": {k: c[k] for k in ("img", "patch", "enc", "dec")},
        "batch": c["batch"],
        "rounds": args.rounds,
        "steps": args.steps,
        "warmup": args.warmup,
        "fused_peers": args.fused_peers,
        "machine": machine(),
        "mimkit_default_precision": f"{default.precision} ({default.reason})",
        "skipped": skipped,
        "results": rows,
    }
    if len(args.precisions) == 2 and rows:
        result["ratios"] = ratios(rows, impls, default.precision)
    if not args.no_memory:
        print("peak memory: one subprocess per configuration")
        result["memory"] = measure_memory(args, configs)
    _print(result)
    out = Path(args.json) if args.json else Path(__file__).parent / "results/compare_peers.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps(result) + "\n")
    print(f"appended to {out}")
    return result


def _print(result: dict) -> None:
    mem, rows = result.get("memory", {}), result["results"]
    print(f"\ncase {result['case']}, batch {result['batch']}, min of {result['rounds']} rounds")
    head = ("configuration", "img/s", "s/step", "median", "RSS MB", "rise")
    print("{:<20s} {:>8s} {:>7s} {:>7s} {:>8s} {:>7s}".format(*head))
    for name in rows or mem:
        r, m = rows.get(name), mem.get(name, {})
        speed = (
            f"{r['img_s']:8.2f} {r['step_s_min']:7.3f} {r['step_s_median']:7.3f}" if r else " " * 24
        )
        print(f"{name:<20s} {speed} {m.get('peak_rss_mb', '')!s:>8s} {m.get('rise_mb', '')!s:>7s}")
    for peer, r in result.get("ratios", {}).items():
        print(
            f"mimkit / {peer:<14s} fp32 {r['fp32']:.2f}x  bf16 {r['bf16']:.2f}x  best "
            f"{r['best']:.2f}x ({r['best_modes']})  default vs fp32 {r['default_vs_fp32']:.2f}x"
        )


if __name__ == "__main__":
    main()
