"""Hugging Face transformers folders in and out: ViTMAE, ViT and (for mean pooling) BEiT.

What maps to what (exact; ``tests/test_hf_interop.py`` compares the numbers):

- ``MaskedAutoencoder`` <-> ``ViTMAEForPreTraining``: the same ``noise`` gives the same
  mask, ``pred`` = ``logits`` and the same loss (``norm_pix_loss``, ``mask_ratio`` kept).
- ``VisionTransformer`` without head, ``global_pool='token'`` <-> ``ViTMAEModel`` with
  ``mask_ratio`` 0.0 (nothing removed; HF still orders the tokens by ``noise``: pass
  ``noise=torch.arange(L).expand(N, L)`` for image order, or un-shuffle by ``ids_restore``).
  A ``ViTModel`` folder reads too (its ``pooler.dense`` is dropped).
- token-pool classifier <-> ``ViTForImageClassification`` (CLS token after the final norm).
- avg-pool classifier (the MAE fine-tuned layout: ``fc_norm`` on the mean of the patch
  tokens, ``norm`` = Identity) <-> ``BeitForImageClassification`` (``BeitModel`` without
  head) with absolute position embeddings, no relative bias, no layer scale and mean
  pooling, whose ``pooler.layernorm`` is our ``fc_norm``. No ViT/ViTMAE class of
  transformers pools that way. BEiT's attention has no key bias; dropping ours is exact,
  since a key bias adds ``q . b_k`` to every score of a query and softmax ignores a
  per-row constant (it comes back as zeros).

Weights are written in the key layout of the Hub (transformers 4.x, and what 5.x's
``save_pretrained`` writes by default): ``vit.encoder.layer.N.attention.attention.query``,
``intermediate.dense``, ``output.dense``, ``decoder.decoder_layers.N``... transformers
>= 4.40 loads it natively and 5.x converts it on load. Reading accepts that layout, the
5.x in-memory one (``layers.N.attention.q_proj``, ``mlp.fc1``; ``save_original_format=
False``) and 5.x's own save of the MAE decoder (``decoder.decoder_encoder.layer.N``).
Neither direction imports transformers: a folder is a ``config.json`` and safetensors.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import UserError
from ..methods import method_for
from ..utils.finite import refuse_non_finite
from .state import Checkpoint

log = logging.getLogger("mimkit")

CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
BIN = "pytorch_model.bin"
_WEIGHT_FILES = (SAFETENSORS, SAFETENSORS + ".index.json", BIN, BIN + ".index.json")
_MODEL_TYPES = ("vit_mae", "vit", "beit")
LAYER_NORM_EPS = 1e-6  # mimkit's ViT and the official MAE (transformers' default is 1e-12)

# Where each architecture keeps the encoder: ``vit.``/``beit.`` inside a task model.
_ROOT = {
    "ViTMAEForPreTraining": "vit.",
    "ViTMAEModel": "",
    "ViTForImageClassification": "vit.",
    "BeitForImageClassification": "beit.",
    "BeitModel": "",
}
# One transformer block: our (timm / official MAE) leaf -> the Hub layout's leaf.
_BLOCK = {
    "norm1": "layernorm_before",
    "attn.q": "attention.attention.query",
    "attn.k": "attention.attention.key",
    "attn.v": "attention.attention.value",
    "attn.proj": "attention.output.dense",
    "norm2": "layernorm_after",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
# Encoder tensors outside the blocks (under the root prefix).
_ENCODER = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
    "fc_norm.weight": "pooler.layernorm.weight",  # BEiT mean pooling: LayerNorm(mean(patches))
    "fc_norm.bias": "pooler.layernorm.bias",
    # a BEiT-style encoder (SimMIM's): the relative position table shared by all blocks
    "rel_pos_bias.relative_position_bias_table": (
        "encoder.relative_position_bias.relative_position_bias_table"
    ),
}
# A BEiT-style block's tensors that are not (weight, bias) pairs: split q/v biases, layer
# scale, a per-block relative position table (our leaf -> the Hub layout's leaf).
_BLOCK_BEIT = {
    "attn.q_bias": "attention.attention.query.bias",
    "attn.v_bias": "attention.attention.value.bias",
    "gamma_1": "lambda_1",
    "gamma_2": "lambda_2",
    "attn.relative_position_bias_table": (
        "attention.attention.relative_position_bias.relative_position_bias_table"
    ),
}
_BEIT_OURS = re.compile(r"^blocks\.(\d+)\.(attn\.q_bias|attn\.v_bias|gamma_1|gamma_2|"
                        r"attn\.relative_position_bias_table)$")  # fmt: skip
# Tensors at the top of a task model (no root prefix): MAE decoder, classifier.
_TOP = {
    "head.weight": "classifier.weight",
    "head.bias": "classifier.bias",
    "mask_token": "decoder.mask_token",
    "decoder_pos_embed": "decoder.decoder_pos_embed",
    **{
        f"{m}.{p}": f"decoder.{m}.{p}"
        for m in ("decoder_embed", "decoder_norm", "decoder_pred")
        for p in ("weight", "bias")
    },
}
_BLOCK_OURS = re.compile(r"^(decoder_blocks|blocks)\.(\d+)\.(.+)\.(weight|bias)$")
_BLOCK_HF = re.compile(r"^(decoder\.decoder_layers|encoder\.layer)\.(\d+)\.(.+)\.(weight|bias)$")
# transformers 5 names (in memory, and its save of the MAE decoder) -> the Hub layout.
_V5_TO_HUB = (
    (re.compile(r"^((?:vit|beit)\.)?layers\."), r"\1encoder.layer."),
    (re.compile(r"^decoder\.decoder_encoder\.layer\."), "decoder.decoder_layers."),
    (re.compile(r"\.attention\.q_proj\."), ".attention.attention.query."),
    (re.compile(r"\.attention\.k_proj\."), ".attention.attention.key."),
    (re.compile(r"\.attention\.v_proj\."), ".attention.attention.value."),
    (re.compile(r"\.attention\.o_proj\."), ".attention.output.dense."),
    (re.compile(r"\.mlp\.fc1\."), ".intermediate.dense."),
    (re.compile(r"\.mlp\.fc2\."), ".output.dense."),
)
# HF tensors with no counterpart that a mimkit model does not need (dropped, logged).
_UNUSED = re.compile(r"(^|\.)(pooler\.dense\.|embeddings\.mask_token$|.*relative_position_index$)")
# transformers 5's in-memory name of the shared table -> the Hub layout
_V5_SHARED = (
    re.compile(r"^((?:beit\.)?)shared_position_bias\."),
    r"\1encoder.relative_position_bias.",
)


# ---------------------------------------------------------------------------- export


def hf_architecture(model) -> str:
    """The transformers class that computes what ``model`` computes, or a UserError."""
    from ..models.beit import BEiT
    from ..models.vit import VisionTransformer

    name = type(model).__name__
    method = method_for(model)
    if method is not None and method.hf_pretraining:
        return method.hf_pretraining
    if type(model) is BEiT:  # SimMIM's encoder: transformers' BEiT computes it exactly
        return "BeitForImageClassification" if model.num_classes else "BeitModel"
    if not isinstance(model, VisionTransformer):
        raise UserError(
            f"--format hf exports MAE and ViT models; {name} has no transformers "
            "counterpart: export it with --format torchscript or --format onnx"
        )
    if getattr(model, "rel_pos", None) or model.pos_embed_type == "none":
        raise UserError(
            f"{name} uses LoMaR's iRPE relative positions, which no transformers ViT has: "
            "export it with --format torchscript or --format onnx"
        )
    if type(model) is not VisionTransformer:
        raise UserError(f"--format hf exports MAE and ViT models, not {name}")
    if not model.has_class_token or model.num_reg_tokens or model.no_embed_class:
        raise UserError("--format hf needs a ViT with a class token and no register tokens")
    if model.global_pool == "token":
        return "ViTForImageClassification" if model.num_classes else "ViTMAEModel"
    if model.global_pool == "avg":
        return "BeitForImageClassification" if model.num_classes else "BeitModel"
    raise UserError(
        f"global_pool='{model.global_pool}' has no transformers counterpart: 'token' "
        "exports as ViTForImageClassification, 'avg' (fc_norm) as BeitForImageClassification"
    )


def export_hf(
    model, out_dir: str | Path, class_names: Sequence[str] | None = None, force: bool = False
) -> Path:
    """Write ``out_dir/config.json`` + ``model.safetensors`` (+ ``preprocessor_config.json``)
    that ``transformers.AutoModel.from_pretrained(out_dir)`` loads; returns ``out_dir``.

    The class is :func:`hf_architecture`'s; ``class_names`` become ``id2label``.
    ``out_dir`` must be new, empty or a transformers folder (overwritten), unless ``force``
    (its other files are then left beside the export).
    """
    arch = hf_architecture(model)
    num_classes = getattr(model, "num_classes", 0)
    if class_names is not None and len(class_names) != num_classes:
        raise UserError(f"{len(class_names)} class names for a head of {num_classes} classes")
    refuse_non_finite(model)
    config = hf_config(model, arch, class_names)
    sd = to_hf_state_dict(model.state_dict(), arch)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--format hf writes a folder, but {out} is a file")
    if out.is_dir() and not force and not is_hf_folder(out) and any(out.iterdir()):
        raise UserError(
            f"{out} holds other files (not a transformers folder): export into a new or "
            "empty folder, or add --force (force=True) to write beside them"
        )
    out.mkdir(parents=True, exist_ok=True)
    _write_safetensors(sd, out / SAFETENSORS)
    (out / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (out / "preprocessor_config.json").write_text(json.dumps(_processor(model), indent=2) + "\n")
    log.info("wrote %s (%s)", out, arch)
    return out


def hf_usage(out_dir: str | Path) -> str:
    """One line of Python that loads an exported folder (for the CLI to print)."""
    arch = json.loads((Path(out_dir) / CONFIG).read_text())["architectures"][0]
    return f"transformers.{arch}.from_pretrained({str(out_dir)!r})  # or AutoModel"


def hf_config(model, arch: str, class_names: Sequence[str] | None = None) -> dict:
    """The ``config.json`` of ``arch`` for ``model``: every field that changes the math."""
    cfg = model.arch_config()
    mlp = model.blocks[0].mlp.fc1.out_features
    out = dict(
        architectures=[arch],
        hidden_size=cfg["embed_dim"],
        num_hidden_layers=cfg["depth"],
        num_attention_heads=cfg["num_heads"],
        intermediate_size=mlp,
        hidden_act="gelu",  # exact erf GELU, as timm's nn.GELU
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=0.02,
        layer_norm_eps=LAYER_NORM_EPS,
        image_size=cfg["img_size"],
        patch_size=cfg["patch_size"],
        num_channels=cfg["in_chans"],
    )
    if arch.startswith("ViTMAE"):
        out.update(model_type="vit_mae", qkv_bias=True)
        if arch == "ViTMAEForPreTraining":
            out.update(
                decoder_hidden_size=cfg["decoder_embed_dim"],
                decoder_num_hidden_layers=cfg["decoder_depth"],
                decoder_num_attention_heads=cfg["decoder_num_heads"],
                decoder_intermediate_size=model.decoder_blocks[0].mlp.fc1.out_features,
                mask_ratio=float(cfg["mask_ratio"]),
                norm_pix_loss=bool(cfg["norm_pix_loss"]),
            )
        else:
            out["mask_ratio"] = 0.0  # a feature extractor: keep every patch
    elif arch.startswith("ViT"):
        out.update(model_type="vit", qkv_bias=True, encoder_stride=cfg["patch_size"])
    elif "use_shared_rel_pos_bias" in cfg:  # a BEiT-style encoder
        out.update(
            model_type="beit",
            use_absolute_position_embeddings=cfg["use_abs_pos_emb"],
            use_relative_position_bias=cfg["use_rel_pos_bias"],
            use_shared_relative_position_bias=cfg["use_shared_rel_pos_bias"],
            use_mean_pooling=cfg["global_pool"] == "avg",
            use_mask_token=False,
            layer_scale_init_value=cfg["init_values"] or 0.0,
            drop_path_rate=0.0,
        )
    else:
        out.update(
            model_type="beit",
            use_absolute_position_embeddings=True,
            use_relative_position_bias=False,
            use_shared_relative_position_bias=False,
            use_mean_pooling=True,
            use_mask_token=False,
            layer_scale_init_value=0.0,  # no layer scale (lambda = 1)
            drop_path_rate=0.0,
        )
    if model.num_classes:
        names = list(class_names or (f"LABEL_{i}" for i in range(model.num_classes)))
        out["id2label"] = {str(i): str(n) for i, n in enumerate(names)}
        out["label2id"] = {str(n): i for i, n in enumerate(names)}
    return out


def _processor(model) -> dict:
    """A ``ViTImageProcessor`` config: resize to the model's size, ImageNet mean/std (the
    normalisation mimkit trains with), so HF pipelines feed the model what it expects."""
    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD

    size = model.patch_embed.img_size[0]
    return dict(
        image_processor_type="ViTImageProcessor",
        do_resize=True,
        size={"height": size, "width": size},
        resample=3,  # bicubic
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
    )


def to_hf_state_dict(sd: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """Our (official MAE / timm) keys -> the Hub layout of ``arch``; ``qkv`` split in three.

    BEiT has no key bias, so the key third of ``qkv.bias`` is left out (exact, see top)."""
    root, beit = _ROOT[arch], arch.startswith("Beit")
    out = {}
    for key, value in _split_qkv(sd).items():
        if beit and key.endswith(".attn.k.bias"):
            continue
        out[_hf_name(key, root)] = value.detach().contiguous().cpu()
    return out


def _hf_name(key: str, root: str) -> str:
    if key in _TOP:
        return _TOP[key]
    if key in _ENCODER:
        return root + _ENCODER[key]
    if m := _BEIT_OURS.match(key):
        return f"{root}encoder.layer.{m[1]}.{_BLOCK_BEIT[m[2]]}"
    m = _BLOCK_OURS.match(key)
    if m and m[3] in _BLOCK:
        group, i, leaf, kind = m.groups()
        base = "decoder.decoder_layers" if group == "decoder_blocks" else f"{root}encoder.layer"
        return f"{base}.{i}.{_BLOCK[leaf]}.{kind}"
    raise UserError(f"'{key}' has no place in a transformers ViT (a layer this export lacks)")


def _split_qkv(sd: dict) -> dict:
    out = {}
    for key, value in sd.items():
        if ".attn.qkv." in key:
            for part, chunk in zip("qkv", value.chunk(3, dim=0)):
                out[key.replace(".attn.qkv.", f".attn.{part}.")] = chunk
        else:
            out[key] = value
    return out


def _write_safetensors(sd: dict, path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file(sd, str(tmp), metadata={"format": "pt"})  # transformers checks 'format'
    tmp.replace(path)


# ---------------------------------------------------------------------------- import


def is_hf_folder(path: str | Path) -> bool:
    """A folder with a transformers ``config.json`` (a ``model_type``) and weights."""
    path = Path(path)
    if not (path.is_dir() and (path / CONFIG).is_file()):
        return False
    if not any((path / f).is_file() for f in _WEIGHT_FILES):
        return False
    try:
        return "model_type" in json.loads((path / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def read_hf_folder(path: str | Path) -> Checkpoint:
    """A ViTMAE (pretraining or ``ViTMAEModel``), ViT (``ViTModel`` /
    ``ViTForImageClassification``) or BEiT (mean-pooled, see top) folder as a
    :class:`Checkpoint` with our key layout; ``meta`` names the mimkit model
    (``create_model(meta['model_name'], **meta['model_args'])``) and, for a classifier,
    its ``classes`` from ``id2label``."""
    path = Path(path)
    if not is_hf_folder(path):
        raise UserError(
            f"{path} is not a transformers folder (config.json with a model_type, and "
            "model.safetensors or pytorch_model.bin)"
        )
    cfg = _read_config(path)
    _check_supported(cfg, path)
    raw = _load_weights(path)
    sd = from_hf_state_dict(raw, path)
    name, args = _model_args(cfg, sd, path)
    if name == "beit":
        _check_beit_weights(args, sd, path)
        sd = split_qv_bias(sd)
    meta = {
        "model_name": name,
        "model_args": args,
        "source": "transformers",
        "hf_architecture": (cfg.get("architectures") or [cfg["model_type"]])[0],
    }
    if "head.weight" in sd:
        labels = cfg.get("id2label") or {}
        meta["classes"] = [str(labels.get(str(i), i)) for i in range(args["num_classes"])]
    return Checkpoint(sd, meta, str(path))


def from_hf_state_dict(raw: dict[str, torch.Tensor], path="<memory>") -> dict:
    """Any of the three HF layouts (see top) -> our keys, ``q/k/v`` fused into ``qkv``."""
    sd, dropped = {}, []
    for key, value in raw.items():
        for pattern, repl in (*_V5_TO_HUB, _V5_SHARED):
            key = pattern.sub(repl, key)
        ours = _our_name(key)
        if ours is not None:
            sd[ours] = value
        elif _UNUSED.search(key):
            dropped.append(key)
        else:
            sd[key] = value  # load_checkpoint reports it as unexpected
    if dropped:
        log.info("%s: not used by mimkit's ViT: %s", path, ", ".join(sorted(dropped)))
    return _fuse_qkv(sd)


_OURS_TOP = {v: k for k, v in _TOP.items()}
_OURS_ENCODER = {v: k for k, v in _ENCODER.items()}
_OURS_BLOCK = {v: k for k, v in _BLOCK.items()}
_OURS_BEIT = {v: k for k, v in _BLOCK_BEIT.items() if not k.endswith("_bias")}
_BEIT_HF = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")


def _our_name(key: str) -> str | None:
    if key in _OURS_TOP:
        return _OURS_TOP[key]
    key = re.sub(r"^(vit|beit)\.", "", key)
    if key in _OURS_ENCODER:
        return _OURS_ENCODER[key]
    if (m := _BEIT_HF.match(key)) and m[2] in _OURS_BEIT:
        return f"blocks.{m[1]}.{_OURS_BEIT[m[2]]}"
    m = _BLOCK_HF.match(key)
    if m and m[3] in _OURS_BLOCK:
        group, i, leaf, kind = m.groups()
        base = "decoder_blocks" if group.startswith("decoder") else "blocks"
        return f"{base}.{i}.{_OURS_BLOCK[leaf]}.{kind}"
    return None


def _fuse_qkv(sd: dict) -> dict:
    """``*.attn.{q,k,v}.*`` -> ``*.attn.qkv.*``; a missing key bias (BEiT) is zero."""
    for qkey in [k for k in sd if k.endswith(".attn.q.weight")]:
        base = qkey[: -len("q.weight")]
        sd[base + "qkv.weight"] = torch.cat([sd.pop(f"{base}{p}.weight") for p in "qkv"])
        bias = [sd.pop(f"{base}{p}.bias", None) for p in "qkv"]
        if bias[0] is not None and bias[2] is not None:
            k = bias[1] if bias[1] is not None else torch.zeros_like(bias[0])
            sd[base + "qkv.bias"] = torch.cat([bias[0], k, bias[2]])
    return sd


def _read_config(path: Path) -> dict:
    try:
        cfg = json.loads((path / CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path / CONFIG}: {e}") from None
    if cfg.get("model_type") not in _MODEL_TYPES:
        raise UserError(
            f"{path}: model_type '{cfg.get('model_type')}' is not supported; transformers "
            f"folders of model_type {', '.join(_MODEL_TYPES)} load into mimkit"
        )
    return cfg


def _square(cfg: dict, key: str, path: Path) -> int:
    value = cfg.get(key, 224 if key == "image_size" else 16)
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise UserError(f"{path / CONFIG}: {key}={value} is not square; mimkit's ViT is")
        value = value[0]
    return int(value)


def _check_supported(cfg: dict, path: Path) -> None:
    """One line naming the config key for what mimkit's ViT cannot compute."""
    where = path / CONFIG
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise UserError(
            f"{where}: hidden_act='{cfg['hidden_act']}' is not supported (mimkit's ViT uses "
            "the exact 'gelu')"
        )
    if cfg["model_type"] != "beit" and not cfg.get("qkv_bias", True):
        raise UserError(f"{where}: qkv_bias=false is not supported (mimkit's ViT has q/k/v biases)")
    # a BEiT folder with relative positions or layer scale loads into mimkit's BEiT
    # (models.beit), one with neither into its ViT (mean pooling = fc_norm)
    eps = cfg.get("layer_norm_eps", 1e-12)
    if eps != LAYER_NORM_EPS:
        log.warning(
            "%s: layer_norm_eps=%g but mimkit's ViT uses %g; outputs differ slightly "
            "(about eps / variance)",
            where,
            eps,
            LAYER_NORM_EPS,
        )


