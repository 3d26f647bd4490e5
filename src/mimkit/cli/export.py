"""``mimkit export``: weights that timm loads, or a TorchScript / ONNX model."""

from __future__ import annotations

import json
import logging

from ..engine.logging import setup_console
from ..interop import export
from ..interop.checkpoint import model_from_checkpoint
from ..models import create_model
from .common import add_trust_flag

log = logging.getLogger("mimkit")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export to timm (safetensors), Hugging Face transformers, TorchScript or ONNX",
        description="Export an encoder or fine-tuned classifier. --format timm writes timm's "
        "VisionTransformer layout and a JSON with the timm.create_model arguments; --format hf "
        "a transformers folder (ViTMAEForPreTraining for an MAE checkpoint, ViTMAEModel for an "
        "encoder, ViTForImageClassification / BeitForImageClassification for a classifier); "
        "torchscript and onnx export a classifier (images -> logits) or an encoder "
        "(images -> pooled features); input: normalised images.",
    )
    p.add_argument("--checkpoint", required=True, help="mimkit or official MAE checkpoint")
    p.add_argument("--model", help="timm:NAME: a timm model, its weights from --checkpoint")
    add_trust_flag(p)
    p.add_argument("--format", choices=("timm", "hf", "torchscript", "onnx"), default="timm")
    p.add_argument(
        "--out",
        required=True,
        help="output file (.safetensors, .pt or .onnx), or a folder (model.<ext> inside; "
        "for hf: the transformers folder)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="hf: write into a --out folder that holds other files (they are kept)",
    )
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    setup_console()
    if args.format == "hf":
        from ..interop.export import export_hf_checkpoint
        from ..interop.hf import hf_usage

        trust, force = args.trust_checkpoint, args.force
        out = export_hf_checkpoint(args.checkpoint, args.out, trust=trust, force=force)
        print(f"wrote {out}: {hf_usage(out)}")
        return 0
    if args.model:  # a timm model from its own weights file (timm's layout)
        model = create_model(args.model, checkpoint=args.checkpoint)
    else:
        trust = args.trust_checkpoint
        model, _ = model_from_checkpoint(args.checkpoint, kind="encoder", trust=trust)
    out = export.output_path(args.out, args.format)
    if args.format == "timm":
        recipe = export.export_timm(model, out)
        print(json.dumps(recipe, indent=2))
        return 0
    result = export.export_inference(model, args.out, args.format)
    if result["folded"] or result["kept"]:
        log.info(
            "BatchNorm folded into neighbouring layers: %d (%s); kept: %d (only a conv "
            "directly before a BN in one nn.Sequential, or a head after average pooling, "
            "is folded; the output is the same either way)",
            len(result["folded"]),
            ", ".join(result["folded"]) or "-",
            len(result["kept"]),
        )
    size = result["img_size"]
    print(
        f"wrote {result['path']} (input: float images (N, 3, {size}, {size}) normalised with "
        f"ImageNet mean/std; output: {result['output']})"
    )
    return 0
