"""`report.json` (the machine-readable contract for rigs and CI) and `report.md` (for people).

Each stage owns one top-level section; a stage replaces its own section and keeps the others,
so the report always describes the newest run of every stage.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from . import TOOL_NAME, __version__
from .fileio import write_json_atomic, write_text_atomic
from .templating import render

log = logging.getLogger(__name__)

REPORT_JSON = "report.json"
REPORT_MD = "report.md"


def read_report(out_dir: Path) -> dict[str, Any]:
    path = out_dir / REPORT_JSON
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s (%s): it will be rewritten", path, exc)
        return {}
    return report if isinstance(report, dict) else {}


def update_report(out_dir: Path, name: str, section: str, content: dict[str, Any]) -> dict[str, Any]:
    report = read_report(out_dir)
    report.update({"model": name, "generated_by": f"{TOOL_NAME} {__version__}", section: content})
    write_json_atomic(out_dir / REPORT_JSON, report)
    write_text_atomic(out_dir / REPORT_MD, render("report.md.j2", report=report))
    return report
