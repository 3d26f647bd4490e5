"""``mimkit <command>``: the edge where configuration is read.

The configured jobs' commands come from the job registry (``recipes.registry``): each
registered recipe is a command (``mimkit pretrain``) or an action of its group (``mimkit
detect train``), with the shared flags and its own. The modules here add the commands
that are not configured jobs (pictures, export, prediction, shards, listings) and the
tools of a group (``mimkit detect eval``). Below this package every function takes
explicit, typed arguments.
"""

from __future__ import annotations

import argparse
import errno
import sys

from ..errors import NonFiniteLossError, TrainingInterrupted, UserError, one_line
from ..recipes import recipes
from ..recipes.run import is_out_of_memory, memory_reason
from ..utils import distributed
from ..utils.io import WriteError
from ..version import __version__
from . import detect, export, filters, info, inspect, predict, report, segment, shards, visualize
from .jobs import add_job_parser

TOOLS = (visualize, inspect, report, filters, predict, export, shards, info)
GROUP_TOOLS = {"detect": detect, "segment": segment}  # a group's actions besides its jobs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mimkit",
        description="Masked image modeling: pretrain (MAE, LoMaR, iBOT, SimMIM), look at what "
        "the backbone learned, evaluate, transfer.",
    )
    parser.add_argument("--version", action="version", version=f"mimkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for recipe in recipes():
        words = recipe.words
        if len(words) == 1:
            add_job_parser(sub, recipe, words[0])
            continue
        if words[0] not in groups:
            g = sub.add_parser(words[0], help=recipe.description or recipe.help)
            groups[words[0]] = g.add_subparsers(dest="action", metavar="<action>", required=True)
        add_job_parser(groups[words[0]], recipe, words[1])
    for name, module in GROUP_TOOLS.items():
        module.add_actions(groups[name])
    for module in TOOLS:
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
    except TrainingInterrupted as e:  # SIGINT / SIGTERM: saved where it stood
        _say("stopped", str(e))
        code = 128 + (e.signal or 2)
    except RuntimeError as e:  # keep last of the RuntimeErrors: it re-raises all others
        if not is_out_of_memory(e):  # a job's run says its batch size (recipes.run.execute)
            raise
        batch = getattr(args, "batch_size", None)
        fix = f"lower --batch-size (now {batch})" if batch else "give it fewer images at once"
        _say("error", f"out of memory ({memory_reason(e)}): {fix}")
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
