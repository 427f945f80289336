"""Layer-level diagnosis: where the int8 model loses against the float one, and the first op
where two runtimes of the same int8 model part ways.

Float vs quantized. Both models come from the same SavedModel export (`invoke quantize` writes
`model_float.tflite` beside `model_int8.tflite`), and the converter names an op's output tensor
after the TF ops it was made from, in both. The matching rule, checked on the demo, on
MobileNetV2-0.35 and on a LayerNormalization/GELU/Lambda model (TF 2.21):
  1. an op's output tensor has the same name as a float tensor, that name occurs once in each
     model, and the float tensor is made by an op of the same kind (or is a graph input);
  2. QUANTIZE and DEQUANTIZE keep the real value, so their output's twin is their input's twin
     (the quantizer inserts them around ops it leaves in float, e.g. the NEG of a
     LayerNormalization, and to requantize between scales);
  3. otherwise, when the two models' op kinds without QUANTIZE/DEQUANTIZE are the same
     sequence, the op at the same position (never needed on the models above: rule 1 and op
     order agree there on every op).
Where it cannot hold: an op the quantizer splits or fuses differently from the float
conversion (no float tensor computes the same value: reported as "no float twin"), and ops
whose outputs are not real-valued (ARG_MAX's indices). Fused activations are no exception:
the float model fuses the same activation into the same op, so both outputs are post-activation.

The numbers are accumulated error (the int8 model is run end to end, as deployed), not
isolated per-layer error. `snr_drop_db` (input SNR minus output SNR) separates what an op adds
from what it inherits; `excess_db` compares that with what rounding to the op's own output
scale must cost (an op at ~0 dB is as good as int8 allows) and ranks the worst layers.

`tf.lite.experimental.QuantizationDebugger` is not used (tried on the demo, TF 2.21): it
re-quantizes the model itself with `enable_numeric_verify`, so it measures a debug model, not
the deployed file: that model has float32 I/O whatever `inference_input_type` says (int8 or
uint8 alike), a `CUSTOM:NumericVerify` op after every quantized op (neither LiteRT's reference
resolver nor TFLM has it), and runs in TF's deprecated `tf.lite.Interpreter`; it needs the
converter and representative dataset again, and its quantizer path has no int16x8. It matches
tensors by name too: each NumericVerify is named `NumericVerify/<quantized tensor name>:<index>`.
What it adds is the error of each layer in isolation (its float op is fed the dequantized
quantized input): worth a column later, where a Keras model is at hand.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..cache import content_hash
from ..data import SampleSet
from ..errors import PipelineError
from ..layers import KerasModelLayers, OpLayer, map_layers
from ..divergence import Divergence, first_divergence  # noqa: F401 (part of this module's API)
from ..model import TensorSpec
from ..runtime.device import DEVICE_RUNTIME, DeviceError, capture_device_tensors
from ..runtime.tensor_capture import RuntimeFailed, TensorValues, capture_tensors, op_outputs
from ..tflite_model import Tensor, TFLiteModel, read_model
from ..versions import package_version
from .base import Job, Stage, keras_model_of

VALUE_PRESERVING_OPS = {"QUANTIZE", "DEQUANTIZE"}
TWIN_BY_NAME = "tensor name"
TWIN_BY_VALUE = "value-preserving op"
TWIN_BY_ORDER = "op order"
TWIN_NONE = "no float twin"
# SNR beyond float32's own precision (~150 dB) means "exact"; capped so differences stay finite
SNR_CAP_DB = 140.0
DEFAULT_WORST = 3
# An op within this of its rounding limit is as good as its scale allows: not a "worst layer"
MIN_EXCESS_DB = 0.5


# --- float twins ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Twin:
    float_tensor: int | None
    rule: str


def match_float_twins(quant: TFLiteModel, float_model: TFLiteModel) -> tuple[dict[int, Twin], dict[int, Twin]]:
    """(per quantized op index, per quantized tensor index) the float tensor computing the same
    real value; see the module docstring for the rule."""
    q, f = quant.main, float_model.main
    f_names = Counter(t.name for t in f.tensors)
    f_by_name = {t.name: t.index for t in f.tensors if f_names[t.name] == 1}
    f_producer = {t: op for op in f.operators for t in op.outputs}
    q_names = Counter(t.name for t in q.tensors)
    tensor_twin: dict[int, Twin] = {}
    for qi, fi in zip(q.inputs, f.inputs):
        tensor_twin[qi] = Twin(fi, "graph input")
    q_ops = [op for op in q.operators if op.op not in VALUE_PRESERVING_OPS]
    f_ops = [op for op in f.operators if op.op not in VALUE_PRESERVING_OPS]
    by_order = {a.index: b for a, b in zip(q_ops, f_ops)} \
        if [o.op for o in q_ops] == [o.op for o in f_ops] else {}
    op_twin: dict[int, Twin] = {}
    for op in q.operators:
        out = op.outputs[0]
        twin = Twin(None, TWIN_NONE)
        name = q.tensors[out].name
        fi = f_by_name.get(name) if q_names[name] == 1 else None
        if op.op in VALUE_PRESERVING_OPS:
            src = tensor_twin.get(op.inputs[0])
            if src and src.float_tensor is not None:
                twin = Twin(src.float_tensor, TWIN_BY_VALUE)
        elif fi is not None and (fi in f.inputs or
                                 (fi in f_producer and f_producer[fi].op == op.op)):
            twin = Twin(fi, TWIN_BY_NAME)
        elif op.index in by_order:
            twin = Twin(by_order[op.index].outputs[0], TWIN_BY_ORDER)
        op_twin[op.index] = twin
        tensor_twin[out] = twin
    return op_twin, tensor_twin


# --- per-layer error --------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorError:
    """Quantized tensor (dequantized) against its float twin, over all samples pooled."""

    rmse: float
    rmse_over_scale: float | None  # RMSE in units of the tensor's quantization step
    snr_db: float  # math.inf when exact
    # the best SNR a tensor of this scale can have: uniform rounding error, step^2 / 12
    rounding_snr_db: float | None
    cosine: float | None
    clipped_fraction: float | None  # float values outside what the tensor can represent
    float_range: tuple[float, float]
    calibrated_range: tuple[float, float] | None  # scale * (qmin - zp), scale * (qmax - zp)
    scale: float | None
    zero_point: int | None


def real_values(tensor: Tensor, raw: np.ndarray) -> np.ndarray:
    """A captured tensor as real numbers (float64): dequantized when it is quantized."""
    if tensor.quantization and np.issubdtype(raw.dtype, np.integer) and not tensor.quantization.per_channel:
        return (raw.astype(np.float64) - tensor.zero_point) * tensor.scale
    return raw.astype(np.float64)


def representable_range(tensor: Tensor) -> tuple[float, float] | None:
    if not tensor.quantization or tensor.quantization.per_channel:
        return None
    dtype = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16}.get(tensor.dtype)
    if dtype is None:
        return None
    info = np.iinfo(dtype)
    return (tensor.scale * (info.min - tensor.zero_point), tensor.scale * (info.max - tensor.zero_point))


def tensor_error(tensor: Tensor, quantized: np.ndarray, reference: np.ndarray) -> TensorError:
    deq = real_values(tensor, quantized).ravel()
    ref = reference.astype(np.float64).ravel()
    if deq.shape != ref.shape:
        raise PipelineError(f"tensor '{tensor.name}' has {deq.size} values, its float twin "
                            f"{ref.size}: the models do not come from the same export",
                            field="float model", fix="pass the model_float.tflite written by the "
                                                     "same `invoke quantize` run")
    err = deq - ref
    sq_err = float(np.dot(err, err))
    sq_ref = float(np.dot(ref, ref))
    rmse = math.sqrt(sq_err / max(err.size, 1))
    if sq_err == 0.0:
        snr = math.inf
    elif sq_ref == 0.0:
        snr = -math.inf
    else:
        snr = 10.0 * math.log10(sq_ref / sq_err)
    norms = math.sqrt(sq_ref) * math.sqrt(float(np.dot(deq, deq)))
    cosine = float(np.dot(ref, deq) / norms) if norms > 0 else None
    rng = representable_range(tensor)
    scale = tensor.scale if rng else None
    # half a step beyond either end still rounds to the end value: rounding, not clipping
    clipped = float(np.mean((ref < rng[0] - scale / 2) | (ref > rng[1] + scale / 2))) if rng else None
    power = sq_ref / max(ref.size, 1)
    rounding = 10.0 * math.log10(power / (scale * scale / 12.0)) if scale and power > 0 else None
    return TensorError(rmse=rmse, rmse_over_scale=rmse / scale if scale else None, snr_db=snr,
                       rounding_snr_db=rounding,
                       cosine=cosine, clipped_fraction=clipped,
                       float_range=(float(ref.min()), float(ref.max())) if ref.size else (0.0, 0.0),
                       calibrated_range=rng, scale=scale,
                       zero_point=tensor.zero_point if rng else None)


@dataclass(frozen=True)
class LayerError:
    op_index: int
    op: str
    layer: OpLayer
    twin: Twin
    error: TensorError | None  # None: no float twin, or an output that is not a real value
    input_snr_db: float | None  # the worst SNR among the op's activation inputs

    @property
    def snr_drop_db(self) -> float | None:
        """What this op adds to the error, in dB of SNR lost against its inputs."""
        if self.error is None or self.input_snr_db is None:
            return None
        return _cap(self.input_snr_db) - _cap(self.error.snr_db)

    @property
    def excess_db(self) -> float | None:
        """How far this op's SNR falls below what rounding its own output would cost on top of
        the error it received (errors add in power). Near 0: the op is as good as its scale
        allows; large: clipping, a coarse weight scale, or a wrong kernel or weight."""
        e = self.error
        if e is None or e.rounding_snr_db is None or self.input_snr_db is None:
            return None
        noise = 10 ** (-_cap(self.input_snr_db) / 10) + 10 ** (-_cap(e.rounding_snr_db) / 10)
        return -10 * math.log10(noise) - _cap(e.snr_db)

    def to_json(self) -> dict[str, Any]:
        e = self.error
        return {"op_index": self.op_index, "op": self.op, "keras_layer": self.layer.keras_layer,
                "layer_class": self.layer.layer_class, "layer_match": self.layer.match,
                "float_twin": self.twin.rule,
                "rmse_over_scale": _round(e.rmse_over_scale) if e else None,
                "snr_db": _db(e.snr_db) if e else None,
                "snr_drop_db": _db(self.snr_drop_db), "excess_db": _db(self.excess_db),
                "cosine": _round(e.cosine, 6) if e else None,
                "clipped_fraction": _round(e.clipped_fraction, 6) if e else None,
                "float_range": [_round(v) for v in e.float_range] if e else None,
                "calibrated_range": [_round(v) for v in e.calibrated_range] if e and e.calibrated_range else None,
                "scale": e.scale if e else None, "zero_point": e.zero_point if e else None}


def _cap(db: float) -> float:
    return max(-SNR_CAP_DB, min(SNR_CAP_DB, db))


def _db(value: float | None) -> float | None:
    """JSON has no infinity: an exact tensor's SNR is reported as null (see `exact`)."""
    if value is None or math.isinf(value) or math.isnan(value):
        return None
    return round(value, 3)


