"""Predict what `edgetpu_compiler` will do with a model: op by op status in the compiler's own
wording, and the partition between the Edge TPU and the CPU.

The partition follows data flow, as compiled Coral models show: CPU ops before the first mapped
op (a float-input QUANTIZE) stay in front of the Edge TPU segment without cutting it; once the
segment has started, an op that reads a tensor computed on the CPU runs on the CPU too, even
when it is supported ("More than one subgraph is not supported").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from ..tflite_model import Operator, TFLiteModel, Tensor

TABLE_PATH = Path(__file__).with_name("edgetpu_ops.json")
EIGHT_BIT = ("int8", "uint8")
_SOFTMAX_MAX_ELEMENTS = 16000


@cache
def table() -> dict[str, Any]:
    return json.loads(TABLE_PATH.read_text())


def status(key: str) -> str:
    return table()["statuses"][key]


@dataclass(frozen=True)
class OpVerdict:
    index: int
    op: str
    mapped: bool
    status: str
    fix: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "op": self.op, "mapped": self.mapped, "status": self.status,
                "fix": self.fix}


@dataclass(frozen=True)
class EdgeTPUReport:
    compatible: bool
    total_ops: int
    mapped_ops: int
    cut_at: int | None
    ops: tuple[OpVerdict, ...]
    model_problem: str | None
    parameter_bytes: int
    on_chip_bytes: int
    off_chip_bytes: int
    compiler_version: str

    def to_json(self) -> dict[str, Any]:
        return {"compatible": self.compatible, "total_ops": self.total_ops,
                "mapped_ops": self.mapped_ops, "cut_at": self.cut_at,
                "model_problem": self.model_problem,
                "parameter_memory": {"total_bytes": self.parameter_bytes,
                                     "on_chip_bytes": self.on_chip_bytes,
                                     "off_chip_streamed_bytes": self.off_chip_bytes,
                                     "on_chip_cache_bytes": table()["on_chip_parameter_cache_bytes"]},
                "rules": f"edgetpu_compiler {self.compiler_version} table",
                "ops": [o.to_json() for o in self.ops]}


def _activations(model: TFLiteModel, op: Operator) -> list[Tensor]:
    sg = model.main
    return [sg.tensors[i] for i in op.inputs + op.outputs if i >= 0 and not sg.tensors[i].is_constant]


def _rank_ok(t: Tensor) -> bool:
    """Only the 3 innermost dimensions may exceed 1."""
    return all(d == 1 for d in t.shape[:-3])


def _effective_dims(t: Tensor) -> list[int]:
    return [d for d in t.shape if d != 1]


def _limit_violation(model: TFLiteModel, op: Operator, limit: str) -> tuple[str, str] | None:
    sg = model.main
    ins = [sg.tensors[i] for i in op.inputs if i >= 0]
    outs = [sg.tensors[i] for i in op.outputs]
    if limit == "output_1d" and outs and len(_effective_dims(outs[0])) > 1:
        return status("unspecified"), "FULLY_CONNECTED output must be 1-D: flatten before the dense layer"
    if limit == "softmax_1d" and ins:
        t = ins[0]
        dims = _effective_dims(t)
        if len(dims) > 1 or (dims and dims[0] > _SOFTMAX_MAX_ELEMENTS):
            return status("unspecified"), (f"SOFTMAX needs a 1-D input of at most "
                                           f"{_SOFTMAX_MAX_ELEMENTS} elements (got {list(t.shape)})")
    if limit == "unit_strides" and len(ins) >= 4:
        strides = model.tensor_values(ins[3])
        if strides is None or any(int(s) != 1 for s in strides):
            return status("strided_slice"), "use strides of 1 (slice, then subsample on the CPU)"
    if limit == "eight_bit_input" and ins and ins[0].dtype not in EIGHT_BIT:
        return status("unspecified"), ("a float-input QUANTIZE stays on the CPU: quantize with "
                                       "int8/uint8 I/O (`invoke quantize --io-type int8`)")
    if limit == "resize_scale" and ins and outs:
        hin, win = ins[0].shape[1:3] if len(ins[0].shape) == 4 else (0, 0)
        hout, wout = outs[0].shape[1:3] if len(outs[0].shape) == 4 else (0, 0)
        # compiled Coral models: same size and x2 upsampling were mapped; 1->33 and 33->513 were not
        if not hin or not win or (hout, wout) not in ((hin, win), (2 * hin, 2 * win)):
            return status("unspecified"), (f"resize {hin}x{win} -> {hout}x{wout} is left on the CPU "
                                           "(only same-size and 2x upsampling are known to map)")
    return None


def _op_problem(model: TFLiteModel, op: Operator, runtime: int) -> tuple[str, str] | None:
    """(status, fix) when this op cannot map on its own, None when it can."""
    entry = table()["ops"].get(op.op)
    if op.op.startswith("CUSTOM:"):
        return status("data_type"), "custom ops run on the CPU: keep them at the end of the graph"
    if entry is None:
        return status("not_supported"), f"replace {op.op} with an op the Edge TPU supports"
    if entry["min_runtime"] > runtime:
        return status("not_supported"), f"{op.op} needs Edge TPU runtime {entry['min_runtime']} (targeting {runtime})"
    for limit in entry.get("limits", ()):
        if limit == "eight_bit_input":
            violation = _limit_violation(model, op, limit)
            if violation:
                return violation
    acts = _activations(model, op)
    allowed = EIGHT_BIT + tuple(entry.get("extra_activation_types", ()))
    if any(t.dtype not in allowed for t in acts):
        bad = sorted({t.dtype for t in acts if t.dtype not in allowed})
        return status("data_type"), f"{op.op} computes on {', '.join(bad)} tensors: full-integer int8 quantization (`invoke quantize`)"
    if any(not _rank_ok(t) for t in acts):
        return status("rank"), "reshape so that only the 3 innermost dimensions exceed 1"
    for limit in entry.get("limits", ()):
        violation = _limit_violation(model, op, limit)
        if violation:
            return violation
    return None


def _model_problem(model: TFLiteModel) -> tuple[str, str] | None:
    sg = model.main
    if any(t.is_dynamic for t in sg.tensors):
        return status("dynamic"), "fix every dimension (batch 1) before converting; `invoke quantize` does"
    quantized = any(t.dtype in EIGHT_BIT and t.quantization for t in sg.tensors if not t.is_constant)
    if not quantized:
        return status("not_quantized"), "full-integer post-training quantization: `invoke quantize`"
    return None


def check_edgetpu(model: TFLiteModel, runtime: int | None = None) -> EdgeTPUReport:
    runtime = runtime or table()["default_runtime_version"]
    sg = model.main
    verdicts: list[OpVerdict] = []
    problem = _model_problem(model)
    if problem:
        verdicts = [OpVerdict(op.index, op.op, False, problem[0], problem[1]) for op in sg.operators]
    else:
        cpu_tensors: set[int] = set()
        started = False
        for op in sg.operators:
            own = _op_problem(model, op, runtime)
            if own is None and started and any(i in cpu_tensors for i in op.inputs):
                own = (status("after_cut"), "an earlier op runs on the CPU and feeds this one: "
                       "fix that op, or compile with -a / -i")
            if own is None:
                started = True
                verdicts.append(OpVerdict(op.index, op.op, True, status("mapped")))
            else:
                if started:
                    cpu_tensors.update(op.outputs)
                verdicts.append(OpVerdict(op.index, op.op, False, own[0], own[1]))
    mapped = [v for v in verdicts if v.mapped]
    cut_at = next((v.index for v in verdicts if not v.mapped), None)
    params = sum(sg.tensors[i].data_bytes for v in mapped for i in sg.operators[v.index].inputs
                 if i >= 0 and sg.tensors[i].is_constant)
    cache_bytes = table()["on_chip_parameter_cache_bytes"]
    return EdgeTPUReport(
        compatible=bool(verdicts) and len(mapped) == len(verdicts), total_ops=len(verdicts),
        mapped_ops=len(mapped), cut_at=cut_at, ops=tuple(verdicts),
        model_problem=problem[0] if problem else None, parameter_bytes=params,
        on_chip_bytes=min(params, cache_bytes), off_chip_bytes=max(0, params - cache_bytes),
        compiler_version=table()["compiler_version"])
