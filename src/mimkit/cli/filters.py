"""``mimkit visualize-filters``: a ConvMixer's patch-embedding filters and depthwise kernels."""

from __future__ import annotations

from ..engine.logging import setup_console
from ..errors import UserError
from ..interop.checkpoint import model_from_checkpoint
from ..viz.filters import save_filter_grids
from .common import add_trust_flag


def add_parser(sub) -> None:
    p = sub.add_parser(
        "visualize-filters",
        help="draw a ConvMixer's patch-embedding filters and depthwise kernels",
        description="Image grids of the patch-embedding filters (RGB) and of the depthwise "
        "kernels of one layer (grey), as the ConvMixer paper shows them.",
    )
    p.add_argument("--checkpoint", required=True, help="ConvMixer checkpoint (mimkit)")
    p.add_argument("--out", default="filters.png", help="PNG to write")
    add_trust_flag(p)
    p.add_argument("--layer", type=int, default=0, help="block whose depthwise kernels to draw")
    p.add_argument("--max-filters", type=int, default=256, help="at most this many per grid")
    p.set_defaults(func=cmd_filters)


def cmd_filters(args) -> int:
    setup_console()
    model, _ = model_from_checkpoint(args.checkpoint, kind="encoder", trust=args.trust_checkpoint)
    if not hasattr(model, "depthwise_kernels"):
        raise UserError(
            f"{args.checkpoint} is not a ConvMixer: visualize-filters draws convolution filters"
        )
    patch = model.patch_filters()[: args.max_filters]
    depthwise = model.depthwise_kernels(args.layer)[: args.max_filters]
    save_filter_grids(patch, depthwise, args.layer, args.out)
    print(f"wrote {args.out} ({len(patch)} patch filters, {len(depthwise)} depthwise kernels)")
    return 0