def _round(value: float | None, digits: int = 4) -> float | None:
    if value is None or math.isnan(value):
        return None
    return float(f"{value:.{digits + 2}g}") if abs(value) < 1e-3 else round(value, digits)


def layer_errors(quant: TFLiteModel, float_model: TFLiteModel, quant_tensors: TensorValues,
                 float_tensors: TensorValues, layers: list[OpLayer] | None = None) -> list[LayerError]:
    """Per op of the quantized model, its output against the float twin (in op order)."""
    layers = layers or map_layers(quant)
    op_twin, tensor_twin = match_float_twins(quant, float_model)
    sg = quant.main
    snr_of: dict[int, float] = {}
    for qi, twin in tensor_twin.items():
        if twin.rule == "graph input" and qi in quant_tensors and twin.float_tensor in float_tensors:
            snr_of[qi] = tensor_error(sg.tensors[qi], quant_tensors[qi], float_tensors[twin.float_tensor]).snr_db
    out = []
    for op, layer in zip(sg.operators, layers):
        twin = op_twin[op.index]
        t = op.outputs[0]
        error = None
        real_output = sg.tensors[t].dtype not in ("int32", "int64", "bool") or sg.tensors[t].quantization
        if twin.float_tensor is not None and t in quant_tensors and real_output:
            error = tensor_error(sg.tensors[t], quant_tensors[t], float_tensors[twin.float_tensor])
            snr_of[t] = error.snr_db
        inputs = [snr_of[i] for i in op.inputs if i >= 0 and not sg.tensors[i].is_constant and i in snr_of]
        out.append(LayerError(op.index, op.op, layer, twin, error, min(inputs) if inputs else None))
    return out


