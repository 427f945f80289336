"""What decides a stage's result, as a hash, and the record a finished stage leaves.

A stage's key hashes the content of its input files, the options that matter and the versions
of the tools and fact tables involved. The record `.stages/<stage>.json` is written after the
stage's outputs (each atomically), so a run interrupted mid-stage leaves the old record, which
no longer matches, and the next run redoes the stage.
"""

from __future__ import annotations

import hashlib
import importlib.util
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


def content_hash(spec: str | Path | None) -> str | None:
    """A file's or a directory tree's content; for `module:function`, the module's source."""
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
        module = str(spec).partition(":")[0]
        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            found = None
        if found and found.origin and Path(found.origin).is_file():
            return f"{spec}:{file_digest(Path(found.origin))}"
    return f"unhashable:{spec}"


def stage_key(stage: str, inputs: dict[str, Any]) -> str:
    blob = json.dumps({"stage": stage, "pipeline": __version__, **inputs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _record_path(out_dir: Path, stage: str) -> Path:
    return out_dir / STAGE_DIR / f"{stage}.json"


def _outputs_digest(out_dir: Path, outputs) -> dict[str, str | None]:
    return {rel: content_hash(out_dir / rel) for rel in outputs}


def up_to_date(out_dir: Path, stage: str, key: str) -> dict[str, Any] | None:
    """The record of a stage whose key matches and whose outputs are as it left them."""
    try:
        record = json.loads(_record_path(out_dir, stage).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("key") != key:
        return None
    outputs = record.get("outputs")
    if not isinstance(outputs, dict) or _outputs_digest(out_dir, list(outputs)) != outputs:
        return None  # an output was changed or removed by hand
    return record if isinstance(record.get("result"), dict) else None


def write_record(out_dir: Path, stage: str, key: str, outputs, result: dict[str, Any]) -> None:
    write_json_atomic(_record_path(out_dir, stage), {"key": key, "outputs": _outputs_digest(out_dir, outputs),
                                                     "result": result})
