"""``mimkit <command>``: the edge where configuration is read.

Below this package every function takes explicit, typed arguments.
"""

from __future__ import annotations

import argparse
import errno
import sys

from ..errors import NonFiniteLossError, UserError, one_line
from ..utils import distributed
from ..utils.io import WriteError
from . import (
    benchmark,
    detect,
    evaluate,
    export,
    filters,
    info,
    predict,
    pretrain,
    shards,
    visualize,
)

COMMANDS = (
    pretrain,
    visualize,
    filters,
    evaluate,
    detect,
    predict,
    export,
    benchmark,
    shards,
    info,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mimkit",
        description="Masked image modeling: pretrain (MAE), look at reconstructions, "
        "evaluate, transfer.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"mimkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after flags; argparse only takes one positional run
    stray = [a for a in extra if "=" not in a or a.startswith("-")]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # for --slurm resubmission
    code = 1
    try:
        code = args.func(args) or 0
    except UserError as e:
        _say("error", one_line(e))
        code = 2
    except WriteError as e:
        _say("error", e.strerror or str(e))  # its message, without the "[Errno N]" prefix
    except OSError as e:  # a full disk, a quota, a read-only folder: say which file and why
        if e.errno not in _DISK_ERRNOS:
            raise
        _say("error", f"{e.filename or 'a file'}: {e.strerror}")
    except NonFiniteLossError as e:
        _say("stopped", str(e))
    except KeyboardInterrupt:
        _say("interrupted", "continue a training run with --resume RUN_FOLDER")
        code = 130
    finally:
        # After a failure, enter no collective: the other ranks may wait in another one.
        # Leaving the group and exiting non-zero lets torchrun stop them.
        distributed.shutdown(failed=code != 0)
    return code


_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def _say(kind: str, message: str) -> None:
    where = f" (rank {distributed.rank()})" if distributed.world_size() > 1 else ""
    print(f"mimkit: {kind}{where}: {message}", file=sys.stderr, flush=True)