def worst_layers(errors: list[LayerError], count: int = DEFAULT_WORST) -> list[dict[str, Any]]:
    """The ops that add the most error beyond their own rounding (`excess_db`; `snr_drop_db`
    for unquantized outputs), one per Keras layer, worst first, with the reason. Ops within
    `MIN_EXCESS_DB` of their rounding limit are left out: an empty list means every op is as
    close to float as its int8 scale allows."""
    def badness(e: LayerError) -> float:
        return e.excess_db if e.excess_db is not None else e.snr_drop_db

    ranked = sorted((e for e in errors if e.snr_drop_db is not None and badness(e) > MIN_EXCESS_DB),
                    key=lambda e: -badness(e))
    seen: set[str | None] = set()
    out = []
    for e in ranked:
        key = e.layer.keras_layer or f"op {e.op_index}"
        if key in seen:
            continue
        seen.add(key)
        out.append({"op_index": e.op_index, "op": e.op, "keras_layer": e.layer.keras_layer,
                    "label": e.layer.label(), "snr_db": _db(e.error.snr_db),
                    "snr_drop_db": _db(e.snr_drop_db), "excess_db": _db(e.excess_db),
                    "rmse_over_scale": _round(e.error.rmse_over_scale),
                    "clipped_fraction": _round(e.error.clipped_fraction, 6), "why": _why(e)})
        if len(out) == count:
            break
    return out


