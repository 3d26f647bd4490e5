"""``mimkit report``: runs side by side on one self-contained HTML page."""

from __future__ import annotations

from ..engine.logging import setup_console
from ..report.runs import report


def add_parser(sub) -> None:
    p = sub.add_parser(
        "report",
        help="compare runs on one HTML page (evaluations, curves, pictures, configs)",
        description="One self-contained HTML page over run folders: every evaluation in one "
        "table (kNN, linear probe, ... found in sub-folders of a run or in evaluation run "
        "folders given here), training curves on shared axes (online kNN with its raw-pixel "
        "and random-init baselines), the attention and feature maps of every run's encoder "
        "and its reconstructions on the same images, and the configs' differences.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (pretraining, evaluation)")
    p.add_argument("--out", default="report.html", help="the HTML file (default report.html)")
    p.add_argument("--title", help="page title (default: the runs' names)")
    p.add_argument(
        "--images",
        nargs="+",
        help="image files and/or folders to draw every run's pictures on (default: a few "
        "of the first run's training images)",
    )
    p.add_argument("--num-images", type=int, default=4, help="images (rows) at most")
    p.add_argument("--block", type=int, default=-1, help="attention block (-1: the last)")
    p.add_argument("--clusters", type=int, default=5, help="k of the k-means clustering")
    p.add_argument(
        "--no-pictures",
        action="store_true",
        help="draw nothing from the checkpoints (the folders' own pictures still show)",
    )
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    setup_console()
    path = report(
        args.runs,
        args.out,
        images=args.images,
        title=args.title,
        pictures=not args.no_pictures,
        num_images=args.num_images,
        block=args.block,
        clusters=args.clusters,
        device=args.device,
    )
    print(f"wrote {path} ({len(args.runs)} runs): open it in a browser")
    return 0
