"""Read weights from any supported file and load them into a model with one clear report.

Accepted: official files of every method (MAE ``{'model': sd}`` encoder-only, full or
fine-tuned; the layouts each ``methods`` module reads: iBOT's student/teacher files,
SimMIM's ``main_simmim`` file), mimkit checkpoints (a ``model`` key plus metadata),
timm-layout state dicts, bare state dicts, ``.pth``/``.pt``/``.bin`` and
``.safetensors``. DDP (``module.``) and torch.compile (``_orig_mod.``) prefixes are
stripped (timm's ``clean_state_dict``). What is method-specific (pretraining-only keys,
official layouts, arguments read off the shapes) is asked of the file's method.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from timm.layers import resample_abs_pos_embed
from timm.models import clean_state_dict
from torch import nn

from ..errors import UserError
from ..methods import method_for, read_official
from ..models.beit import infer_beit_args, is_beit_state_dict
from ..models.vit import infer_vit_args as _backbone_vit_args
from ..utils.finite import first_non_finite
from ..utils.io import safe_torch_load
from .hf import is_hf_folder, read_hf_folder
from .state import Checkpoint

log = logging.getLogger("mimkit")


def read_checkpoint(path: str | Path, trust: bool = False) -> Checkpoint:
    """Load a file into a plain state dict + metadata. Raises UserError with the path.

    ``.pth`` files are read with ``weights_only=True`` and a short allow-list of plain
    types (see ``utils.io.safe_torch_load``); ``trust=True`` lifts it for files you vouch
    for (it lets the file run code)."""
    path = Path(path)
    if path.is_dir():  # a Hugging Face transformers folder (config.json + weights)
        if is_hf_folder(path):
            return read_hf_folder(path)
        raise UserError(
            f"{path} is a folder but not a transformers model folder (no config.json with "
            "weights): pass a checkpoint file"
        )
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    obj = safe_torch_load(path, trust=trust)
    sd, meta = _extract(obj, path)
    return Checkpoint(clean_state_dict(sd), meta, str(path))


def _read_safetensors(path: Path) -> Checkpoint:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        sd = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            raw = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types
        raise UserError(
            f"cannot read {path}: {e} (the file is corrupt or not safetensors)"
        ) from None
    meta = {k: _maybe_json(v) for k, v in raw.items()}
    return Checkpoint(clean_state_dict(sd), meta, str(path))


def _maybe_json(value: str):
    try:
        return json.loads(value)
    except (json.JSONDecodeError, TypeError):
        return value


def _extract(obj, path: Path) -> tuple[dict, dict]:
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not a checkpoint (it holds a {type(obj).__name__})")
    official = read_official(obj)  # a method's own training file (student/teacher, ...)
    if official is not None:
        return official
    for key in ("model", "state_dict", "model_state_dict", "module"):
        if isinstance(obj.get(key), dict):
            meta = {k: v for k, v in obj.items() if k in _META_KEYS}
            return obj[key], meta
    if obj and all(torch.is_tensor(v) for v in obj.values()):
        return obj, {}
    raise UserError(
        f"{path} is not a checkpoint: no state dict (expected a 'model' or 'state_dict' "
        f"entry; found keys: {', '.join(map(str, list(obj)[:8]))})"
    )


_META_KEYS = (
    "model_name",
    "model_args",
    "epoch",
    "step",
    "config",
    "mimkit_version",
    "task",
    "classes",
    "metrics",
)


# ---------------------------------------------------------------------------- architecture


def infer_vit_args(sd: dict[str, torch.Tensor]) -> dict:
    """Constructor arguments read off the tensor shapes: the ViT's (``models.vit``) and,
    where a method recognises the state dict as its full model, the method's own (e.g.
    an MAE decoder's width and depth)."""
    args = _backbone_vit_args(sd)
    method = method_for(sd)
    if method is not None:
        args.update(method.infer_args(sd)[1])
    return args