def _why(e: LayerError) -> str:
    err = e.error
    assert err is not None
    if err.clipped_fraction and err.clipped_fraction >= 0.001 and err.calibrated_range:
        lo, hi = err.calibrated_range
        return (f"{100 * err.clipped_fraction:.2f}% of its float values fall outside the calibrated "
                f"range [{lo:.4g}, {hi:.4g}] (float range [{err.float_range[0]:.4g}, "
                f"{err.float_range[1]:.4g}]): they are clipped")
    if err.rmse_over_scale is not None and e.excess_db is not None:
        return (f"its SNR is {e.excess_db:.1f} dB below what rounding to its scale {err.scale:.4g} "
                f"costs (RMS error {err.rmse_over_scale:.2f} steps; 0.29 is pure rounding)")
    return f"adds {e.snr_drop_db:.1f} dB of error"


# --- first divergence between runtimes: pipeline.divergence (verify uses it too) ---------------

# --- running it -------------------------------------------------------------------------------

def model_inputs(model: TFLiteModel, samples: SampleSet) -> list[np.ndarray]:
    """Samples (real values) as each model input takes them: quantized with the input's own
    scale and zero point for integer inputs (int8, uint8, int16 alike)."""
    from ..runtime.litert import quantize_array

    out = []
    for name, t in zip(model.input_names(), model.main.input_tensors()):
        if name not in samples.inputs:
            raise PipelineError(f"the samples have no input '{name}'", path=samples.source,
                                field="--data", fix=f"key the samples by {model.input_names()}")
        x = samples.inputs[name]
        dtype = np.dtype(t.dtype) if t.dtype != "float32" else np.float32
        if np.issubdtype(dtype, np.integer) and t.quantization:
            x = quantize_array(x, dtype, t.scale, t.zero_point)
        out.append(x.astype(dtype, copy=False))
    return out


