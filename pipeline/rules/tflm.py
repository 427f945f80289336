"""TFLite Micro: which `MicroMutableOpResolver` method registers each op, whether its reference
kernel takes the op's tensor types, and the definitive test: the model loaded and invoked in the
TFLM Python interpreter (in a subprocess, since it can abort the process), with the smallest
tensor arena found by binary search.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from .. import PROJECT_DIR
from ..runtime.process import signal_name
from ..runtime.tflm_runner import explain_tflm_error, host_arena_bytes
from ..tflite_model import Operator, TFLiteModel

TABLE_PATH = Path(__file__).with_name("tflm_ops.json")
ARENA_ALIGNMENT = 16
# TFLM wastes up to 16 bytes realigning an arena that does not start on a 16-byte boundary
# (micro_interpreter.h); the recommended size adds that slack to the measured minimum.
ARENA_MARGIN_BYTES = 16
_MAX_RESTARTS = 64
_PROBE_TIMEOUT_S = 300
# uint8 appears in TFLM only in these kernels (or type-agnostic copies): tflm_ops.json source notes
# Only a model quantized to uint8 throughout (TensorFlow 1's quantization-aware training, as in
# Coral's older models) computes in uint8: the TF2 converter keeps --io-type uint8 at the edges
# (a QUANTIZE each) and computes in int8, so the fix is a new conversion, not an I/O option.
_NO_UINT8 = ("TFLM has no uint8 {op} kernel: this model computes in uint8 (TensorFlow 1 quantization); "
             "quantize the float model again with `invoke quantize` (int8 inside; --io-type uint8 keeps "
             "uint8 at its inputs and outputs)")
_UINT8_OPS = {"QUANTIZE", "DEQUANTIZE", "REVERSE_V2", "RESHAPE", "SQUEEZE", "BROADCAST_TO", "SHAPE"}


@cache
def table() -> dict[str, Any]:
    return json.loads(TABLE_PATH.read_text())


@dataclass(frozen=True)
class TFLMOpVerdict:
    index: int
    op: str
    supported: bool
    resolver_method: str | None
    reason: str
    keras_layer: str | None = None  # the layer it came from (`pipeline.layers`), set by check
    layer_class: str | None = None  # its class, when a Keras model confirmed it

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "op": self.op, "supported": self.supported,
                "resolver_method": self.resolver_method, "reason": self.reason,
                "keras_layer": self.keras_layer, "layer_class": self.layer_class}


@dataclass(frozen=True)
class TFLMReport:
    compatible: bool
    ops: tuple[TFLMOpVerdict, ...]
    resolver_methods: tuple[str, ...]
    interpreter_ran: bool | None
    interpreter_error: str | None
    arena_bytes: int | None
    model_problem: str | None
    notes: tuple[str, ...] = ()

    @property
    def recommended_arena_bytes(self) -> int | None:
        return None if self.arena_bytes is None else self.arena_bytes + ARENA_MARGIN_BYTES

    def to_json(self) -> dict[str, Any]:
        return {"compatible": self.compatible, "arena_bytes": self.arena_bytes,
                "arena_margin_bytes": ARENA_MARGIN_BYTES,
                "recommended_arena_bytes": self.recommended_arena_bytes,
                "resolver_size": len(self.resolver_methods),
                "resolver_methods": list(self.resolver_methods),
                "interpreter": {"ran": self.interpreter_ran, "error": self.interpreter_error},
                "model_problem": self.model_problem, "notes": list(self.notes),
                "rules": f"tflite-micro {table()['tflite_micro_commit'][:12]} (wheel {table()['tflite_micro_wheel']})",
                "ops": [o.to_json() for o in self.ops]}


def _main_input_dtype(model: TFLiteModel, op: Operator) -> str | None:
    sg = model.main
    for i in op.inputs:
        if i >= 0 and not sg.tensors[i].is_constant:
            return sg.tensors[i].dtype
    return None


# Kernel preconditions TFLM enforces with TFLITE_CHECK, i.e. by abort() rather than an error:
# found by reading the kernels at the pinned commit (tflm_ops.json), each with its source.
def _softmax_scale_aborts(model: TFLiteModel, op: Operator) -> str | None:
    """kernels/softmax_common.cc -> PreprocessSoftmaxScaling -> QuantizeMultiplierGreaterThanOne:
    TFLITE_CHECK_GT(beta * input_scale * 2^26, 1) for int8/uint8 input (kScaledDiffIntegerBits 5)."""
    t = model.main.tensors[op.inputs[0]]
    if t.dtype not in ("int8", "uint8") or t.scale is None:
        return None
    multiplier = float(op.options.get("Beta", 1.0)) * t.scale * (1 << 26)
    if multiplier > 1.0:
        return None
    return (f"TFLM's softmax aborts the program when beta x input scale x 2^26 <= 1 (here {multiplier:.3g}: "
            f"input scale {t.scale:.3g}); the logits barely vary on the calibration data: check the data "
            "and the training, or end the model at the logits")


KERNEL_ABORTS = {"SOFTMAX": _softmax_scale_aborts}


def _verdict(model: TFLiteModel, op: Operator) -> TFLMOpVerdict:
    entry = table()["ops"].get(op.op)
    if entry is None:
        if op.op.startswith("CUSTOM:"):
            reason = (f"custom op {op.custom_code!r} has no TFLM kernel: write one and register it "
                      "with AddCustom")
        else:
            reason = f"{op.op} has no TFLM kernel (no MicroMutableOpResolver method)"
        return TFLMOpVerdict(op.index, op.op, False, None, reason)
    method = entry["method"]
    dtype = _main_input_dtype(model, op)
    if dtype == "uint8":
        ok = op.op in _UINT8_OPS
        return TFLMOpVerdict(op.index, op.op, ok, method,
                             "uint8 data" if ok else _NO_UINT8.format(op=op.op))
    support = entry.get(dtype) if dtype else True
    if op.op in KERNEL_ABORTS and (aborts := KERNEL_ABORTS[op.op](model, op)):
        return TFLMOpVerdict(op.index, op.op, False, method, aborts)
    if support is False:
        return TFLMOpVerdict(op.index, op.op, False, method,
                             f"the reference {op.op} kernel rejects {dtype} input")
    if dtype == "float32" and op.op not in ("QUANTIZE", "DEQUANTIZE"):
        return TFLMOpVerdict(op.index, op.op, True, method, "runs in float32 (left float by the converter)")
    if support is None:
        return TFLMOpVerdict(op.index, op.op, True, method,
                             f"{dtype} support of the {op.op} kernel is not determined: the interpreter run decides")
    return TFLMOpVerdict(op.index, op.op, True, method, f"{dtype or 'no activation'} kernel")


def static_check(model: TFLiteModel) -> tuple[list[TFLMOpVerdict], str | None, list[str]]:
    """Per-op verdicts, a problem that makes the whole model unusable, and notes."""
    verdicts = [_verdict(model, op) for sg in model.subgraphs[:1] for op in sg.operators]
    problem = None
    notes = []
    if invalid := model.invalid_quantization():
        problem = (f"invalid quantization: {'; '.join(invalid[:3])}: the file is corrupt or was calibrated "
                   "on NaN/Inf data (fix: quantize again with `invoke quantize`)")
    dynamic = [t for t in model.main.tensors if t.is_dynamic]
    if dynamic:
        # TFLM allocates every tensor from `shape` and never reads `shape_signature` (the
        # interpreter run below is the proof): a dynamic batch runs at the stored batch.
        t = dynamic[0]
        notes.append(f"{len(dynamic)} tensors have a dynamic shape_signature (e.g. '{t.name}' "
                     f"{list(t.shape_signature)}): TFLM ignores it and runs the stored shape {list(t.shape)}")
    return verdicts, problem, notes


def probe_interpreter(model_path: Path, inputs: int,
                      generous: int | None = None) -> tuple[bool, int | None, str | None]:
    """(ran, smallest arena, error) from the TFLM interpreter in crash-isolated workers; the
    search starts from `generous`, an arena the model surely fits (`host_arena_bytes`)."""
    lo, hi = 0, None
    for _ in range(_MAX_RESTARTS):
        cmd = [sys.executable, "-m", "pipeline.runtime.tflm_probe", str(model_path), str(inputs), str(lo),
               str(hi) if hi is not None else "none"]
        if generous:
            cmd.append(str(generous))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S,
                                  cwd=PROJECT_DIR, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return False, None, f"the TFLM interpreter did not finish within {_PROBE_TIMEOUT_S} s"
        events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        result = next((e["result"] for e in events if "result" in e), None)
        if result is not None:
            if not result["runs"]:
                return False, None, explain_tflm_error(proc.stderr)
            return True, result["arena_bytes"], None
        pending = [e for e in events if "probe" in e]
        if not pending or (hi is None and len(pending) <= 2):
            return False, None, (f"the TFLM interpreter crashed ({signal_name(proc.returncode)}) "
                                 f"loading the model: {explain_tflm_error(proc.stderr)}")
        for e in pending:  # replay what the crashed worker learned
            if e["ok"] is True:
                hi = e["probe"]
            elif e["ok"] is False:
                lo = max(lo, e["probe"] + 1)
        lo = max(lo, pending[-1]["probe"] + 1)  # it crashed on this size: too small
    return False, None, "the TFLM interpreter kept crashing during the arena search"


# Fixed-point multipliers (QuantizeMultiplier) cannot represent scales this far from 1; TFLM
# kernels then abort() in Prepare instead of returning an error.
_SCALE_RANGE = (1e-12, 1e12)


def unrepresentable_quantization(model: TFLiteModel) -> list[str]:
    """Ops touching a tensor whose scale TFLM cannot turn into a fixed-point multiplier."""
    import math

    sg = model.main
    found = []
    for op in sg.operators:
        for i in op.inputs + op.outputs:
            t = sg.tensors[i] if i >= 0 else None
            if t is None or t.quantization is None or t.is_constant:
                continue
            bad = [s for s in t.quantization.scales
                   if not math.isfinite(s) or not _SCALE_RANGE[0] <= s <= _SCALE_RANGE[1]]
            if bad:
                found.append(f"{op.op} (op {op.index}): tensor '{t.name}' scale {bad[0]:g}")
                break
    return found


def round_arena(n: int) -> int:
    return -(-n // ARENA_ALIGNMENT) * ARENA_ALIGNMENT


def check_tflm(model: TFLiteModel, model_path: Path | None, *, run_interpreter: bool = True) -> TFLMReport:
    verdicts, problem, notes = static_check(model)
    methods = tuple(dict.fromkeys(v.resolver_method for v in verdicts if v.resolver_method))
    ran = arena = error = None
    if run_interpreter and model_path is not None and problem is None:
        ran, arena, error = probe_interpreter(model_path, len(model.main.inputs),
                                              host_arena_bytes(model, model_path.stat().st_size))
        arena = round_arena(arena) if arena else None
        suspects = [f"{v.op} (op {v.index}): {v.reason}" for v in verdicts
                    if not v.supported and v.op in KERNEL_ABORTS and "aborts" in v.reason]
        if error and "crashed" in error and not suspects:
            suspects = unrepresentable_quantization(model)
        if error and "crashed" in error and suspects:
            error += f"; likely cause: {'; '.join(suspects)}"
    compatible = problem is None and all(v.supported for v in verdicts) and ran is not False
    return TFLMReport(compatible=compatible, ops=tuple(verdicts), resolver_methods=methods,
                      interpreter_ran=ran, interpreter_error=error, arena_bytes=arena,
                      model_problem=problem, notes=tuple(notes))