def backbone_args(sd: dict[str, torch.Tensor]) -> tuple[str, dict]:
    """(registered backbone, arguments) of a plain backbone state dict: a BEiT-style ViT
    (split q/v biases, layer scale) or mimkit's ViT."""
    if is_beit_state_dict(sd):
        return "beit", infer_beit_args(sd)
    return "vit", _backbone_vit_args(sd)


def describe_mismatch(src: dict, dst: dict) -> list[str]:
    """Human-readable differences between two argument dicts (checkpoint vs model)."""
    names = {
        "embed_dim": "embed dim",
        "depth": "depth",
        "patch_size": "patch size",
        "in_chans": "input channels",
        "decoder_embed_dim": "decoder dim",
        "decoder_depth": "decoder depth",
    }
    return [
        f"{label} {src[k]} in checkpoint vs {dst[k]} in model"
        for k, label in names.items()
        if k in src and k in dst and src[k] != dst[k]
    ]


# ---------------------------------------------------------------------------- loading


@dataclass
class LoadReport:
    path: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # decoder keys into an encoder
    reshaped: list[str] = field(default_factory=list)  # e.g. pos_embed 14x14 -> 16x16
    dropped: list[str] = field(default_factory=list)  # head of another class count

    def __str__(self) -> str:
        parts = [f"loaded {self.loaded} tensors from {self.path}"]
        if self.reshaped:
            parts.append("resized " + ", ".join(self.reshaped))
        if self.ignored:
            parts.append(f"ignored {len(self.ignored)} pretraining-only tensors")
        if self.dropped:
            parts.append("new (shape differs): " + _short(self.dropped))
        if self.missing:
            parts.append("missing (left as initialised): " + _short(self.missing))
        if self.unexpected:
            parts.append("unexpected (not used): " + _short(self.unexpected))
        return "; ".join(parts)


def _short(keys: list[str], n: int = 6) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_checkpoint(
    model: nn.Module,
    source: str | Path | Checkpoint,
    strict: bool = False,
    trust: bool = False,
    network: str = "teacher",
) -> LoadReport:
    """Load weights into ``model`` from a file (or a ``Checkpoint``) and report what happened.

    Position embeddings are interpolated bicubically when the grid differs (as the
    official ``interpolate_pos_embed``); decoder weights are ignored by an encoder;
    a classifier head of another size is left new. ``strict=True`` raises on any
    missing or unexpected key. A file that fits too little of the model (another
    architecture) is an error naming what the file holds. ``trust``: see read_checkpoint.
    A self-distillation checkpoint (iBOT: mimkit's or official) loaded into a plain
    backbone gives its ``network``: 'teacher' (default, as released) or 'student'.
    """
    ckpt = source if isinstance(source, Checkpoint) else read_checkpoint(source, trust)
    bad = first_non_finite(ckpt.state_dict)
    if bad:  # every feature, logit and export of it would be NaN
        raise UserError(
            f"{ckpt.path}: tensor {bad} holds NaN/inf (a diverged run or a damaged file); "
            "use a checkpoint from before it"
        )
    report = LoadReport(ckpt.path)
    sd, left_out = select_network(dict(ckpt.state_dict), model, network)
    report.ignored = left_out
    sd = adapt_state_dict(sd, model, report)
    _check_overlap(sd, model, ckpt)
    result = model.load_state_dict(sd, strict=False)
    report.missing = [k for k in result.missing_keys if k not in report.dropped]
    report.unexpected = list(result.unexpected_keys)
    report.loaded = len(sd) - len(report.unexpected)
    if strict and (report.missing or report.unexpected or report.dropped):
        raise UserError(f"checkpoint does not match the model exactly: {report}")
    log.info("%s", report)
    return report


def network_checkpoint(ckpt: Checkpoint, network: str = "teacher") -> Checkpoint:
    """A method's full pretraining file as its plain backbone (``network``: which of a
    student/teacher pair); other files unchanged."""
    method = method_for(ckpt.state_dict)
    if method is None:
        return ckpt
    return Checkpoint(method.encoder_state_dict(ckpt.state_dict, network), ckpt.meta, ckpt.path)