@dataclass
class Diagnosis:
    """The `diagnose` section of report.json."""

    samples: int
    source: str
    quantized_model: str
    float_model: str
    runtime: str
    layers: list[LayerError]
    worst: list[dict[str, Any]]
    output_snr_db: float | None
    int16x8: dict[str, Any] | None = None
    first_divergence: Divergence | None = None
    runtimes_compared: tuple[str, ...] = ()
    tolerance_lsb: float = 0
    recommendations: list[dict[str, Any]] = field(default_factory=list)
    unmatched_ops: list[int] = field(default_factory=list)
    runtime_error: str | None = None  # why the runtime comparison could not run
    runtime_fallback: str | None = None  # why `runtime` is not LiteRT's reference kernels
    keras_model: str | None = None  # the Keras model that confirmed the layer names
    ran_because: list[str] = field(default_factory=list)  # deploy: the verify checks that failed
    recommendations_measured: bool = False
    recommendations_note: str | None = None  # why they were not measured
    device: dict[str, str] | None = None  # the INFO of the device compared as runtime "device"

    def to_json(self) -> dict[str, Any]:
        return {"samples": self.samples, "source": self.source,
                "quantized_model": self.quantized_model, "float_model": self.float_model,
                "keras_model": self.keras_model, "ran_because": self.ran_because,
                "runtime": self.runtime, "runtime_fallback": self.runtime_fallback,
                "output_snr_db": _db(self.output_snr_db),
                "layers": [e.to_json() for e in self.layers], "worst_layers": self.worst,
                "unmatched_ops": self.unmatched_ops, "int16x8": self.int16x8,
                "runtimes_compared": list(self.runtimes_compared),
                "tolerance_lsb": self.tolerance_lsb, "runtime_error": self.runtime_error,
                "first_divergence": self.first_divergence.to_json() if self.first_divergence else None,
                "recommendations": self.recommendations,
                "recommendations_measured": self.recommendations_measured,
                "recommendations_note": self.recommendations_note, "device": self.device}


def quantization_errors(quant_path: Path, float_path: Path, samples: SampleSet, *,
                        keras: KerasModelLayers | str | Path | None = None,
                        runtime: str = "litert-ref") -> tuple[list[LayerError], TensorValues]:
    """Per-layer float-vs-quantized error of one quantized model (int8 or int16x8), and the
    quantized model's captured tensors (for reuse in the runtime comparison)."""
    quant, float_model = read_model(quant_path), read_model(float_path)
    op_twin, _ = match_float_twins(quant, float_model)
    if all(t.float_tensor is None for t in op_twin.values()):
        raise PipelineError("no op of the quantized model has a float twin in this float model",
                            path=float_path, field="float model",
                            fix=f"pass the model_float.tflite that `invoke quantize` wrote beside "
                                f"{Path(quant_path).name}")
    layers = map_layers(quant, keras)
    q_tensors = capture_tensors(quant_path, model_inputs(quant, samples), runtime)
    f_tensors = capture_tensors(float_path, model_inputs(float_model, samples), "litert")
    return layer_errors(quant, float_model, q_tensors, f_tensors, layers), q_tensors


def output_snr(errors: list[LayerError], model: TFLiteModel) -> float | None:
    """SNR of the model's first output against the float model's."""
    outputs = set(model.main.outputs)
    for e in errors:
        if e.error is not None and model.main.operators[e.op_index].outputs[0] in outputs:
            return e.error.snr_db
    return None


