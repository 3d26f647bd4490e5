"""Export: timm-layout safetensors (+ the create_model arguments), TorchScript, ONNX."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..errors import UserError
from ..methods import method_for
from ..utils.finite import refuse_non_finite
from .state import Checkpoint

log = logging.getLogger("mimkit")

_SIZES = {192: "tiny", 384: "small", 768: "base", 1024: "large", 1280: "huge"}


def timm_recipe(model) -> dict:
    """The timm model name and keyword arguments that rebuild ``model`` exactly."""
    import timm

    cfg = model.arch_config()
    size = _SIZES.get(cfg["embed_dim"], "base")
    beit = "use_shared_rel_pos_bias" in cfg  # a BEiT-style encoder (SimMIM's): timm's Beit
    family = "beit" if beit else "vit"
    # the closest registered name; every architecture argument is passed explicitly anyway
    candidates = [f"{family}_{size}_patch{cfg['patch_size']}_224", f"{family}_base_patch16_224"]
    name = next((n for n in candidates if timm.list_models(n)), f"{family}_base_patch16_224")
    keys = ["img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio",
            "num_classes", "global_pool"]  # fmt: skip
    if beit:
        keys += ["init_values", "use_abs_pos_emb", "use_rel_pos_bias", "use_shared_rel_pos_bias"]
    kwargs = {k: cfg[k] for k in keys}
    kwargs["global_pool"] = kwargs["global_pool"] or "token"
    return {"model_name": name, "kwargs": kwargs}


def export_timm(model, out: str | Path) -> dict:
    """Write the weights as timm's VisionTransformer expects them, plus ``<out>.json``:

    timm.create_model(model_name, pretrained=True,
                      pretrained_cfg_overlay=dict(file=out, num_classes=...), **kwargs)
    """
    name = getattr(model, "model_name", "")
    if name.startswith("timm:"):  # already a timm model: its own weights and arguments
        kwargs = dict(model.arch_config())
        if not hasattr(model, "patch_embed"):  # img_size only sized the transforms (CNNs)
            kwargs.pop("img_size", None)
        recipe = {"model_name": name[len("timm:") :], "kwargs": kwargs}
        recipe["kwargs"].setdefault("num_classes", getattr(model, "num_classes", 0))
        return _write_timm(model, out, recipe)
    if not hasattr(model, "arch_config") or not hasattr(model, "patch_embed"):
        raise UserError("--format timm exports ViT encoders and classifiers only")
    if getattr(model, "rel_pos", None):
        raise UserError(
            "timm's ViT has no iRPE relative-position attention, so a LoMaR encoder cannot "
            "load there: --format torchscript or onnx export its features (or a fine-tuned "
            "classifier's logits)"
        )
    return _write_timm(model, out, timm_recipe(model))


def _write_timm(model, out: str | Path, recipe: dict) -> dict:
    out = Path(out)
    if out.suffix != ".safetensors":
        raise UserError(
            f"timm export writes safetensors: name the file *.safetensors, not {out.name}"
        )
    refuse_non_finite(model)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(out), metadata={"format": "pt", "timm_model": recipe["model_name"]})
    recipe["pretrained_cfg_overlay"] = {
        "file": str(out.resolve()),
        "num_classes": recipe["kwargs"]["num_classes"],
    }
    recipe["python"] = (
        f"timm.create_model({recipe['model_name']!r}, pretrained=True, pretrained_cfg_overlay="
        f"{recipe['pretrained_cfg_overlay']!r}, **{recipe['kwargs']!r})"
    )
    out.with_suffix(".json").write_text(json.dumps(recipe, indent=2) + "\n")
    return recipe


DEFAULT_NAMES = {"timm": "model.safetensors", "torchscript": "model.pt", "onnx": "model.onnx"}


def output_path(out: str | Path, fmt: str) -> Path:
    """``--out`` may be a file or a folder (existing, or written with a trailing slash):
    a folder gets the format's default file name inside it."""
    text = str(out)
    p = Path(out)
    if p.is_dir() or text.endswith(("/", "\\")):
        return p / DEFAULT_NAMES[fmt]
    return p