def select_network(sd: dict, model: nn.Module, network: str = "teacher") -> tuple[dict, list]:
    """The backbone keys of a method's full state dict going into a plain backbone (and
    the keys left out); unchanged for a pretraining model or a plain state dict."""
    method = method_for(sd)
    if method is None or method_for(model) is not None:
        return sd, []
    encoder = method.encoder_state_dict(sd, network)
    return encoder, [k for k in sd if k not in encoder and not _renamed(k, encoder)]


def _renamed(key: str, encoder: dict) -> bool:
    """A key that reached the encoder under a shorter name (a prefix taken off)."""
    return any(key.endswith("." + k) for k in encoder) if "." in key else False


def _check_overlap(sd: dict, model: nn.Module, ckpt: Checkpoint) -> None:
    """Refuse a file of another architecture instead of loading (almost) nothing: at least
    half of the model's tensors must match by name, or half of the file's when those
    include network blocks (an encoder-only file into an MAE with its decoder; not a file
    holding two embeddings and nothing else)."""
    own = model.state_dict()
    names = [k for k in sd if k in own]
    matched = len(names)
    blocks = any(k.startswith(("blocks.", "stages.", "layers.", "layer1.")) for k in names)
    if matched and (2 * matched >= len(own) or (2 * matched >= len(sd) and blocks)):
        return
    holds = ckpt.meta.get("model_name") or _describe_keys(ckpt.state_dict)
    name = getattr(model, "model_name", type(model).__name__)
    raise UserError(
        f"{ckpt.path} holds {holds}, which does not fit {name}: {matched} of the model's "
        f"{len(own)} tensors match"
    )


def _describe_keys(sd: dict) -> str:
    keys = list(sd)
    if "patch_embed.proj.weight" in sd:
        a = infer_vit_args(sd)
        return f"a ViT (embed dim {a['embed_dim']}, depth {a['depth']})"
    return f"{len(keys)} tensors ({', '.join(keys[:3])}, ...)"


def adapt_state_dict(sd: dict, model: nn.Module, report: LoadReport) -> dict:
    """Make ``sd`` fit ``model``: architecture check, decoder filter, grid and head shapes."""
    own = model.state_dict()
    _check_architecture(sd, model, report.path)
    if "pos_embed" in sd and "pos_embed" not in own:  # e.g. LoMaR's unused sin-cos table
        report.ignored.append("pos_embed")
        del sd["pos_embed"]
    for key, value in list(sd.items()):
        if key not in own or own[key].shape == value.shape:
            continue
        if key.endswith("pos_embed") and value.ndim == 3:
            sd[key] = _resize_pos_embed(value, own[key])
            report.reshaped.append(f"{key} {_grid(value)} -> {_grid(own[key])}")
        elif (resized := _resize_other(key, value, own[key], model)) is not None:
            sd[key] = resized
            report.reshaped.append(f"{key} {tuple(value.shape)} -> {tuple(own[key].shape)}")
        elif key.startswith("head."):
            report.dropped.append(key)
            del sd[key]
        else:
            raise UserError(
                f"{report.path}: '{key}' has shape {tuple(value.shape)} in the checkpoint "
                f"but {tuple(own[key].shape)} in the model"
            )
    return sd


def _resize_other(key, value, target, model):
    """Hook for tensors whose size follows the input (relative-position tables)."""
    fn = getattr(model, "resize_checkpoint_tensor", None)
    return fn(key, value, target) if fn else None


def _check_architecture(sd: dict, model: nn.Module, path: str) -> None:
    if "patch_embed.proj.weight" not in sd or not hasattr(model, "arch_config"):
        return
    src = infer_vit_args(sd)
    dst = model.arch_config()
    diffs = describe_mismatch(src, dst)
    if diffs:
        raise UserError(f"{path} is another architecture: {'; '.join(diffs)}")


def _grid(pos: torch.Tensor) -> str:
    n = int(round((pos.shape[1] - 1) ** 0.5))
    return f"{n}x{n}"


