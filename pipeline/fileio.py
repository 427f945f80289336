"""Output paths and atomic writes.

Every output is written to a temporary file in the destination directory and renamed into
place, so an interrupted or failed run never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import PipelineError

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(name: str) -> str:
    """A directory name that cannot escape `build/` or surprise a shell."""
    cleaned = _UNSAFE.sub("_", name).strip("._-")
    return cleaned or "model"


def check_writable(path: Path, *, option: str = "--out") -> Path:
    """Prove `path` can be written before any expensive work starts, leaving nothing behind:
    directories made for the probe are removed again, so a run that fails later leaves no trace."""
    created = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        created.append(probe)
        probe = probe.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as exc:
        raise PipelineError(f"cannot write the output directory: {exc.strerror or exc}",
                            path=path, field=option,
                            fix=f"choose a writable directory with {option}") from None
    finally:
        for made in created:  # deepest first
            try:
                made.rmdir()
            except OSError:
                break
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def public_mode(path: Path) -> Path:
    """mkstemp/mkdtemp create private (0600/0700) entries; outputs get the usual umask modes."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())
    return path


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        public_mode(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def replace_dir(staging: Path, final: Path) -> None:
    """Swap a fully written staging directory in for `final`: the old one is moved aside and
    removed only after the new one is in place, so readers never see a half-written tree."""
    old = final.with_name(f".{final.name}.old")
    public_mode(staging)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)