class FeatureExtractor(nn.Module):
    """An encoder as a function images -> pooled features (N, D), for TorchScript/ONNX:
    ``forward_head(forward_features(x), pre_logits=True)`` of the backbone contract."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)


def export_torchscript(model: nn.Module, out: str | Path, img_size: int) -> Path:
    """Traced TorchScript (eval mode), input (N, 3, S, S) normalised: logits of a
    classifier, or features when ``model`` is a FeatureExtractor."""
    model = model.eval()
    example = torch.randn(2, 3, img_size, img_size)
    # torch.jit is deprecated upstream but still the way to get a TorchScript file; its
    # tracer warnings concern shape checks that tests show generalise over the batch.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model(example)  # builds cached constants (iRPE bucket ids) so both traces agree
        traced = torch.jit.trace(model, example)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    traced.save(str(out))
    return out


# protobuf's 2 GiB limit on one message, less room for the graph itself
ONNX_SINGLE_FILE_LIMIT = 2**31 - 2**27


def export_onnx(model: nn.Module, out: str | Path, img_size: int) -> Path:
    """ONNX (dynamo exporter) with a dynamic batch dimension: images -> logits (or
    features for a FeatureExtractor). One self-contained file when the weights fit
    protobuf's 2 GiB; larger models keep them in ``<out>.data`` beside it, which a warning
    names (the .onnx alone is then not the model; ``onnx_files`` lists both)."""
    try:
        import onnxscript  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise UserError(
            "ONNX export needs onnx and onnxscript: pip install 'mimkit[export]'"
        ) from None
    model = model.eval()
    example = torch.randn(2, 3, img_size, img_size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch")
    external = _needs_external_data(model)
    torch.onnx.export(
        model,
        (example,),
        str(out),
        dynamo=True,
        input_names=["images"],
        output_names=["features" if isinstance(model, FeatureExtractor) else "logits"],
        dynamic_shapes=({0: batch},),
        external_data=external,  # torch's default (True) splits even a tiny model in two
        verbose=False,
    )
    files = onnx_files(model, out)
    if len(files) > 1:
        log.warning(
            "%s keeps its weights in %s (over ONNX's 2 GiB single-file limit): copy both "
            "files together, the .onnx alone does not load",
            *files,
        )
    return out


def onnx_files(model: nn.Module, out: Path) -> list[Path]:
    """The files ``export_onnx(model, out)`` writes: the .onnx, and its external weights
    (``<out>.data``) when the model is too large for one file."""
    data = out.with_name(out.name + ".data")
    return [out, data] if _needs_external_data(model) and data.is_file() else [out]


def _needs_external_data(model: nn.Module) -> bool:
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) >= ONNX_SINGLE_FILE_LIMIT


def export_inference(model: nn.Module, out: str | Path, fmt: str) -> dict:
    """A classifier (images -> logits) or an encoder (images -> pooled features) as a
    TorchScript or ONNX file, eval-mode BatchNorm folded first (exact; ``folded`` and
    ``kept`` name the layers). Returns the file (``path``; ``files``: every file written,
    with an ONNX model's external weights) and what it takes and gives. Weights with
    NaN/inf are refused, naming the tensor."""
    from ..models import input_size
    from .fold import fold_batchnorm

    if fmt not in ("torchscript", "onnx"):
        raise UserError(f"export format must be torchscript or onnx here, got '{fmt}'")
    refuse_non_finite(model)
    size = input_size(model)
    classifier = bool(getattr(model, "num_classes", 0))
    folds = fold_batchnorm(model.eval())
    target = model if classifier else FeatureExtractor(model)
    path = output_path(out, fmt)
    if fmt == "torchscript":
        files = [export_torchscript(target, path, size)]
    else:
        files = onnx_files(target, export_onnx(target, path, size))
    output = "logits" if classifier else f"features (N, {model.num_features})"
    return {"path": path, "files": files, "img_size": size, "output": output, **folds}


def export_hf_checkpoint(
    source, out_dir: str | Path, trust: bool = False, force: bool = False
) -> Path:
    """``mimkit export --format hf``: build the model a checkpoint describes (the full MAE
    when it has a decoder, else the encoder or classifier) and :func:`export_hf` it, with
    the checkpoint's class names (``force``: see :func:`export_hf`)."""
    from .checkpoint import model_from_checkpoint, read_checkpoint
    from .hf import export_hf

    ckpt = source if isinstance(source, Checkpoint) else read_checkpoint(source, trust)
    method = method_for(ckpt.state_dict)
    kind = "pretrain" if method is not None and method.hf_pretraining else "encoder"
    model, _ = model_from_checkpoint(ckpt, kind=kind)
    classes = ckpt.meta.get("classes")
    if classes is not None and len(classes) != getattr(model, "num_classes", 0):
        classes = None  # e.g. a probe's classes with the encoder alone
    return export_hf(model, out_dir, class_names=classes, force=force)
