"""Where mimkit keeps caches (feature caches, tensor caches): ``$MIMKIT_CACHE`` or
``~/.cache/mimkit``; and what a cache entry is keyed by.

Caches are keyed by what the files hold, not only by their names: an image edited or a
checkpoint overwritten in place under the same path must not get the old answer back.
Every file counts by size and ``mtime_ns`` (a ``stat``, cheap for a million images);
weight files, few and read whole anyway, add a hash of their first and last MiB, so a
rewrite within one clock tick (the same size and mtime) is still seen.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

_CHUNK = 4096  # paths per stat task: threads hide network file-system latency
_SAMPLE = 1 << 20  # bytes hashed at each end of a weight file


def cache_root() -> Path:
    return Path(os.environ.get("MIMKIT_CACHE", Path.home() / ".cache" / "mimkit"))


def files_fingerprint(paths: Sequence[str]) -> str:
    """One hash of every path with its size and mtime_ns (missing files count as such),
    in order. Stats run in a few threads: on NFS or Lustre each one is a round trip."""
    chunks = [paths[i : i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    h = hashlib.sha256()
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(chunks)))) as pool:
        for digest in pool.map(_stat_digest, chunks):
            h.update(digest)
    return h.hexdigest()


def _stat_digest(paths: Sequence[str]) -> bytes:
    h = hashlib.sha256()
    for p in paths:
        try:
            st = os.stat(p)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"{p}\0{stamp}\0".encode())
    return h.digest()


def weights_identity(path: str | Path) -> dict:
    """A weight file's, or a weight folder's (Hugging Face: config and every weight
    file), identity: {name: [size, mtime_ns, hash of first and last MiB]}."""
    p = Path(path).resolve()
    files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p]
    return {f.name: _file_identity(f) for f in files if not f.name.startswith(".")}


def _file_identity(path: Path) -> list:
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(_SAMPLE))
        if st.st_size > 2 * _SAMPLE:
            f.seek(-_SAMPLE, os.SEEK_END)
        h.update(f.read(_SAMPLE))
    return [st.st_size, st.st_mtime_ns, h.hexdigest()[:16]]
