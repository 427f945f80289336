"""Predict what `edgetpu_compiler` will do with a model: op by op status in the compiler's own
wording, and the partition between the Edge TPU and the CPU.

The partition follows data flow, as compiled Coral models show: CPU ops before the first mapped
op (a float-input QUANTIZE) stay in front of the Edge TPU segment without cutting it; once the
segment has started, an op that reads a tensor computed on the CPU runs on the CPU too, even
when it is supported ("More than one subgraph is not supported").
"""

from __future__ import annotations

import json
from collections.abc import Callable
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
    keras_layer: str | None = None  # the layer it came from (`pipeline.layers`), set by check
    layer_class: str | None = None  # its class, when a Keras model confirmed it

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "op": self.op, "mapped": self.mapped, "status": self.status,
                "fix": self.fix, "keras_layer": self.keras_layer, "layer_class": self.layer_class}


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


# --- per-op limits ----------------------------------------------------------------------
# Each limit is a named check: it returns None when the op is fine, else the sentence the user
# reads (the fix). The status is the compiler's wording for that kind of refusal.

Limit = Callable[[TFLiteModel, Operator, int], "str | None"]
LIMITS: dict[str, tuple[str, Limit]] = {}
# limits checked before the generic type and rank rules: they name the root cause (a float model
# input, weights computed at run time) where those rules would only name its symptom
PRE_TYPE_LIMITS = {"eight_bit_input", "constant_weights"}


def limit(name: str, status_key: str = "unspecified"):
    def register(fn: Limit) -> Limit:
        LIMITS[name] = (status_key, fn)
        return fn
    return register


def _in(model: TFLiteModel, op: Operator, k: int) -> Tensor | None:
    return model.main.tensors[op.inputs[k]] if len(op.inputs) > k and op.inputs[k] >= 0 else None


def _out(model: TFLiteModel, op: Operator) -> Tensor | None:
    return model.main.tensors[op.outputs[0]] if op.outputs else None


def _axes(model: TFLiteModel, t: Tensor | None, rank: int) -> list[int] | None:
    values = model.tensor_values(t) if t is not None else None
    return None if values is None else [int(a) % max(rank, 1) for a in values.ravel()]


@limit("output_1d")
def _output_1d(model, op, runtime):
    out = _out(model, op)
    if out is not None and len(_effective_dims(out)) > 1:
        return f"{op.op} output must be 1-D (got {list(out.shape)}): flatten before the dense layer"
    return None


@limit("softmax_1d")
def _softmax_1d(model, op, runtime):
    t = _in(model, op, 0)
    dims = _effective_dims(t) if t is not None else []
    if len(dims) > 1 or (dims and dims[0] > _SOFTMAX_MAX_ELEMENTS):
        return f"SOFTMAX needs a 1-D input of at most {_SOFTMAX_MAX_ELEMENTS} elements (got {list(t.shape)})"
    return None


@limit("unit_strides", "strided_slice")
def _unit_strides(model, op, runtime):
    strides = model.tensor_values(_in(model, op, 3)) if _in(model, op, 3) is not None else None
    if strides is None or any(int(v) != 1 for v in strides):
        return "use strides of 1 (slice, then subsample on the CPU)"
    if op.options.get("EllipsisMask") or op.options.get("NewAxisMask"):
        return "STRIDED_SLICE with an ellipsis or new-axis mask: index explicitly"
    return None


@limit("eight_bit_input")
def _eight_bit_input(model, op, runtime):
    t = _in(model, op, 0)
    if t is not None and t.dtype not in EIGHT_BIT:
        return ("a float-input QUANTIZE stays on the CPU: quantize with int8/uint8 I/O "
                "(`invoke quantize --io-type int8`)")
    return None


@limit("resize_scale")
def _resize_scale(model, op, runtime):
    t, out = _in(model, op, 0), _out(model, op)
    hin, win = t.shape[1:3] if t is not None and len(t.shape) == 4 else (0, 0)
    hout, wout = out.shape[1:3] if out is not None and len(out.shape) == 4 else (0, 0)
    # compiled Coral models: same size and x2 upsampling were mapped; 1->33 and 33->513 were not
    if not hin or not win or (hout, wout) not in ((hin, win), (2 * hin, 2 * win)):
        return (f"resize {hin}x{win} -> {hout}x{wout} is left on the CPU "
                "(only same-size and 2x upsampling are known to map)")
    return None


@limit("no_fused_activation")
def _no_fused_activation(model, op, runtime):
    act = op.options.get("FusedActivationFunction", "NONE")
    if act != "NONE":
        return f"{op.op} with a fused {act}: apply the activation as its own op"
    return None


@limit("equal_dilation")
def _equal_dilation(model, op, runtime):
    h, w = op.options.get("DilationHFactor", 1), op.options.get("DilationWFactor", 1)
    if h != w:
        return f"dilation must be equal in x and y (got {h} x {w})"
    if op.op == "DEPTHWISE_CONV_2D" and h > 1 and runtime < 13:
        return f"dilated DEPTHWISE_CONV_2D needs Edge TPU runtime 13 (targeting {runtime})"
    return None


