"""``mimkit visualize``: reconstruction grids from a pretrained MAE or LoMaR; for iBOT,
the masks and each image's patches coloured by the teacher's prototypes."""

from __future__ import annotations

from ..data.sources import collect_images
from ..engine import distributed as dist
from ..engine.logging import setup_console
from ..interop.checkpoint import model_from_checkpoint
from ..viz.recon import reconstruction_grid
from .common import add_trust_flag


def add_parser(sub) -> None:
    p = sub.add_parser(
        "visualize",
        help="draw original | masked | reconstruction | reconstruction + visible",
        description="Reconstruction grid from an MAE checkpoint (mimkit or official *visualize* "
        "file), one row per image, as the official MAE demo. For a LoMaR checkpoint the "
        "sampled windows are outlined, with their masks and predictions. For an iBOT "
        "checkpoint: block masks and each patch coloured by the teacher's argmax prototype, "
        "and the student's at the masked patches.",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="MAE checkpoint with its decoder, or a LoMaR or iBOT checkpoint",
    )
    p.add_argument("--images", nargs="+", required=True, help="image files and/or folders")
    add_trust_flag(p)
    p.add_argument("--out", default="reconstructions.png", help="PNG to write")
    p.add_argument(
        "--mask-ratio", type=float, default=None, help="default: the model's (MAE 0.75; iBOT 0.4)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the masking noise")
    p.add_argument("--num-images", type=int, default=8, help="at most this many rows")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_visualize)


def cmd_visualize(args) -> int:
    setup_console()
    device = dist.resolve_device(args.device)
    model, _ = model_from_checkpoint(args.checkpoint, kind="pretrain", trust=args.trust_checkpoint)
    model.to(device)
    paths = collect_images(args.images, args.num_images)
    value = reconstruction_grid(model, paths, args.out, args.mask_ratio, args.seed, device)
    what = "student = teacher prototype at" if hasattr(model, "teacher") else "masked-patch loss"
    print(f"wrote {args.out} ({len(paths)} images, {what} {value:.4f})")
    return 0