def diagnose(quant_path: Path, float_path: Path, samples: SampleSet, *,
             keras: KerasModelLayers | str | Path | None = None, int16_path: Path | None = None,
             runtimes: tuple[str, str] | None = ("litert-ref", "tflm"), tolerance_lsb: float = 0,
             worst: int = DEFAULT_WORST, device: dict[str, Any] | None = None) -> Diagnosis:
    """Per-layer error float vs quantized (and vs int16x8 when given), the worst layers, and
    the first divergence between `runtimes` (None: skip) on the same samples. The runtime
    "device" is a board over HIL: `device` holds `capture_device_tensors`'s link options
    (port, baud, timeout, retries); a link failure is an error, not a skipped comparison."""
    quant = read_model(quant_path)
    if isinstance(keras, (str, Path)):
        from ..layers import read_keras_layers

        keras = read_keras_layers(keras)
    layers = map_layers(quant, keras)
    reference_runtime, reference_error = "litert-ref", None
    try:
        errors, q_tensors = quantization_errors(quant_path, float_path, samples, keras=keras,
                                                runtime=reference_runtime)
    except RuntimeFailed as exc:
        # LiteRT's reference kernels abort where TFLM's do (a softmax on a tiny input scale);
        # its optimized kernels run the model and round within a step or two of them, so the
        # per-layer error is still measured, on them
        reference_runtime, reference_error = "litert", exc.problem  # the model and the fix are known here
        errors, q_tensors = quantization_errors(quant_path, float_path, samples, keras=keras,
                                                runtime=reference_runtime)
    diagnosis = Diagnosis(
        samples=samples.count, source=samples.source, quantized_model=str(quant_path),
        float_model=str(float_path), keras_model=keras.source if keras else None,
        runtime=reference_runtime, runtime_fallback=reference_error, layers=errors,
        worst=worst_layers(errors, worst), output_snr_db=output_snr(errors, quant),
        unmatched_ops=[e.op_index for e in errors if e.twin.float_tensor is None])
    if int16_path is not None:
        int16 = read_model(int16_path)
        errors16, _ = quantization_errors(int16_path, float_path, samples, keras=keras,
                                          runtime=reference_runtime)
        diagnosis.int16x8 = {"quantized_model": str(int16_path),
                             "output_snr_db": _db(output_snr(errors16, int16)),
                             "layers": [e.to_json() for e in errors16],
                             "worst_layers": worst_layers(errors16, worst)}
    if runtimes:
        diagnosis.runtimes_compared = tuple(runtimes)
        diagnosis.tolerance_lsb = tolerance_lsb
        outputs = {}
        try:
            for name in runtimes:
                if name == DEVICE_RUNTIME:
                    if not device or not device.get("port"):
                        raise DeviceError("the runtime 'device' is a board over serial: no port given",
                                          field="--port", fix="pass --port (the board, or `invoke emulate`)")
                    tensors, diagnosis.device = capture_device_tensors(
                        device["port"], quant_path, model_inputs(quant, samples),
                        **{k: v for k, v in device.items() if k != "port"})
                elif name == "litert-ref" and reference_error:  # it aborted above: not run twice
                    raise RuntimeFailed(reference_error)
                else:
                    tensors = q_tensors if name == reference_runtime else \
                        capture_tensors(quant_path, model_inputs(quant, samples), name)
                outputs[name] = op_outputs(quant, tensors)
        except DeviceError:
            raise
        except PipelineError as exc:  # e.g. TFLM lacks an op: the float-vs-int8 part stands
            # a runtime that aborts on the model: what failed is enough (the model is this one,
            # and the check stage names the op and its fix)
            diagnosis.runtime_error = exc.problem if isinstance(exc, RuntimeFailed) else exc.message
            return diagnosis
        a, b = runtimes
        diagnosis.first_divergence = first_divergence(outputs[a], outputs[b], quant,
                                                      tolerance=tolerance_lsb, names=(a, b),
                                                      layers=layers)
    return diagnosis


