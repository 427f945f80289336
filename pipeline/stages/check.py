"""`invoke check`: both targets and an optional board, as one JSON-ready result and a table."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..boards import board_fit, get_board
from ..errors import PipelineError
from ..cache import content_hash
from ..layers import TABLE_PATH as LAYER_TABLE, OpLayer, map_layers, read_keras_layers
from ..tflite_model import read_model
from ..versions import package_version
from .base import Job, Stage, fact_tables, keras_model_of
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
    keras_model: Path | None = None  # the Keras model that confirmed the layer names, if one did

    @property
    def deployable(self) -> bool:
        ok = [r.compatible for r in (self.edgetpu, self.tflm) if r is not None]
        fits = self.board is None or (self.board["flash"]["fits"] and self.board["ram"]["fits"])
        return all(ok) and fits

    def to_json(self) -> dict[str, Any]:
        return {"model": str(self.model), "target": self.target, "deployable": self.deployable,
                "edgetpu": self.edgetpu.to_json() if self.edgetpu else None,
                "tflm": self.tflm.to_json() if self.tflm else None,
                "board": self.board, "keras_model": str(self.keras_model) if self.keras_model else None}


def check(model: str | Path, *, target: str = "all", board: str | None = None,
          run_interpreter: bool = True, keras_model: str | Path | None = None) -> CheckResult:
    """`keras_model` (.keras/.h5, read without loading it) confirms the layer each op came
    from; without it the converter's tensor names give the layer."""
    if target not in TARGETS:
        raise PipelineError(f"unknown target '{target}'", field="--target", fix="use edgetpu, tflm or all")
    board_preset = get_board(board) if board else None  # fail fast, before any work
    keras = read_keras_layers(keras_model) if keras_model else None
    path = Path(model)
    parsed = read_model(path)
    layers = map_layers(parsed, keras)
    edgetpu = check_edgetpu(parsed) if target in ("edgetpu", "all") else None
    if edgetpu:
        edgetpu = replace(edgetpu, ops=_with_layers(edgetpu.ops, layers))
    tflm = None
    if target in ("tflm", "all") or board_preset:
        tflm = check_tflm(parsed, path, run_interpreter=run_interpreter)
        tflm = replace(tflm, ops=_with_layers(tflm.ops, layers))
    fit = None
    if board_preset:
        sg = parsed.main
        io = sum(_nbytes(sg.tensors[i]) for i in sg.inputs + sg.outputs)
        fit = board_fit(board_preset, model_bytes=parsed.size,
                        arena_bytes=tflm.recommended_arena_bytes if tflm else None, io_bytes=io)
    return CheckResult(model=path, target=target, edgetpu=edgetpu, tflm=tflm, board=fit,
                       keras_model=Path(keras_model) if keras_model else None)


def _with_layers(verdicts, layers: list[OpLayer]) -> tuple:
    """Each op's verdict with the Keras layer it came from (same op order as the model)."""
    by_index = {layer.op_index: layer for layer in layers}
    return tuple(replace(v, keras_layer=by_index[v.index].keras_layer, layer_class=by_index[v.index].layer_class)
                 if v.index in by_index else v for v in verdicts)


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
        bad = [f"{_op_name(o)}: {o['reason']}" for o in t["ops"] if not o["supported"]][:3]
        # the interpreter's failure only when no op explains it: with one named, its crash is
        # that op's abort again ("likely cause: ..."); the report keeps it in the TFLM section
        crash = None if bad else t["interpreter"].get("error")
        reasons.append("TFLM: " + "; ".join(bad + [x for x in (t.get("model_problem"), crash) if x]))
    if b and not (b["flash"]["fits"] and b["ram"]["fits"]):
        reasons.append(f"board {b['name']}: does not fit")
    return reasons


def _op_name(o: dict[str, Any]) -> str:
    """`NEG (layer `encoder/layer_norm_1`)`: an op of the report by the layer it came from."""
    layer = o.get("keras_layer")
    return f"{o['op']} (layer `{layer}`)" if layer else o["op"]


def _check_job(job: Job) -> CheckResult:
    r = job.request
    return check(job.model, target=r.target, board=r.board, run_interpreter=r.run_interpreter,
                 keras_model=keras_model_of(job))


def _check_key(job: Job) -> dict[str, Any]:
    return {"model": content_hash(job.model), "target": job.request.target, "board": job.request.board,
            "interpreter": job.request.run_interpreter, "tables": fact_tables(),
            "keras_model": content_hash(keras_model_of(job)), "layer_table": content_hash(LAYER_TABLE),
            "tflm": package_version("tflite-micro")}


STAGE = Stage("check", run=_check_job, cache_key=_check_key,
              problems=lambda job, result: not_deployable_reasons(result, job.request.target))