# config.json key -> (its default, our weight it sizes, that weight's dim); checked first
# so that an edited key is named, not a later key that no longer fits it
_SIZED_BY = (
    ("hidden_size", 768, "patch_embed.proj.weight", 0),
    ("num_channels", 3, "patch_embed.proj.weight", 1),
    ("intermediate_size", None, "blocks.0.mlp.fc1.weight", 0),  # default: 4 x hidden_size
    ("decoder_hidden_size", 512, "decoder_embed.weight", 0),
    ("decoder_intermediate_size", 2048, "decoder_blocks.0.mlp.fc1.weight", 0),
)


def _check_sizes(cfg: dict, sd: dict, path: Path) -> None:
    """One line naming the config key that contradicts a weight's shape."""
    for key, default, weight, dim in _SIZED_BY:
        if weight not in sd:
            continue
        value = cfg.get(key, default if default is not None else 4 * cfg.get("hidden_size", 768))
        shape = tuple(sd[weight].shape)
        if value != shape[dim]:
            raise UserError(
                f"{path / CONFIG}: {key}={value} contradicts the weights: {weight} has shape "
                f"{shape}, {key}={shape[dim]}; correct config.json (or re-export the folder)"
            )


def _model_args(cfg: dict, sd: dict, path: Path) -> tuple[str, dict]:
    """The registered mimkit model and its explicit arguments for this config."""
    _check_sizes(cfg, sd, path)
    dim = cfg.get("hidden_size", 768)
    args = dict(
        img_size=_square(cfg, "image_size", path),
        patch_size=_square(cfg, "patch_size", path),
        in_chans=cfg.get("num_channels", 3),
        embed_dim=dim,
        depth=cfg.get("num_hidden_layers", 12),
        num_heads=cfg.get("num_attention_heads", 12),
        mlp_ratio=cfg.get("intermediate_size", 4 * dim) / dim,
    )
    method = method_for(sd)
    if method is not None:  # the transformers layout of a full pretraining model
        ddim = cfg.get("decoder_hidden_size", 512)
        ratio = cfg.get("decoder_intermediate_size", 2048) / ddim
        if ratio != args["mlp_ratio"]:
            raise UserError(
                f"{path / CONFIG}: decoder_intermediate_size="
                f"{cfg.get('decoder_intermediate_size', 2048)} is not supported: mimkit's MAE "
                f"decoder uses the encoder's MLP ratio ({args['mlp_ratio']})"
            )
        return method.infer_args(sd)[0], args | dict(
            decoder_embed_dim=ddim,
            decoder_depth=cfg.get("decoder_num_hidden_layers", 8),
            decoder_num_heads=cfg.get("decoder_num_attention_heads", 16),
            norm_pix_loss=bool(cfg.get("norm_pix_loss", False)),
            mask_ratio=float(cfg.get("mask_ratio", 0.75)),
        )
    mean_pool = cfg["model_type"] == "beit" and cfg.get("use_mean_pooling", True)
    args["global_pool"] = "avg" if mean_pool else "token"
    args["num_classes"] = sd["head.weight"].shape[0] if "head.weight" in sd else 0
    if _beit_style(cfg):
        scale = cfg.get("layer_scale_init_value", 0.1)
        return "beit", args | dict(
            init_values=scale if scale and scale > 0 else None,
            use_abs_pos_emb=bool(cfg.get("use_absolute_position_embeddings", False)),
            use_rel_pos_bias=bool(cfg.get("use_relative_position_bias", False)),
            use_shared_rel_pos_bias=bool(cfg.get("use_shared_relative_position_bias", False)),
        )
    return "vit", args


