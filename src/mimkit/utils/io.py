"""Files that are never half-written and never run code.

Writes go to a temp file in the same folder, are fsynced, then renamed over the target,
so a crash or a full disk never replaces a good file with a broken one; the temp file is
removed on failure. Reads of ``.pth``/``.pt`` files use ``torch.load(weights_only=True)``
with a short allow-list of the plain types real checkpoints hold; anything else is refused
with one line unless the caller says it trusts the file.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import pickle
import re
import tempfile
from collections import OrderedDict
from pathlib import Path

import torch

from ..errors import UserError

TEMP_SUFFIX = ".tmp"


class WriteError(OSError):
    """A file could not be written (disk full, quota, permissions); one line with the cause."""


class _Recorder:
    """File wrapper that remembers the first OSError of a write: torch.save reports it
    only as 'unexpected pos' from its C++ writer, which hides the real cause."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.f.flush()


def _describe(e: BaseException, recorded: OSError | None) -> str:
    err = recorded if recorded is not None else e
    if isinstance(err, OSError) and err.errno:
        return os.strerror(err.errno)
    found = re.search(r"\[Errno (\d+)\]", str(e)) or re.search(r"errno (\d+)", str(e))
    if found:
        return os.strerror(int(found.group(1)))
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


def atomic_write(path: str | Path, write) -> Path:
    """Call ``write(file)`` on a temp file beside ``path``, fsync, rename over ``path``.

    Raises WriteError naming the path and the OS's reason (e.g. 'No space left on
    device'); the previous file at ``path`` is untouched and the temp file removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    recorder = None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a plain open() honours umask
        with os.fdopen(fd, "wb") as f:
            recorder = _Recorder(f)
            write(recorder)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        Path(tmp).unlink(missing_ok=True)
        cause = _describe(e, recorder.error if recorder else None)
        raise WriteError(
            getattr(e, "errno", None) or errno.EIO,
            f"cannot write {path}: {cause}; the previous file (if any) is unchanged",
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it back at once
    os.umask(mask)
    return mask


def atomic_save(obj, path: str | Path) -> Path:
    """``torch.save`` through ``atomic_write``."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def strict_json(obj) -> str:
    """``obj`` as strict JSON text (indented, newline-terminated): Python writes NaN and
    inf as bare ``NaN`` / ``Infinity``, which JSON forbids and ``jq``, JavaScript and
    most readers reject, so each non-finite number becomes ``null`` and a top-level
    ``notes`` entry says which value it was (key path -> 'was NaN'). Torch and NumPy
    scalars are written as numbers."""
    notes: dict[str, str] = {}
    clean = _finite(obj, "", notes)
    if notes and isinstance(clean, dict):
        clean["notes"] = {**clean.get("notes", {}), **notes}
    return json.dumps(clean, indent=2, allow_nan=False) + "\n"


def write_json(path: str | Path, obj) -> Path:
    """``strict_json(obj)`` written atomically: the one writer of ``metrics.json``."""
    return atomic_write_text(path, strict_json(obj))


def _finite(value, where: str, notes: dict):
    if isinstance(value, dict):
        return {k: _finite(v, f"{where}.{k}" if where else str(k), notes) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v, f"{where}.{i}", notes) for i, v in enumerate(value)]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # torch / NumPy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        notes[where] = f"was {json.dumps(value)}: not a number JSON can hold"
        return None
    return value


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Remove temp files left by a write that was killed (``.NAME.XXXX.tmp``)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.glob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


# ---------------------------------------------------------------------------- loading


def _numpy_scalar():
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import scalar
    return scalar


def _safe_globals() -> list:
    import numpy as np

    scalar = _numpy_scalar()
    return [
        argparse.Namespace,  # official MAE / iBOT training arguments ('args')
        scalar,  # NumPy scalars (an official optimizer's lr / weight decay) ...
        (scalar, "numpy.core.multiarray.scalar"),  # ... as NumPy < 2 pickled them
        np.dtype,  # ... their dtype
        np.dtypes.Float64DType,
        # yacs' CfgNode (official SimMIM files' 'config', a dict subclass) read as a plain
        # mapping: its keys and values are loaded as data, no yacs code runs (or is needed)
        (OrderedDict, "yacs.config.CfgNode"),
    ]


# The only non-tensor types a checkpoint may hold (found with
# torch.serialization.get_unsafe_globals_in_checkpoint on the official MAE and iBOT
# files); mimkit's own checkpoints hold only dicts, lists, numbers and strings.
SAFE_GLOBALS = _safe_globals()


_UNSAFE = re.compile(r"GLOBAL ([\w.]+)")


def safe_torch_load(path: str | Path, trust: bool = False, what: str = "checkpoint"):
    """Load a torch file without running code from it.

    ``trust=True`` (``--trust-checkpoint``) allows any pickled object: only for files
    you made or vouch for. Errors are one-line ``UserError``s naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is not a {what} (empty file)")
    kind = _what_file(path)
    if kind:
        prefix = "it is " if kind.startswith("a ") else ""
        raise UserError(f"{path} is not a {what} ({prefix}{kind})")
    if trust:
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # any unpickling failure of an arbitrary file
            raise UserError(f"{path} is not a {what} ({_first_line(e)})") from None
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = _UNSAFE.search(str(e))
        if found:
            raise UserError(
                f"{path} holds a Python object of type {found.group(1)}, which is not loaded "
                "because unpickling it could run code; if you trust this file, pass "
                "--trust-checkpoint (trust=True in Python)"
            ) from None
        raise UserError(f"{path} is not a {what} ({_first_line(e)})") from None
    except Exception as e:  # the unpickler fails on garbage in many ways (IndexError too)
        raise UserError(f"{path} is not a {what} ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    """The cause in a few words: torch's messages start with advice (retry with
    ``weights_only=False``) that would be wrong here, the cause comes later."""
    text = str(e)
    if "WeightsUnpickler error:" in text:  # not a pickle torch understands
        after = text.split("WeightsUnpickler error:", 1)[1]
        cause = next((line.strip() for line in after.splitlines() if line.strip()), "")
        cause = f"unreadable pickle: {cause}" if cause else "unreadable pickle"
        # e.g. a legacy file of pickle protocol 4/5, which the safe reader does not take
        return f"{cause}; if you made or trust it, --trust-checkpoint (trust=True) reads it"
    if "central directory" in text:
        return "truncated or damaged: its zip archive has no central directory"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) < 160 else text[:157] + "..."


# First bytes of files users pass by mistake where a checkpoint belongs.
_MAGIC = {b"\xff\xd8\xff": "a JPEG image", b"\x89PNG": "a PNG image", b"GIF8": "a GIF image"}


def _what_file(path: Path) -> str | None:
    with open(path, "rb") as f:
        head = f.read(9)
    kind = next((kind for magic, kind in _MAGIC.items() if head.startswith(magic)), None)
    if kind is None and head[8:9] == b"{":  # u64 header length, then its JSON
        kind = "a safetensors file: name it *.safetensors"
    # torch writes a zip archive, or (legacy) a pickle: binary protocols start with \x80,
    # protocols 0 and 1 with an ASCII opcode (e.g. 'L' of the magic number)
    if kind is None and not head.startswith((b"PK", b"\x80", *_ASCII_PICKLE_STARTS)):
        kind = "not a torch file: neither a zip archive nor a pickle"
    return kind


_ASCII_PICKLE_STARTS = tuple(bytes([c]) for c in b"LIJKM(}]c")