# --- registry entry ----------------------------------------------------------------------------
#
# `invoke deploy` diagnoses when a verify check failed (or with --diagnose): which layer loses
# the accuracy, and where LiteRT and TFLM part ways. Verify's result is read through its
# `checks` only ({check, passed, detail}): a failed check that names the float model or
# accuracy is a quantization loss, which is worth measuring remedies for.

FLOAT_MODEL = "model_float.tflite"  # what `invoke quantize` writes beside the int8 model
_QUANTIZATION_LOSS_WORDS = ("accuracy", "float")
RECOMMEND_SLOW_NOTE = ("not measured: pass --recommend (each option re-runs the TF converter and "
                       "is measured on the evaluation samples; slow)")


def failed_verify_checks(job: Job) -> list[dict[str, Any]]:
    """The failed checks of the deploy's target (verify tags each check with the target it
    judges; `deploy --target edgetpu` is not diagnosed for a TFLM comparison)."""
    target = job.request.target
    return [c for c in (job.results.get("verify") or {}).get("checks", [])
            if not c.get("passed") and (target == "all" or c.get("target", "all") in (target, "all"))]


def _quantization_loss(checks: list[dict[str, Any]]) -> bool:
    return any(w in str(c.get("check", "")).lower() for c in checks for w in _QUANTIZATION_LOSS_WORDS)


def float_model_of(job: Job) -> Path:
    return job.model.parent / FLOAT_MODEL


def _diagnose_not_applicable(job: Job) -> str | None:
    if not job.request.diagnose:
        if "verify" not in job.results:
            return "verify did not run"
        if not failed_verify_checks(job):
            return "every verify check passed; --diagnose diagnoses anyway"
    if not float_model_of(job).is_file():
        return f"no {FLOAT_MODEL} beside {job.model.name}: the per-layer error needs the float model"
    return None


def _measures_remedies(job: Job) -> bool:
    return job.request.diagnose_options.recommend or _quantization_loss(failed_verify_checks(job))


def _sample_spec(job: Job) -> str | None:
    r = job.request
    return r.eval_data or r.data


def _input_specs(float_path: Path) -> list[TensorSpec]:
    model = read_model(float_path)
    return [TensorSpec.from_tensor(t, n) for t, n in zip(model.main.input_tensors(), model.input_names())]


def _load(job: Job, spec: str | None, part: str, limit: int | None, option: str) -> SampleSet:
    """Samples from `spec`, else the demo's `part` split for the demo's model."""
    from .. import demo
    from ..data import load_samples

    inputs = _input_specs(float_model_of(job))
    if spec:
        return load_samples(spec, inputs, limit=limit, option=option)
    if demo.is_demo_model(job.model, [t.sample_shape for t in inputs]):
        return demo.split_samples(part, inputs, limit=limit, option=option)
    raise PipelineError("no samples to diagnose with", path=job.model, field=option,
                        fix="pass --data samples.npz (labels as 'y' for accuracy)")


def _tolerance(job: Job) -> float:
    o = job.request.diagnose_options
    return o.tolerance_lsb if o.tolerance_lsb is not None else job.request.thresholds.max_lsb_litert_vs_tflm


def _remedy_source(job: Job) -> str:
    """The model the remedies re-convert: deploy's --model; for a task, the demo or
    --keras-model."""
    r = job.request
    if job.model_path is None or r.model == "demo":
        return r.model
    if r.keras_model:
        return r.keras_model
    raise PipelineError("--recommend re-converts the Keras model, and none was given", path=job.model,
                        field="--keras-model", fix="pass the .keras/.h5 file the model was quantized from")


def _calibration(job: Job) -> tuple[SampleSet, int]:
    """The samples quantize calibrated on (all of them: one remedy uses more), and how many it
    used."""
    r = job.request
    if job.model_path is None:
        return _load(job, r.data, "calibration", None, "--data"), r.samples
    earlier = (job.results.get("quantize") or {}).get("calibration") or {}
    spec = r.diagnose_options.calibration_data
    if spec is None and earlier.get("source") and Path(str(earlier["source"])).exists():
        spec = str(earlier["source"])
    samples = _load(job, spec, "calibration", None, "--calibration-data")
    return samples, int(earlier.get("samples") or min(samples.count, 200))


