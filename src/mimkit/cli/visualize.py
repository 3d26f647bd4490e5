"""``mimkit visualize``: the picture of a pretraining checkpoint, drawn by its method
(reconstruction grids, windows, prototypes)."""

from __future__ import annotations

from ..data.sources import collect_images
from ..engine.logging import setup_console
from ..interop.checkpoint import model_from_checkpoint
from ..methods import draw_picture
from ..utils import distributed as dist
from .common import add_trust_flag


def add_parser(sub) -> None:
    p = sub.add_parser(
        "visualize",
        help="draw original | masked | reconstruction | reconstruction + visible",
        description="Reconstruction grid from an MAE checkpoint (mimkit or official *visualize* "
        "file), one row per image, as the official MAE demo. For a LoMaR checkpoint the "
        "sampled windows are outlined, with their masks and predictions. For an iBOT "
        "checkpoint: block masks and each patch coloured by the teacher's argmax prototype, "
        "and the student's at the masked patches. For SimMIM: its masks, the predicted "
        "pixels and the prediction pasted into the masked cells.",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a pretraining checkpoint: MAE with its decoder, LoMaR, iBOT, SimMIM",
    )
    p.add_argument("--images", nargs="+", required=True, help="image files and/or folders")
    add_trust_flag(p)
    p.add_argument("--out", default="reconstructions.png", help="PNG to write")
    p.add_argument(
        "--mask-ratio", type=float, default=None, help="default: the model's (MAE 0.75; iBOT 0.4)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the masking noise")
    p.add_argument(
        "--stats",
        choices=("visible", "true"),
        default="visible",
        help="norm-pix MAE: un-normalise masked patches with the visible patches' mean and "
        "variance (visible, honest) or their own (true: the official demo, which leaks them)",
    )
    p.add_argument("--num-images", type=int, default=8, help="at most this many rows")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_visualize)


def cmd_visualize(args) -> int:
    setup_console()
    device = dist.resolve_device(args.device)
    model, _ = model_from_checkpoint(args.checkpoint, kind="pretrain", trust=args.trust_checkpoint)
    model.to(device)
    paths = collect_images(args.images, args.num_images)
    options = {"stats": args.stats} if args.stats != "visible" else {}
    what = draw_picture(model, paths, args.out, args.mask_ratio, args.seed, device, **options)
    print(f"wrote {args.out} ({len(paths)} images, {what})")
    return 0
