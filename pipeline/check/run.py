"""`invoke check`: both targets and an optional board, as one JSON-ready result and a table."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..boards import board_fit, get_board
from ..errors import PipelineError
from ..report import is_pipeline_output, update_report
from ..tflite_model import read_model
from .edgetpu import EdgeTPUReport, check_edgetpu
from .tflm import TFLMReport, check_tflm

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


def resolve_model_path(model: str, out: Path) -> Path:
    """`demo` (the default) means the demo's int8 model, quantized first if need be."""
    if model == "demo":
        path = out / "demo" / "model_int8.tflite"
        if not path.is_file():
            from ..quantize import QuantizeRequest, quantize

            log.info("no %s yet: quantizing the demo first", path)
            quantize(QuantizeRequest(out=out))
        return path
    return Path(model)


def check(model: str, *, target: str = "all", board: str | None = None, out: Path = Path("build"),
          run_interpreter: bool = True) -> CheckResult:
    if target not in TARGETS:
        raise PipelineError(f"unknown target '{target}'", field="--target", fix="use edgetpu, tflm or all")
    board_preset = get_board(board) if board else None  # fail fast, before any work
    path = resolve_model_path(model, out)
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
    result = CheckResult(model=path, target=target, edgetpu=edgetpu, tflm=tflm, board=fit)
    if is_pipeline_output(path.parent):  # inside a pipeline output: keep the report whole
        update_report(path.parent, path.parent.name, "check", result.to_json())
    return result


_DTYPE_BYTES = {"int8": 1, "uint8": 1, "int16": 2, "float16": 2, "int32": 4, "float32": 4, "int64": 8,
                "float64": 8, "bool": 1}


def _nbytes(t) -> int:
    n = _DTYPE_BYTES.get(t.dtype, 4)
    for d in t.shape:
        n *= max(d, 1)
    return n


def format_table(r: CheckResult) -> str:
    """Per op name: count, Edge TPU status, TFLM status (one row per distinct combination)."""
    rows: dict[tuple[str, str, str], int] = {}
    order: list[tuple[str, str, str]] = []
    ops = (r.edgetpu.ops if r.edgetpu else r.tflm.ops)
    etpu = {v.index: v for v in r.edgetpu.ops} if r.edgetpu else {}
    tflm = {v.index: v for v in r.tflm.ops} if r.tflm else {}
    for v in ops:
        e = etpu.get(v.index)
        t = tflm.get(v.index)
        key = (v.op, e.status if e else "-",
               ("ok " + (t.resolver_method or "")) if t and t.supported else (f"NO: {t.reason}" if t else "-"))
        if key not in rows:
            order.append(key)
        rows[key] = rows.get(key, 0) + 1
    w = max([len(k[0]) for k in order] + [8])
    we = max([len(k[1]) for k in order] + [14])
    lines = [f"{'Operator':<{w}}  {'Count':>5}  {'Edge TPU':<{we}}  TFLM", "-" * (w + we + 30)]
    lines += [f"{op:<{w}}  {rows[(op, e, t)]:>5}  {e:<{we}}  {t}" for op, e, t in order]
    lines.append("")
    if r.edgetpu:
        e = r.edgetpu
        where = "all ops mapped" if e.cut_at is None else f"first CPU op at index {e.cut_at}"
        lines.append(f"Edge TPU : {'compatible' if e.compatible else 'NOT fully compatible'}: "
                     f"{e.mapped_ops}/{e.total_ops} ops mapped ({where})"
                     + (f"; {e.model_problem}" if e.model_problem else ""))
        if e.off_chip_bytes:
            lines.append(f"           {e.off_chip_bytes} B of parameters will stream from off-chip memory")
        for v in e.ops:
            if not v.mapped and v.fix and v.status != "More than one subgraph is not supported":
                lines.append(f"           op {v.index} {v.op}: {v.fix}")
    if r.tflm:
        t = r.tflm
        arena = f"arena {t.arena_bytes} B (+{t.recommended_arena_bytes - t.arena_bytes} B margin)" \
            if t.arena_bytes else "arena not measured"
        state = "compatible" if t.compatible else "NOT compatible"
        lines.append(f"TFLM     : {state}: MicroMutableOpResolver<{len(t.resolver_methods)}>, {arena}"
                     + (f"; interpreter: {t.interpreter_error}" if t.interpreter_error else "")
                     + (f"; {t.model_problem}" if t.model_problem else ""))
    if r.board:
        from ..boards import fit_line

        lines.append(f"Board    : {fit_line(r.board)}")
    return "\n".join(lines)