def _io_type(model_path: Path) -> str:
    dtype = read_model(model_path).main.input_tensors()[0].dtype
    return dtype if dtype in ("int8", "uint8") else "int8"


def _diagnose_job(job: Job) -> Diagnosis:
    from ..recommend import diagnose_recommendations, recommendations

    r, o = job.request, job.request.diagnose_options
    if not float_model_of(job).is_file():
        raise PipelineError(f"no {FLOAT_MODEL} beside the model: the per-layer error compares with the "
                            "float model of the same export", path=float_model_of(job), field="--model",
                            fix="diagnose the model_int8.tflite in the folder `invoke quantize` wrote")
    failed = failed_verify_checks(job)
    samples = _load(job, _sample_spec(job), "test", o.samples, "--data")
    keras = keras_model_of(job)
    device = {"port": r.port, "baud": r.baud, "timeout": r.hil_timeout_s, "retries": r.hil_retries} \
        if r.port else None
    diagnosis = diagnose(job.model, float_model_of(job), samples, keras=keras, int16_path=o.int16_model,
                         runtimes=o.runtimes, tolerance_lsb=_tolerance(job), worst=o.worst, device=device)
    diagnosis.ran_because = [f"verify: {c['check']}: {c.get('detail', '')}" for c in failed]
    if _measures_remedies(job):
        calibration, used = _calibration(job)
        evaluation = _load(job, _sample_spec(job), "test", r.verify_samples, "--data")
        _, diagnosis.recommendations = diagnose_recommendations(
            diagnosis, _remedy_source(job), calibration, evaluation, calibration_used=used,
            io_type=_io_type(job.model), cache_dir=r.out / ".cache")
        diagnosis.recommendations_measured = True
    else:
        diagnosis.recommendations = recommendations(diagnosis.worst, None)
        diagnosis.recommendations_note = RECOMMEND_SLOW_NOTE
    return diagnosis


def _diagnose_key(job: Job) -> dict[str, Any]:
    from .. import demo
    from ..layers import TABLE_PATH as LAYER_TABLE

    r, o = job.request, job.request.diagnose_options
    if DEVICE_RUNTIME in (o.runtimes or ()):
        return None  # a device is not an input we can hash: never reuse its diagnosis
    key = {"model": content_hash(job.model), "float": content_hash(float_model_of(job)),
           "keras": content_hash(keras_model_of(job)), "data": content_hash(_sample_spec(job)),
           "samples": o.samples, "int16": content_hash(o.int16_model), "runtimes": o.runtimes,
           "tolerance": _tolerance(job), "worst": o.worst, "layer_table": content_hash(LAYER_TABLE),
           "failed_checks": [c.get("check") for c in failed_verify_checks(job)],
           "tools": [package_version("ai-edge-litert"), package_version("tflite-micro")]}
    if _measures_remedies(job):
        source = r.model if job.model_path is None else (r.keras_model or r.model)
        key["remedies"] = {
            "source": f"demo-v{demo.DEMO_VERSION}" if source == "demo" else content_hash(source),
            "calibration": content_hash(r.data if job.model_path is None else o.calibration_data),
            "used": r.samples, "evaluation": r.verify_samples,
            "tf": package_version("tensorflow-cpu", "tensorflow")}
    return key


def _diagnose_status(job: Job, result: dict[str, Any]) -> tuple[str, str] | None:
    because = result.get("ran_because") or []
    if because:
        return "ran", f"{len(because)} verify check(s) failed"
    return None


STAGE = Stage("diagnose", run=_diagnose_job, cache_key=_diagnose_key,
              not_applicable=_diagnose_not_applicable, status=_diagnose_status, explains_only=True)
