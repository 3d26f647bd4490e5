"""Read weights from any supported file and load them into a model with one clear report.

Accepted: official MAE files (``{'model': sd}``: encoder-only pretrain, full/visualize,
fine-tuned), mimkit checkpoints (same ``model`` key plus metadata), timm-layout state
dicts, bare state dicts, ``.pth``/``.pt``/``.bin`` and ``.safetensors``. DDP
(``module.``) and torch.compile (``_orig_mod.``) prefixes are stripped (timm's
``clean_state_dict``).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from timm.layers import resample_abs_pos_embed
from timm.models import clean_state_dict
from torch import nn

from ..errors import UserError
from ..utils.io import safe_torch_load

log = logging.getLogger("mimkit")

# Pretraining-only tensors (MAE decoder, LoMaR pixel head): an encoder ignores them.
_DECODER = re.compile(r"^(decoder_|mask_token|encoder_pred)")


@dataclass
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)  # model_name, model_args, epoch, config, ...
    path: str = "<memory>"


def read_checkpoint(path: str | Path, trust: bool = False) -> Checkpoint:
    """Load a file into a plain state dict + metadata. Raises UserError with the path.

    ``.pth`` files are read with ``weights_only=True`` and a short allow-list of plain
    types (see ``utils.io.safe_torch_load``); ``trust=True`` lifts it for files you vouch
    for (it lets the file run code)."""
    path = Path(path)
    if path.is_dir():  # a Hugging Face transformers folder (config.json + weights)
        from .hf import is_hf_folder, read_hf_folder

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
    if isinstance(obj.get("student"), dict) and isinstance(obj.get("teacher"), dict):
        from .ibot import official_to_ibot  # official iBOT: student, teacher, centres

        return official_to_ibot(obj), {"epoch": obj.get("epoch"), "source": "official iBOT"}
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
    """ViT (and MAE decoder) constructor arguments read off tensor shapes.

    The number of heads is not in the shapes: the usual value for the width is used
    (tiny 3, small 6, base 12, large/huge 16; decoder 16), as official files need.
    """
    from ..models.vit import HEADS_FOR_DIM

    if "patch_embed.proj.weight" not in sd:
        raise UserError("not a ViT checkpoint: no 'patch_embed.proj.weight'")
    dim, in_chans, p, _ = sd["patch_embed.proj.weight"].shape
    depth = _count_blocks(sd, "blocks.")
    args = dict(
        embed_dim=dim,
        depth=depth,
        patch_size=p,
        in_chans=in_chans,
        num_heads=HEADS_FOR_DIM.get(dim, max(1, dim // 64)),
        mlp_ratio=sd["blocks.0.mlp.fc1.weight"].shape[0] / dim,
    )
    if "pos_embed" in sd:
        grid = int(round((sd["pos_embed"].shape[1] - 1) ** 0.5))
        args["img_size"] = grid * p
    if "decoder_embed.weight" in sd:
        args.update(
            decoder_embed_dim=sd["decoder_embed.weight"].shape[0],
            decoder_depth=_count_blocks(sd, "decoder_blocks."),
            decoder_num_heads=16,
        )
    if "blocks.0.attn.rpe_k.lookup_table_weight" in sd:
        args["rel_pos"] = "irpe"  # LoMaR's relative positions; the table gives the heads
        args["num_heads"] = dim // sd["blocks.0.attn.rpe_k.lookup_table_weight"].shape[1]
        if "pos_embed" not in sd:
            args["pos_embed"] = "none"
    if "fc_norm.weight" in sd:
        args["global_pool"] = "avg"
    if "head.weight" in sd:
        args["num_classes"] = sd["head.weight"].shape[0]
    return args


def _count_blocks(sd: dict, prefix: str) -> int:
    ids = {int(k[len(prefix) :].split(".")[0]) for k in sd if k.startswith(prefix)}
    return max(ids) + 1 if ids else 0


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
    report = LoadReport(ckpt.path)
    sd = select_network(dict(ckpt.state_dict), model, network)
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


def is_two_network(sd: dict) -> bool:
    """A student/teacher state dict (iBOT)."""
    return "teacher.backbone.patch_embed.proj.weight" in sd


def network_checkpoint(ckpt: Checkpoint, network: str = "teacher") -> Checkpoint:
    """A student/teacher file as the plain backbone of ``network``; others unchanged."""
    if not is_two_network(ckpt.state_dict):
        return ckpt
    from .ibot import backbone_state_dict

    return Checkpoint(backbone_state_dict(ckpt.state_dict, network), ckpt.meta, ckpt.path)


def select_network(sd: dict, model: nn.Module, network: str = "teacher") -> dict:
    """The backbone of ``network`` when a student/teacher file goes into a plain model."""
    if not is_two_network(sd) or any(k.startswith("teacher.") for k in model.state_dict()):
        return sd
    from .ibot import backbone_state_dict

    return backbone_state_dict(sd, network)


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
    if "mask_token" not in own:
        report.ignored = [k for k in sd if _DECODER.match(k)]
        sd = {k: v for k, v in sd.items() if not _DECODER.match(k)}
    if "pos_embed" in sd and "pos_embed" not in own:  # e.g. LoMaR's unused sin-cos table
        report.ignored.append("pos_embed")
        del sd["pos_embed"]
    for key, value in list(sd.items()):
        if key not in own or own[key].shape == value.shape:
            continue
        if key.endswith("pos_embed") and value.ndim == 3:
            sd[key] = _resize_pos_embed(value, own[key])
            report.reshaped.append(f"{key} {_grid(value)} -> {_grid(own[key])}")
        elif resized := _resize_other(key, value, own[key], model):
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


def is_mae_checkpoint(ckpt: Checkpoint) -> bool:
    return "decoder_embed.weight" in ckpt.state_dict


def is_pretrain_checkpoint(ckpt: Checkpoint) -> bool:
    """A full pretraining model: MAE with its decoder, LoMaR with its pixel head, iBOT
    with student and teacher."""
    sd = ckpt.state_dict
    return is_mae_checkpoint(ckpt) or "encoder_pred.weight" in sd or is_two_network(sd)


def model_from_checkpoint(
    source, kind: str = "encoder", trust: bool = False, network: str = "teacher", **overrides
) -> tuple[nn.Module, LoadReport]:
    """Build the model a checkpoint describes and load its weights.

    kind='pretrain' (alias 'mae'): the full pretraining model (MAE with its decoder:
    mimkit pretrain checkpoints or official *visualize* files; LoMaR with its pixel head).
    kind='encoder': the ViT backbone, from any ViT/MAE/LoMaR/iBOT file (iBOT: the
    ``network``, teacher by default). Architecture comes from mimkit metadata when
    present, else from tensor shapes (official files). ``overrides`` go to ``create_model``.
    """
    import torch

    from ..models import create_model, is_pretrainer

    ckpt = source if isinstance(source, Checkpoint) else read_checkpoint(source, trust)
    name, args = ckpt.meta.get("model_name"), dict(ckpt.meta.get("model_args") or {})
    if not name and kind == "encoder" and is_two_network(ckpt.state_dict):  # official iBOT
        ckpt = network_checkpoint(ckpt, network)  # split once: loaded below as a plain ViT
        name, args = "vit", infer_vit_args(ckpt.state_dict)
    if not name:
        name, args = _infer_name_args(ckpt, kind)
    if kind in ("mae", "pretrain"):
        if not is_pretrain_checkpoint(ckpt):
            raise UserError(
                f"{ckpt.path} has no decoder (an encoder-only or fine-tuned file); "
                "reconstructions need a full pretraining checkpoint (mimkit pretrain output "
                "or an official MAE *_visualize_* file)"
            )
        model = create_model(name, **{**args, **overrides})
    elif kind == "encoder":
        if is_pretrainer(name):
            with torch.device("meta"):
                args = create_model(name, **args).encoder_config()
            name = "vit"
        model = create_model(name, **{**args, **overrides})
    else:
        raise ValueError(f"kind must be 'pretrain' or 'encoder', got {kind!r}")
    report = load_checkpoint(model, ckpt, network=network)
    return model, report


_LOMAR_ARGS = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio")


def _infer_name_args(ckpt: Checkpoint, kind: str) -> tuple[str, dict]:
    if is_two_network(ckpt.state_dict):
        return "ibot_vit", _infer_ibot_args(ckpt.state_dict)
    args = infer_vit_args(ckpt.state_dict)
    if "encoder_pred.weight" in ckpt.state_dict:
        return "lomar_vit", {k: v for k, v in args.items() if k in _LOMAR_ARGS}
    if is_mae_checkpoint(ckpt):
        return "mae_vit", {k: v for k, v in args.items() if k not in ("global_pool", "num_classes")}
    return "vit", args


def _infer_ibot_args(sd: dict) -> dict:
    """An official iBOT file's architecture from its shapes: the teacher backbone's ViT and
    the student head's sizes (training-only settings keep their defaults)."""
    from .ibot import backbone_state_dict

    vit = infer_vit_args(backbone_state_dict(sd, "teacher"))
    keep = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio")
    head = "student.head."
    layers = sorted(
        int(k.split(".")[3]) for k in sd if k.startswith(head + "mlp.") and k.endswith(".weight")
    )
    v = sd[head + "last_layer.weight_v"]
    args = {k: vit[k] for k in keep if k in vit}
    args.update(
        out_dim=v.shape[0],
        head_bottleneck_dim=v.shape[1],
        head_hidden_dim=sd[head + "mlp.0.weight"].shape[0],
        head_layers=len(layers),
    )
    second = sd.get(head + "last_layer2.weight_v")
    shared = second is None or torch.equal(second, v)
    args["shared_head"] = shared
    if not shared:
        args["patch_out_dim"] = second.shape[0]
    return args
