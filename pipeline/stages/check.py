"""`invoke check`: both targets and an optional board, as one JSON-ready result and a table."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..boards import board_fit, get_board
from ..errors import PipelineError
from ..cache import content_hash
from ..tflite_model import read_model
from ..versions import package_version
from .base import Job, Stage, fact_tables
from ..rules.edgetpu import EdgeTPUReport, check_edgetpu
from ..rules.tflm import TFLMReport, check_tflm

log = logging.getLogger(__name__)

TARGETS = ("edgetpu", "tflm", "all")


@dataclass(frozen=True)
class CheckResult:
    model: Path
    target: str
    edgetpu: EdgeTPUReport | None
    tflm: TFLMReport | None
    board: dict[str, Any] | None

    @property
    def deployable(self) -> bool:
        ok = [r.compatible for r in (self.edgetpu, self.tflm) if r is not None]
        fits = self.board is None or (self.board["flash"]["fits"] and self.board["ram"]["fits"])
        return all(ok) and fits

    def to_json(self) -> dict[str, Any]:
        return {"model": str(self.model), "target": self.target, "deployable": self.deployable,
                "edgetpu": self.edgetpu.to_json() if self.edgetpu else None,
                "tflm": self.tflm.to_json() if self.tflm else None,
                "board": self.board}


def check(model: str | Path, *, target: str = "all", board: str | None = None,
          run_interpreter: bool = True) -> CheckResult:
    if target not in TARGETS:
        raise PipelineError(f"unknown target '{target}'", field="--target", fix="use edgetpu, tflm or all")
    board_preset = get_board(board) if board else None  # fail fast, before any work
    path = Path(model)
    parsed = read_model(path)
    edgetpu = check_edgetpu(parsed) if target in ("edgetpu", "all") else None
    tflm = None
    if target in ("tflm", "all") or board_preset:
        tflm = check_tflm(parsed, path, run_interpreter=run_interpreter)
    fit = None
    if board_preset:
        sg = parsed.main
        io = sum(_nbytes(sg.tensors[i]) for i in sg.inputs + sg.outputs)
        fit = board_fit(board_preset, model_bytes=parsed.size,
                        arena_bytes=tflm.recommended_arena_bytes if tflm else None, io_bytes=io)
    return CheckResult(model=path, target=target, edgetpu=edgetpu, tflm=tflm, board=fit)


_DTYPE_BYTES = {"int8": 1, "uint8": 1, "int16": 2, "float16": 2, "int32": 4, "float32": 4, "int64": 8,
                "float64": 8, "bool": 1}


def _nbytes(t) -> int:
    n = _DTYPE_BYTES.get(t.dtype, 4)
    for d in t.shape:
        n *= max(d, 1)
    return n


# --- registry entry ----------------------------------------------------------------------------

def not_deployable_reasons(checked: dict[str, Any], target: str) -> list[str]:
    reasons = []
    e, t, b = checked.get("edgetpu"), checked.get("tflm"), checked.get("board")
    if target in ("edgetpu", "all") and e and not e["compatible"]:
        reasons.append(f"Edge TPU: {e['mapped_ops']}/{e['total_ops']} ops mapped"
                       + (f" ({e['model_problem']})" if e.get("model_problem") else ""))
    if target in ("tflm", "all") and t and not t["compatible"]:
        bad = [f"{o['op']}: {o['reason']}" for o in t["ops"] if not o["supported"]][:3]
        reasons.append("TFLM: " + "; ".join(bad + [x for x in (t.get("model_problem"),
                                                               t["interpreter"].get("error")) if x]))
    if b and not (b["flash"]["fits"] and b["ram"]["fits"]):
        reasons.append(f"board {b['name']}: does not fit")
    return reasons


def _check_job(job: Job) -> CheckResult:
    r = job.request
    return check(job.model, target=r.target, board=r.board, run_interpreter=r.run_interpreter)


def _check_key(job: Job) -> dict[str, Any]:
    return {"model": content_hash(job.model), "target": job.request.target, "board": job.request.board,
            "interpreter": job.request.run_interpreter, "tables": fact_tables(),
            "tflm": package_version("tflite-micro")}


STAGE = Stage("check", run=_check_job, cache_key=_check_key,
              problems=lambda job, result: not_deployable_reasons(result, job.request.target))
