"""``mimkit shards``: pack an image folder into WebDataset tar shards (webdataset's
ShardWriter)."""

from __future__ import annotations

import logging

from ..data.shards import write_shards
from ..data.sources import open_source, scheme_for
from ..engine.logging import setup_console

log = logging.getLogger("mimkit")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "shards",
        help="write an image folder as tar shards (data.pipeline=shards)",
        description="Pack images (and class-folder labels) into WebDataset tar shards of N "
        "samples (<key>.jpg + <key>.cls) with a shards.json index. Train from them with "
        "--data OUT, or, once copied elsewhere, with a URL pattern "
        "(--data 'https://host/shard-{000000..000099}.tar' or 'pipe:aws s3 cp "
        "s3://bucket/shard-{000000..000099}.tar -') and data.num_samples=N. Use at least "
        "processes x workers shards.",
    )
    p.add_argument("--data", required=True, help="image folder (class subfolders give labels)")
    p.add_argument("--file-list", help="EasyCV-style list of paths (and labels) under --data")
    p.add_argument("--out", required=True, help="folder for the shards")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    p.add_argument("--image-key", help="hf: sources: the image column (default: found)")
    p.add_argument(
        "--label-key", help="hf: sources: the label column (default: the ClassLabel column)"
    )
    p.set_defaults(func=cmd_shards)


def cmd_shards(args) -> int:
    setup_console()
    source = open_source(args.data, args.file_list, args.image_key, args.label_key)
    if source.labels is None:
        scheme = scheme_for(args.data)
        table = scheme is not None and scheme.kind == "table"
        hint = " (name its label column with --label-key)" if table else ""
        log.info("%s: no labels found, the shards hold images only%s", args.data, hint)
    paths = write_shards(source, args.out, args.shard_size)
    last = paths[-1].name if paths else ""
    print(f"wrote {len(paths)} shards ({len(source)} images) to {args.out} (last: {last})")
    return 0