def _beit_style(cfg: dict) -> bool:
    """A BEiT that mimkit's ViT cannot compute: relative positions, layer scale, or no
    absolute position table."""
    if cfg["model_type"] != "beit":
        return False
    return bool(
        cfg.get("use_relative_position_bias")
        or cfg.get("use_shared_relative_position_bias")
        or not cfg.get("use_absolute_position_embeddings")
        or (cfg.get("layer_scale_init_value", 0.1) or 0) > 0
    )


def _check_beit_weights(args: dict, sd: dict, path: Path) -> None:
    """One line naming the config key the weights contradict (an edited config.json)."""
    where = path / CONFIG
    tables = any(k.endswith("relative_position_bias_table") for k in sd)
    if (args["use_rel_pos_bias"] or args["use_shared_rel_pos_bias"]) and not tables:
        raise UserError(
            f"{where}: use_(shared_)relative_position_bias=true but the weights hold no "
            "relative position table: correct config.json (or re-export the folder)"
        )
    if args["init_values"] and "blocks.0.gamma_1" not in sd:
        raise UserError(
            f"{where}: layer_scale_init_value > 0 (layer scale) but the weights hold no "
            "lambda_1 / lambda_2: set it to 0 in config.json (or re-export the folder)"
        )
    if not args["use_abs_pos_emb"] and "pos_embed" in sd:
        raise UserError(
            f"{where}: use_absolute_position_embeddings=false but the weights hold "
            "embeddings.position_embeddings: correct config.json (or re-export the folder)"
        )


def split_qv_bias(sd: dict) -> dict:
    """A fused ``qkv.bias`` (zero key third, as BEiT has none) -> ``q_bias`` / ``v_bias``."""
    for key in [k for k in sd if k.endswith(".attn.qkv.bias")]:
        q, _, v = sd.pop(key).chunk(3)
        base = key[: -len("qkv.bias")]
        sd[base + "q_bias"], sd[base + "v_bias"] = q, v
    return sd


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, pytorch_model.bin, or their sharded ``*.index.json`` forms."""
    for name in _WEIGHT_FILES:
        file = path / name
        if not file.is_file():
            continue
        try:
            if name.endswith(".index.json"):
                shards = sorted(set(json.loads(file.read_text())["weight_map"].values()))
                return {k: v for s in shards for k, v in _load_file(path / s).items()}
            return _load_file(file)
        except Exception as e:  # safetensors and torch.load raise their own error types
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"cannot read weights in {path}: {msg}") from None
    raise UserError(f"{path} has a config.json but no weights ({', '.join(_WEIGHT_FILES)})")


def _load_file(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file))
    from ..utils.io import safe_torch_load

    return safe_torch_load(file, what="weights file")