@limit("not_over_batch")
def _not_over_batch(model, op, runtime):
    data = _in(model, op, 1 if op.op == "SPLIT" else 0)
    rank = len(data.shape) if data is not None else 0
    if op.op == "PACK":
        axes = [int(op.options.get("Axis", 0))]
        rank += 1
    elif op.op == "PAD":
        pads = model.tensor_values(_in(model, op, 1)) if _in(model, op, 1) is not None else None
        axes = [0] if pads is not None and pads.size >= 2 and (pads[0] or pads[1]) else []
    elif op.op == "SPLIT":
        axes = _axes(model, _in(model, op, 0), rank)
    else:  # MEAN, SUM, REDUCE_MAX, REDUCE_MIN
        axes = _axes(model, _in(model, op, 1), rank)
    if axes is None:
        return f"{op.op} axes must be compile-time constants"
    if rank > 1 and 0 in axes:
        return f"{op.op} along the batch dimension: reshape so that the batch stays 1"
    return None


@limit("z_reduction_multiple_of_4")
def _z_reduction(model, op, runtime):
    data = _in(model, op, 0)
    axes = _axes(model, _in(model, op, 1), len(data.shape)) if data is not None else None
    if data is not None and axes and len(data.shape) - 1 in axes and data.shape[-1] % 4:
        return f"MEAN over channels needs a channel count that is a multiple of 4 (got {data.shape[-1]})"
    return None


@limit("constant_concat_is_zero_padding")
def _concat_constants(model, op, runtime):
    consts = [model.main.tensors[i] for i in op.inputs if i >= 0 and model.main.tensors[i].is_constant]
    if not consts:
        return None
    values = model.tensor_values(consts[0])
    if len(op.inputs) != 2 or len(consts) != 1 or values is None or values.any():
        return ("CONCATENATION with a constant input maps only as zero padding: "
                "exactly 2 inputs, the constant all zeros")
    return None


@limit("prelu_alpha_1d")
def _prelu_alpha(model, op, runtime):
    alpha = _in(model, op, 1)
    if alpha is not None and any(d != 1 for d in alpha.shape[:-1]):
        return f"PReLU alpha {list(alpha.shape)} must vary along the innermost dim only: shared_axes=[1, 2]"
    return None


@limit("constant_weights", "param_not_constant")
def _constant_weights(model, op, runtime):
    weights = _in(model, op, 1)
    if weights is not None and not weights.is_constant:
        return f"{op.op} weights must be constant at compile time: re-export with constant weights"
    return None


def _apply(name: str, model: TFLiteModel, op: Operator, runtime: int) -> tuple[str, str] | None:
    status_key, check = LIMITS[name]
    fix = check(model, op, runtime)
    return (status(status_key), fix) if fix else None


def _op_problem(model: TFLiteModel, op: Operator, runtime: int) -> tuple[str, str] | None:
    """(status, fix) when this op cannot map on its own, None when it can. The order follows
    the compiler's wording in real logs: custom ops and float/int32 tensors are "unsupported
    data type" before an op is "not supported" (DEQUANTIZE, float RESHAPE)."""
    entry = table()["ops"].get(op.op)
    if op.op.startswith("CUSTOM:"):
        return status("data_type"), "custom ops run on the CPU: keep them at the end of the graph"
    limits = entry.get("limits", ()) if entry else ()
    for name in (n for n in limits if n in PRE_TYPE_LIMITS):
        if violation := _apply(name, model, op, runtime):
            return violation
    acts = _activations(model, op)
    allowed = EIGHT_BIT + tuple(entry.get("extra_activation_types", ()) if entry else ())
    if any(t.dtype not in allowed for t in acts):
        bad = sorted({t.dtype for t in acts if t.dtype not in allowed})
        return status("data_type"), (f"{op.op} computes on {', '.join(bad)} tensors: full-integer "
                                     "int8 quantization (`invoke quantize`), or move it out of the model")
    if entry is None:
        return status("not_supported"), f"replace {op.op} with an op the Edge TPU supports"
    if entry["min_runtime"] > runtime:
        return status("not_supported"), f"{op.op} needs Edge TPU runtime {entry['min_runtime']} (targeting {runtime})"
    if any(not _rank_ok(t) for t in acts):
        return status("rank"), "reshape so that only the 3 innermost dimensions exceed 1"
    for name in (n for n in limits if n not in PRE_TYPE_LIMITS):
        if violation := _apply(name, model, op, runtime):
            return violation
    return None


def _model_problem(model: TFLiteModel) -> tuple[str, str] | None:
    sg = model.main
    if invalid := model.invalid_quantization():
        return (f"invalid quantization: {invalid[0]}" + (f" (+{len(invalid) - 1} more)" if len(invalid) > 1 else ""),
                "the file is corrupt or was calibrated on NaN/Inf data: quantize again (`invoke quantize`)")
    if any(t.is_dynamic for t in sg.tensors):
        return status("dynamic"), "fix every dimension (batch 1) before converting; `invoke quantize` does"
    from ..model import quantization_scheme

    if quantization_scheme(model) == "int16x8":  # most activations int16: not an int8 LSTM's cell state
        return (status("data_type"), "16-bit activations (int16x8) are not supported on the Edge TPU: "
                "quantize with --mode int8 (`invoke quantize --mode int8`)")
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
