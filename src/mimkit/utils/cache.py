"""Where mimkit keeps caches (feature caches, tensor caches): ``$MIMKIT_CACHE`` or
``~/.cache/mimkit``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("MIMKIT_CACHE", Path.home() / ".cache" / "mimkit"))
