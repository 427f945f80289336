"""What to do about a quantization loss, each option measured by running the converter again.

Every candidate is converted from the same fixed-batch SavedModel export as the baseline
(int8, per-channel weights, the calibration samples `invoke quantize` used), in the same run,
and evaluated on the same samples with LiteRT's built-in kernels; the gain is the measured
difference, never an estimate. Each option says which targets it keeps: int16x8 activations
run on TFLite Micro only (the Edge TPU has no int16 kernels); a layer kept in float runs on
TFLite Micro's float kernels (the Edge TPU compiler would leave that op, and what depends on
it, to the CPU); per-tensor weights and other calibration samples keep both.

The converter call mirrors `pipeline.stages.quantize._convert` and adds what it lacks: the
`_experimental_disable_per_channel` switch, and for a float layer the converter's own two
steps run apart (`_experimental_calibrate_only`, then `mlir_quantize` with `denylisted_nodes`,
the op output names that stay float: what `QuantizationDebugger` uses for selective
quantization). `_convert` could take `per_channel` and `float_nodes` arguments instead.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data import SampleSet
from .errors import PipelineError

TARGETS_INT8 = ("edgetpu", "tflm")
TARGETS_INT16X8 = ("tflm",)
TARGETS_FLOAT_LAYER = ("tflm",)
BASELINE = "int8, per-channel weights"
CLIPPING_WORTH_A_LOOK = 0.01  # share of a layer's float values outside its calibrated range


@dataclass(frozen=True)
class Variant:
    """One converter setting to measure."""

    name: str
    description: str
    mode: str  # int8 | int16x8
    targets: tuple[str, ...]
    per_channel: bool = True
    calibration: SampleSet | None = None  # None: the baseline's calibration samples
    float_nodes: tuple[str, ...] = ()  # op output tensor names to keep in float


@dataclass(frozen=True)
class Measurement:
    accuracy: float | None  # top-1 against the labels, when labelled
    top1_agreement: float  # with the float model
    output_snr_db: float  # quantized output against the float output, all samples pooled

    def to_json(self) -> dict[str, Any]:
        return {"accuracy": _r(self.accuracy), "top1_agreement": _r(self.top1_agreement),
                "output_snr_db": _r(self.output_snr_db)}


@dataclass(frozen=True)
class Remedy:
    name: str
    description: str
    targets: tuple[str, ...]
    settings: dict[str, Any]
    measured: Measurement | None
    error: str | None = None  # the converter refused this variant
    model: bytes = field(default=b"", repr=False, compare=False)  # the converted variant

    def gain(self, baseline: Measurement) -> dict[str, float | None]:
        if self.measured is None:
            return {"accuracy_points": None, "output_snr_db": None}
        acc = None
        if self.measured.accuracy is not None and baseline.accuracy is not None:
            acc = round(100 * (self.measured.accuracy - baseline.accuracy), 3)
        return {"accuracy_points": acc,
                "output_snr_db": _r(self.measured.output_snr_db - baseline.output_snr_db)}


@dataclass
class RemedyReport:
    baseline: Measurement
    float_accuracy: float | None
    samples: int
    source: str
    remedies: list[Remedy] = field(default_factory=list)

    def ranked(self) -> list[Remedy]:
        """Measured remedies, best first: by accuracy gain when labelled, else output SNR gain."""
        def key(r: Remedy):
            g = r.gain(self.baseline)
            return (g["accuracy_points"] if g["accuracy_points"] is not None else -math.inf,
                    g["output_snr_db"] if g["output_snr_db"] is not None else -math.inf)
        return sorted((r for r in self.remedies if r.measured), key=key, reverse=True) + \
            [r for r in self.remedies if not r.measured]

    def to_json(self) -> list[dict[str, Any]]:
        out = []
        for r in self.ranked():
            out.append({"option": r.name, "description": r.description, "targets": list(r.targets),
                        "settings": r.settings, "baseline": self.baseline.to_json(),
                        "measured": r.measured.to_json() if r.measured else None,
                        "gain": r.gain(self.baseline), "error": r.error,
                        "evaluated_on": {"samples": self.samples, "source": self.source}})
        return out


def default_variants(calibration: SampleSet, used: int) -> list[Variant]:
    """int16x8 for the whole model, per-tensor weights, and other calibration samples when the
    calibration source has more than were used (all of them; a disjoint set of the same size)."""
    variants = [
        Variant("int16x8", "int16 activations, int8 weights for the whole model", "int16x8",
                TARGETS_INT16X8),
        Variant("per-tensor weights", "one weight scale per tensor instead of per output channel "
                "(converter `_experimental_disable_per_channel`)", "int8", TARGETS_INT8,
                per_channel=False),
    ]
    if calibration.count > used:
        variants.append(Variant(f"calibration: all {calibration.count} samples",
                                f"calibrate on all {calibration.count} samples instead of {used}",
                                "int8", TARGETS_INT8, calibration=calibration))
    if calibration.count >= 2 * used:
        variants.append(Variant(f"calibration: other {used} samples",
                                f"calibrate on samples {used}-{2 * used - 1} instead of 0-{used - 1}"
                                " (how much the choice of samples matters)", "int8", TARGETS_INT8,
                                calibration=_slice(calibration, used, 2 * used)))
    return variants


def float_layer_variants(model, layers, keras_layers: list[str]) -> list[Variant]:
    """One variant per Keras layer (from the diagnosis's worst layers) that keeps every op of
    that layer in float; `model` is the quantized TFLiteModel, `layers` its `map_layers`."""
    out = []
    for name in keras_layers:
        ops = [r.op_index for r in layers if r.keras_layer == name and r.op not in ("QUANTIZE", "DEQUANTIZE")]
        nodes = tuple(model.main.tensors[model.main.operators[k].outputs[0]].name for k in ops)
        if nodes:
            out.append(Variant(f"float layer: {name}", f"keep layer `{name}` ({len(ops)} op(s)) in "
                               "float32 between DEQUANTIZE and QUANTIZE", "int8",
                               TARGETS_FLOAT_LAYER, float_nodes=nodes))
    return out


def measure_remedies(model: str, calibration: SampleSet, evaluation: SampleSet, *,
                     calibration_used: int | None = None, io_type: str = "int8",
                     variants: list[Variant] | None = None,
                     cache_dir: Path = Path("build/.cache")) -> RemedyReport:
    """Convert the baseline and every variant from `model` (a .keras/.h5/SavedModel path or
    `demo`) and measure each on `evaluation`."""
    from . import demo
    from .runtime.convert import export_fixed_batch
    from .runtime.tf import import_tensorflow
    from .stages.quantize import resolve_model_source

    used = min(calibration_used or calibration.count, calibration.count)
    baseline_calibration = _slice(calibration, 0, used)
    variants = default_variants(calibration, used) if variants is None else variants
    source = resolve_model_source(model, cache_dir)
    tf = import_tensorflow()
    with tempfile.TemporaryDirectory(prefix="remedies-") as tmp:
        model_file = demo.demo_model_path(source.path.parent) if source.is_demo else source.path
        saved = export_fixed_batch(tf, source.kind, model_file, Path(tmp) / "saved_model")
        float_bytes = convert_variant(tf, saved, "float")
        float_out = _run(float_bytes, evaluation)
        float_accuracy = _accuracy(float_out, evaluation)
        baseline = _measure(convert_variant(tf, saved, "int8", io_type=io_type,
                                            calibration=baseline_calibration), evaluation, float_out)
        report = RemedyReport(baseline=baseline, float_accuracy=float_accuracy,
                              samples=evaluation.count, source=evaluation.source)
        for v in variants:
            settings = {"mode": v.mode, "per_channel": v.per_channel,
                        "calibration_samples": (v.calibration or baseline_calibration).count,
                        "float_nodes": list(v.float_nodes)}
            try:
                data = convert_variant(tf, saved, v.mode, io_type=io_type if v.mode == "int8" else None,
                                       calibration=v.calibration or baseline_calibration,
                                       per_channel=v.per_channel, float_nodes=v.float_nodes)
                measured, error = _measure(data, evaluation, float_out), None
            except PipelineError as exc:
                data, measured, error = b"", None, exc.problem
            report.remedies.append(Remedy(v.name, v.description, v.targets, settings, measured,
                                          error, data))
    return report


def convert_variant(tf, saved: Path, mode: str, *, io_type: str | None = None,
                    calibration: SampleSet | None = None, per_channel: bool = True,
                    float_nodes: tuple[str, ...] = ()) -> bytes:
    """The TF converter as `pipeline.stages.quantize._convert` calls it, plus the per-channel switch
    and, for int8, ops to keep in float (by output tensor name)."""
    from .runtime.tf import captured_stderr

    if float_nodes and mode != "int8":
        raise PipelineError(f"float layers need --mode int8, not {mode}", field="float_nodes",
                            fix="keep layers in float only in an int8 model")

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    if mode != "float":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter._experimental_disable_per_channel = not per_channel
    if calibration is not None and mode != "float":
        converter.representative_dataset = lambda: (calibration.batch(i) for i in range(calibration.count))
    if mode == "int8":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = getattr(tf, io_type or "int8")
    elif mode == "int16x8":
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        converter.inference_input_type = converter.inference_output_type = tf.int16
    try:
        with captured_stderr():
            if not float_nodes:
                return converter.convert()
            from tensorflow.lite.python import convert as tf_convert

            converter._experimental_calibrate_only = True
            calibrated = converter.convert()
            io = getattr(tf, io_type or "int8")
            return tf_convert.mlir_quantize(calibrated, disable_per_channel=not per_channel,
                                            fully_quantize=True, input_data_type=io,
                                            output_data_type=io, denylisted_nodes=list(float_nodes))
    except Exception as exc:  # the converter raises ConverterError, RuntimeError, ValueError...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise PipelineError(f"the TF converter failed ({mode}, per_channel={per_channel}): {first}",
                            field="--model") from None


def _run(data: bytes, samples: SampleSet) -> np.ndarray:
    from .runtime.litert import LiteRTModel

    return LiteRTModel(data, "variant", delegates=False).run(samples)[0].reshape(samples.count, -1)


def _measure(data: bytes, samples: SampleSet, float_out: np.ndarray) -> Measurement:
    out = _run(data, samples)
    err = out.astype(np.float64) - float_out
    sq_err, sq_ref = float(np.sum(err * err)), float(np.sum(float_out.astype(np.float64) ** 2))
    snr = math.inf if sq_err == 0 else 10 * math.log10(sq_ref / sq_err) if sq_ref > 0 else -math.inf
    return Measurement(accuracy=_accuracy(out, samples),
                       top1_agreement=float(np.mean(out.argmax(1) == float_out.argmax(1))),
                       output_snr_db=snr)


def _accuracy(out: np.ndarray, samples: SampleSet) -> float | None:
    if samples.labels is None or out.shape[1] < 2:
        return None
    return float(np.mean(out.argmax(1) == samples.labels))


def _slice(samples: SampleSet, start: int, stop: int) -> SampleSet:
    return SampleSet({k: v[start:stop] for k, v in samples.inputs.items()},
                     None if samples.labels is None else samples.labels[start:stop],
                     f"{samples.source} [{start}:{stop}]", samples.class_names)


def _r(value: float | None, digits: int = 4) -> float | None:
    if value is None or math.isnan(value) or math.isinf(value):
        return None
    return round(value, digits)


def recommendations(worst: list[dict[str, Any]], report: RemedyReport | None) -> list[dict[str, Any]]:
    """The report's `recommendations`: the measured options best first, each naming the
    layers it is meant for and the targets it keeps; then what the measurements point at but
    a converter flag cannot fix (a layer whose float range is clipped), marked unmeasured."""
    layers = [w["keras_layer"] or f"op {w['op_index']}" for w in worst]
    out = []
    if report is not None:
        for item in report.to_json():
            item["worst_layers"] = layers
            item["kind"] = "measured"
            out.append(item)
    for w in worst:
        clipped = w.get("clipped_fraction") or 0.0
        if clipped >= CLIPPING_WORTH_A_LOOK:
            out.append({"kind": "not measured", "option": f"widen the range of `{w['keras_layer']}`",
                        "description": f"{w['label']}: {w['why']}. Calibrate on samples that reach "
                                       "that range (measured above when more samples exist), or, "
                                       "for an unbounded activation (ReLU, linear) with a long "
                                       "tail, bound it (ReLU6) and retrain",
                        "targets": list(TARGETS_INT8), "worst_layers": [w["keras_layer"]]})
    return out


def diagnose_recommendations(diagnosis, model: str, calibration: SampleSet, evaluation: SampleSet,
                             *, calibration_used: int | None = None, float_layers: int = 1,
                             io_type: str = "int8", cache_dir: Path = Path("build/.cache"),
                             ) -> tuple[RemedyReport, list[dict[str, Any]]]:
    """The default variants plus keeping each of the `float_layers` worst layers of a
    `pipeline.stages.diagnose.Diagnosis` in float, measured; and the report's `recommendations`."""
    from .tflite_model import read_model

    quant = read_model(diagnosis.quantized_model)
    used = min(calibration_used or calibration.count, calibration.count)
    worst = [w["keras_layer"] for w in diagnosis.worst[:float_layers] if w["keras_layer"]]
    variants = default_variants(calibration, used) + \
        float_layer_variants(quant, [e.layer for e in diagnosis.layers], worst)
    report = measure_remedies(model, calibration, evaluation, calibration_used=used,
                              io_type=io_type, variants=variants, cache_dir=cache_dir)
    return report, recommendations(diagnosis.worst, report)