def _resize_pos_embed(pos: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(1, 1 + h*w, D) -> (1, 1 + H*W, D), bicubic, cls entry kept (official behaviour)."""
    old = int(round((pos.shape[1] - 1) ** 0.5))
    new = int(round((target.shape[1] - 1) ** 0.5))
    return resample_abs_pos_embed(
        pos,
        new_size=[new, new],
        old_size=[old, old],
        num_prefix_tokens=1,
        interpolation="bicubic",
        antialias=False,
    )


# ---------------------------------------------------------------------------- building


def is_pretrain_checkpoint(ckpt: Checkpoint) -> bool:
    """A method's full pretraining model (an MAE with its decoder, a LoMaR with its pixel
    head, an iBOT student and teacher, a SimMIM with its head...)."""
    return method_for(ckpt.state_dict) is not None


def model_from_checkpoint(
    source, kind: str = "encoder", trust: bool = False, network: str = "teacher", **overrides
) -> tuple[nn.Module, LoadReport]:
    """Build the model a checkpoint describes and load its weights.

    kind='pretrain': the full pretraining model of the file's method (mimkit
    pretrain checkpoints, official MAE *visualize* files, official iBOT / SimMIM files).
    kind='encoder': the plain backbone, from any backbone or pretraining file (a
    student/teacher file gives its ``network``, teacher by default). Architecture comes
    from mimkit metadata when present, else from tensor shapes (official files).
    ``overrides`` go to ``create_model``.
    """
    from ..models import create_model, is_pretrainer

    ckpt = source if isinstance(source, Checkpoint) else read_checkpoint(source, trust)
    name, args = ckpt.meta.get("model_name"), dict(ckpt.meta.get("model_args") or {})
    if not name:
        method = method_for(ckpt.state_dict)
        name, args = (
            method.infer_args(ckpt.state_dict) if method else backbone_args(ckpt.state_dict)
        )
    if kind == "pretrain":
        if not is_pretrain_checkpoint(ckpt):
            raise UserError(
                f"{ckpt.path} has no decoder or pretraining head (an encoder-only or "
                "fine-tuned file); pictures need a full pretraining checkpoint (mimkit "
                "pretrain output, an official MAE *_visualize_* file, an official iBOT or "
                "SimMIM training file)"
            )
        model = create_model(name, **{**args, **overrides})
    elif kind == "encoder":
        if is_pretrainer(name):
            with torch.device("meta"):
                full = create_model(name, **args)
            name, args = getattr(full, "encoder_name", "vit"), full.encoder_config()
        model = create_model(name, **{**args, **overrides})
    else:
        raise ValueError(f"kind must be 'pretrain' or 'encoder', got {kind!r}")
    report = load_checkpoint(model, ckpt, network=network)
    return model, report


def init_pretraining(
    model: nn.Module, source, trust: bool = False, network: str = "teacher"
) -> LoadReport:
    """Continued pretraining: load what a file holds into a fresh pretraining model.

    A file of the same method loads whole (an MAE with its decoder, an iBOT student and
    teacher with its centres, a SimMIM with its head); any other file (an encoder-only
    MAE file, another method's checkpoint, a Hugging Face folder, a timm backbone)
    gives its backbone, which starts the model's encoder (both networks of a
    student/teacher method), the rest keeping its initialisation. The report lists what
    was loaded and what was initialised."""
    if isinstance(source, (str, Path)) and (Path(source) / "checkpoint-last.pth").is_file():
        source = Path(source) / "checkpoint-last.pth"  # a mimkit run folder
    ckpt = source if isinstance(source, Checkpoint) else read_checkpoint(source, trust)
    mine, theirs = method_for(model), method_for(ckpt.state_dict)
    sd = dict(ckpt.state_dict)
    if theirs is not mine:
        backbone = theirs.encoder_state_dict(sd, network) if theirs else sd
        sd = mine.from_backbone(backbone)
    report = load_checkpoint(model, Checkpoint(sd, ckpt.meta, ckpt.path), network=network)
    log.info(
        "continued pretraining from %s: %d tensors loaded, %d initialised (%s)",
        ckpt.path,
        report.loaded,
        len(report.missing) + len(report.dropped),
        _short(report.missing + report.dropped) or "none",
    )
    return report
