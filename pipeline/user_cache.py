"""The per-user cache shared by every output folder: what is slow to make and the same for any
project (the TFLM library for one toolchain and flags, the trained demo model). Each entry is
named by what it depends on, written atomically and made under a lock, so concurrent runs (two
terminals, a CI job with parallel tests) make it once and never see a half-written entry."""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from . import TOOL_NAME


def cache_root() -> Path | None:
    """$EDGE_DEPLOY_CACHE (`off`: no cache), else $XDG_CACHE_HOME/edge-deploy, else ~/.cache/edge-deploy."""
    value = os.environ.get("EDGE_DEPLOY_CACHE")
    if value == "off":
        return None
    if value:
        return Path(value).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / TOOL_NAME


@contextmanager
def locked(path: Path):
    """An exclusive advisory lock held for the block (released if the holder dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
