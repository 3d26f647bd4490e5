"""``mimkit inspect``: what a backbone learned, on a few images (attention of every head,
PCA feature colours, k-means clusters, nearest training images)."""

from __future__ import annotations

from ..engine.logging import setup_console
from ..recipes.inspect import inspect
from .common import add_trust_flag


def add_parser(sub) -> None:
    p = sub.add_parser(
        "inspect",
        help="draw attention maps, PCA feature maps, clusters and nearest neighbours",
        description="Pictures of what a backbone learned: the [CLS] attention of one block "
        "(every head and their mean), the patch features' first three principal components "
        "as RGB with k-means clusters, and (with --data) each image's nearest training "
        "images. Any backbone: a mimkit MAE/LoMaR/iBOT/SimMIM checkpoint (its encoder), an "
        "official MAE/iBOT/SimMIM file, a Hugging Face folder, or --model timm:NAME.",
    )
    p.add_argument(
        "--checkpoint",
        help="mimkit or official checkpoint, Hugging Face folder, or timm weights file "
        "(with --model timm:NAME); 'none' = random init",
    )
    p.add_argument("--model", help="timm:NAME (e.g. timm:vit_small_patch16_224), or a mimkit "
                   "model name with --checkpoint none")  # fmt: skip
    p.add_argument(
        "--network",
        choices=("teacher", "student"),
        default="teacher",
        help="which network of a student/teacher checkpoint (iBOT)",
    )
    p.add_argument("--images", nargs="+", help="image files and/or folders")
    p.add_argument(
        "--data",
        help="ROOT with train/ and val/ class folders, or a folder: where the nearest "
        "neighbours are searched (and default images: a few val images)",
    )
    p.add_argument("--out", default="inspect", help="folder for attention.png, features.png, "
                   "neighbors.png (default: ./inspect)")  # fmt: skip
    p.add_argument("--block", type=int, default=-1, help="attention block (-1: the last)")
    p.add_argument("--clusters", type=int, default=5, help="k of the k-means clustering")
    p.add_argument("--neighbors", type=int, default=5, help="neighbours shown per image")
    p.add_argument("--num-images", type=int, default=4, help="images (rows) at most")
    p.add_argument("--pool", choices=("cls", "avg"), default="cls", help="neighbour features")
    p.add_argument("--img-size", type=int, help="input size (default: the model's)")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="PCA background cut on the first component in [0, 1] (negative: keep all)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the k-means start")
    p.add_argument("--device", default="auto")
    add_trust_flag(p)
    p.set_defaults(func=cmd_inspect)


def cmd_inspect(args) -> int:
    setup_console()
    pictures = inspect(
        args.checkpoint,
        args.images,
        args.out,
        model=args.model,
        network=args.network,
        block=args.block,
        clusters=args.clusters,
        data=args.data,
        neighbors=args.neighbors,
        num_images=args.num_images,
        pool=args.pool,
        img_size=args.img_size,
        threshold=None if args.threshold < 0 else args.threshold,
        seed=args.seed,
        device=args.device,
        trust=args.trust_checkpoint,
    )
    for kind, picture in pictures.items():
        print(f"wrote {args.out}/{kind}.png ({picture.width}x{picture.height})")
    return 0
