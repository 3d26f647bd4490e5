"""One run per run folder: a lock held for the life of the run.

The lock is ``fcntl.flock`` on ``<folder>/.run.lock``, which holds the pid, host and start
time of the run that took it (for the message another run gets). The OS releases a
flock when its process ends, so a crashed or killed run never leaves a folder locked: a
lock file that remains is taken over by the next run. A clean release deletes the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from pathlib import Path

from ..errors import UserError

try:
    import fcntl
except ImportError:  # not on Windows: no lock there
    fcntl = None

log = logging.getLogger("mimkit")

LOCK_NAME = ".run.lock"


class RunLock:
    """A held lock on a run folder; ``release()`` (idempotent) frees and deletes it."""

    def __init__(self, path: Path, fd: int | None):
        self.path, self.fd = path, fd

    def release(self) -> None:
        if self.fd is None:
            return
        # unlink while still holding it: a run that opened the old file re-checks below
        self.path.unlink(missing_ok=True)
        fcntl.flock(self.fd, fcntl.LOCK_UN)  # also frees copies held by forked workers
        os.close(self.fd)
        self.fd = None

    def __del__(self):
        with contextlib.suppress(Exception):  # at interpreter exit the OS frees it anyway
            self.release()


def lock_run_dir(folder: str | Path) -> RunLock:
    """Take ``folder``'s lock (the folder must exist), or raise a one-line UserError naming
    the process that holds it. On a filesystem without locks: a warning, no lock."""
    path = Path(folder) / LOCK_NAME
    if fcntl is None:
        return RunLock(path, None)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise UserError(
                f"run folder {folder} is in use by another run ({holder}): wait for it to "
                "end, or choose another --out (out= in Python)"
            ) from None
        except OSError as e:  # no flock on this filesystem (some network mounts)
            os.close(fd)
            log.warning("cannot lock %s (%s): a second run into it would not be stopped", path, e)
            return RunLock(path, None)
        if _same_file(fd, path):
            break
        os.close(fd)  # the file was deleted by a run that just released it: take the new one
    os.ftruncate(fd, 0)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n".encode())
    return RunLock(path, fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text.splitlines()[0] if text else "a process that is just starting"
