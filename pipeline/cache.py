"""What decides a stage's result, as a hash, and the record a finished stage leaves.

A stage's key hashes the content of its input files, the options that matter and the versions
of the tools and fact tables involved. The record `.stages/<stage>.json` is written after the
stage's outputs (each atomically), so a run interrupted mid-stage leaves the old record, which
no longer matches, and the next run redoes the stage.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from . import __version__
from .fileio import write_json_atomic

STAGE_DIR = ".stages"


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _NotCacheable:
    """What a `module:function` data spec hashes to: the function's output is whatever it
    computes this time (it may read files or other modules), so a stage that depends on it is
    never skipped."""

    def __repr__(self) -> str:
        return "NOT_CACHEABLE"


NOT_CACHEABLE = _NotCacheable()


def content_hash(spec: str | Path | None):
    """A file's or a directory tree's content; NOT_CACHEABLE for `module:function`."""
    if spec is None:
        return None
    path = Path(spec)
    if path.is_file():
        return file_digest(path)
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(path)).encode() + b"\0" + file_digest(f).encode())
        return h.hexdigest()
    if ":" in str(spec):
        return NOT_CACHEABLE
    return f"missing:{spec}"


def _contains(value, marker) -> bool:
    if value is marker:
        return True
    if isinstance(value, dict):
        return any(_contains(v, marker) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_contains(v, marker) for v in value)
    return False


def stage_key(stage: str, inputs: dict[str, Any]) -> str | None:
    """The key of a stage's inputs, or None when one of them cannot be hashed (not cached)."""
    if _contains(inputs, NOT_CACHEABLE):
        return None
    blob = json.dumps({"stage": stage, "pipeline": __version__, **inputs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


MAX_RECORD_BYTES = 64 << 20


def _record_path(out_dir: Path, stage: str) -> Path:
    return out_dir / STAGE_DIR / f"{stage}.json"


def _outputs_digest(out_dir: Path, outputs) -> dict[str, str | None]:
    return {rel: content_hash(out_dir / rel) for rel in outputs}


def _result_digest(result: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(result, sort_keys=True).encode()).hexdigest()


def up_to_date(out_dir: Path, stage: str, key: str, outputs) -> dict[str, Any] | None:
    """The record of a stage whose key matches, whose declared `outputs` are as it left them,
    and whose result is the one it wrote (a record edited or damaged by hand is stale)."""
    from .fileio import read_small_text

    text = read_small_text(_record_path(out_dir, stage), MAX_RECORD_BYTES)
    if text is None:
        return None
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or record.get("key") != key:
        return None
    result = record.get("result")
    if not isinstance(result, dict) or record.get("result_sha256") != _result_digest(result):
        return None
    if record.get("outputs") != _outputs_digest(out_dir, outputs):
        return None  # an output was changed or removed by hand
    return record


def write_record(out_dir: Path, stage: str, key: str, outputs, result: dict[str, Any]) -> None:
    write_json_atomic(_record_path(out_dir, stage), {"key": key, "outputs": _outputs_digest(out_dir, outputs),
                                                     "result": result, "result_sha256": _result_digest(result)})
