"""Float Keras/SavedModel -> full-integer TFLite with the TF converter, and what it cost.

Every model is first exported as a SavedModel whose batch dimension is fixed to 1: MCUs and the
Edge TPU run one sample at a time, and a dynamic batch makes the converter emit
SHAPE/STRIDED_SLICE/PACK on int32 tensors for every Flatten, which neither target can map.
TensorFlow runs in a child process (`pipeline.runtime.convert`: its calibrator can crash);
this process loads the data, evaluates, and writes nothing until every step has passed. A model
with ops left in float is written (so `check` can show the rest) and reported not deployable.
"""

from __future__ import annotations

import logging
import tempfile
import zipfile
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from .. import demo
from ..data import SampleSet, load_samples, precheck_data_spec
from ..errors import PipelineError
from ..evaluation import parse_task_overrides
from ..fileio import safe_name, write_bytes_atomic
from ..runtime.litert import LiteRTModel, litert_version
from ..model import (IO_TYPES, MODES, Evaluation, QuantizeResult, TensorSpec, WeightQuantization,
                    quantized_file_name)
from ..fileio import check_output_folder, checked_input, mark_output_folder
from ..tflite_model import TFLiteModel, parse_model
from ..cache import content_hash
from ..versions import package_version
from .base import Job, Stage

log = logging.getLogger(__name__)

DEFAULT_SAMPLES = 200  # the converter docs recommend 100-500 representative samples
FLOAT_MODEL_FILE = "model_float.tflite"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_CALIBRATED_MODES = {"int8", "int16x8"}


@dataclass(frozen=True)
class QuantizeRequest:
    model: str = demo.DEMO_NAME
    data: str | None = None
    eval_data: str | None = None
    mode: str = "int8"
    io_type: str | None = None  # None: int8 for --mode int8
    samples: int = DEFAULT_SAMPLES
    name: str | None = None
    out: Path = field(default_factory=lambda: Path("build"))
    tasks: tuple[str, ...] = ()  # --task OUTPUT=TASK overrides of the detected output tasks


@dataclass(frozen=True)
class ModelSource:
    kind: str  # demo | keras | h5 | savedmodel
    path: Path

    @property
    def is_demo(self) -> bool:
        return self.kind == "demo"


def check_options(req: QuantizeRequest) -> str | None:
    """Validate the cheap things before TensorFlow is imported; returns the model I/O type."""
    if req.mode not in MODES:
        raise PipelineError(f"unknown mode '{req.mode}'", field="--mode",
                            fix=f"use one of {', '.join(MODES)}")
    if req.io_type is not None and req.io_type not in IO_TYPES:
        raise PipelineError(f"unsupported model I/O type '{req.io_type}'", field="--io-type",
                            fix="use int8 (TFLM, current Edge TPU compilers) or uint8 (older Edge TPU tool chains)")
    if req.io_type is not None and req.mode != "int8":
        raise PipelineError(f"--io-type applies to --mode int8 only (--mode {req.mode} keeps "
                            f"{'int16' if req.mode == 'int16x8' else 'float32'} I/O)",
                            field="--io-type", fix="drop --io-type or use --mode int8")
    if req.samples < 1:
        raise PipelineError(f"--samples must be at least 1, got {req.samples}", field="--samples",
                            fix="use 100-500 samples")
    return {"int8": req.io_type or "int8", "int16x8": "int16"}.get(req.mode)


def resolve_model_source(spec: str, cache_dir: Path) -> ModelSource:
    if spec == demo.DEMO_NAME:
        return ModelSource("demo", demo.cached_model_path(cache_dir))  # trained on first use
    path = Path(spec)
    fix = "pass a .keras or .h5 file, a SavedModel directory, or 'demo'"
    # exists (a symlink loop named as one), a folder or a regular file (a FIFO would block)
    checked_input(path, option="--model", max_bytes=None, kind="Keras model", fix=fix, allow_dir=True)
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise PipelineError("directory is not a SavedModel (no saved_model.pb)", path=path,
                                field="--model", fix=fix)
        return ModelSource("savedmodel", path)
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise PipelineError(f"cannot read: {exc.strerror}", path=path, field="--model", fix=fix) from None
    if path.suffix == ".keras" and zipfile.is_zipfile(path):
        return ModelSource("keras", path)
    if path.suffix in (".h5", ".hdf5") and head == _HDF5_MAGIC:
        return ModelSource("h5", path)
    if path.suffix == ".tflite":
        raise PipelineError("is already a TFLite model", path=path, field="--model",
                            fix="quantize from the Keras/SavedModel it was converted from, or pass it to `invoke check`")
    raise PipelineError(f"not a Keras model (a {path.suffix or 'suffix-less'} file that is not a "
                        ".keras zip or an HDF5 .h5)", path=path, field="--model", fix=fix)


def quantize(req: QuantizeRequest) -> QuantizeResult:
    io_type = check_options(req)
    overrides = parse_task_overrides(req.tasks)
    out_dir = check_output_folder(req.out / safe_name(req.name or Path(req.model).stem))
    name = out_dir.name
    source = resolve_model_source(req.model, req.out / ".cache")
    precheck_data_spec(req.data, "--data")
    precheck_data_spec(req.eval_data, "--eval-data")
    # absolute before it reaches the converter process, which runs in the package's folder
    model_file = (demo.demo_model_path(source.path.parent) if source.is_demo else source.path).absolute()
    keras = _keras_layers(model_file, source)
    state: dict[str, Any] = {}

    def calibration_for(float_bytes: bytes, keras_inputs: list[str] | None) -> SampleSet | None:
        float_model = parse_model(float_bytes, source="float model")
        state["inputs"] = [TensorSpec.from_tensor(t, n)
                           for t, n in zip(float_model.main.input_tensors(), float_model.input_names())]
        state["order"] = keras_inputs
        state["calibration"] = (_calibration_set(req, source, state["inputs"], keras_inputs)
                                if req.mode in _CALIBRATED_MODES else None)
        return state["calibration"]

    from ..runtime.convert import CustomObjectError, convert_in_child, export_here, registered_here

    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        options = dict(mode=req.mode, io_type=io_type, calibration=calibration_for, error_path=source.path)
        try:
            converted = convert_in_child(Path(tmp) / "child", kind="keras" if source.is_demo else source.kind,
                                         path=model_file, **options)
        except CustomObjectError:
            if not registered_here(model_file):
                raise
            # a Python caller that registered the model's custom layers: export here, convert there
            info = export_here(model_file, Path(tmp) / "exported")
            converted = convert_in_child(Path(tmp) / "again", kind="exported", path=Path(tmp) / "exported",
                                         info=info, **options)
    float_bytes, quant_bytes = converted.float_bytes, converted.quant_bytes
    inputs, calibration = state["inputs"], state["calibration"]
    quant_model = parse_model(quant_bytes, source=f"{req.mode} model")
    _check_io(quant_model, req.mode, io_type, source)
    from ..layers import map_layers

    op_layers = map_layers(quant_model, keras)
    fixes = _layer_fixes(quant_model, req.mode, keras, op_layers)

    eval_set = _evaluation_set(req, source, inputs, calibration, converted.keras_inputs)
    evaluation = (_evaluate(float_bytes, quant_bytes, eval_set, keras_outputs=converted.keras_outputs,
                            overrides=overrides) if eval_set else None)
    result = QuantizeResult(
        name=name, mode=req.mode, io_type=io_type,
        source_model=demo.DEMO_NAME if source.is_demo else str(source.path),
        output_dir=out_dir, float_model=out_dir / FLOAT_MODEL_FILE,
        quantized_model=out_dir / quantized_file_name(req.mode),
        float_bytes=len(float_bytes), quantized_bytes=len(quant_bytes),
        inputs=tuple(TensorSpec.from_tensor(t, n) for t, n in
                     zip(quant_model.main.input_tensors(), quant_model.input_names())),
        outputs=tuple(TensorSpec.from_tensor(t, n) for t, n in
                      zip(quant_model.main.output_tensors(), quant_model.output_names())),
        weights=weight_quantization(quant_model),
        calibration=_calibration_summary(req, calibration),
        evaluation=evaluation,
        labels=(eval_set.class_names if eval_set and eval_set.class_names
                else demo.LABELS if source.is_demo else None),
        tool_versions={"tensorflow": converted.tensorflow, "keras": version("keras"),
                       "litert": litert_version()},
        keras_inputs=tuple(converted.keras_inputs) if converted.keras_inputs is not None else None,
        keras_outputs=tuple(converted.keras_outputs) if converted.keras_outputs is not None else None,
        float_ops=tuple(f.to_json() for f in fixes if f.in_float),
        layer_fixes=tuple(f.to_json() for f in fixes),
        rewrites=tuple(converted.rewrites),
        quantizer=converted.quantizer,
        op_layers=tuple({"op_index": o.op_index, "op": o.op, "keras_layer": o.keras_layer,
                         "layer_class": o.layer_class} for o in op_layers),
    )
    mark_output_folder(out_dir)
    write_bytes_atomic(result.float_model, float_bytes)
    write_bytes_atomic(result.quantized_model, quant_bytes)
    return result


def _keras_layers(model_file: Path, source: ModelSource):
    """The Keras model's layer list (read from its config, not loaded), for naming ops."""
    if source.kind == "savedmodel":
        return None
    from ..layers import read_keras_layers

    try:
        return read_keras_layers(model_file, option="--model")
    except PipelineError:
        return None  # the child's load says what is wrong with the file


def _check_io(model: TFLiteModel, mode: str, io_type: str | None, source: ModelSource) -> None:
    if mode not in _CALIBRATED_MODES:
        return
    sg = model.main
    for t in sg.input_tensors() + sg.output_tensors():
        if t.dtype != io_type:
            raise PipelineError(f"the converter produced {t.dtype} I/O tensor '{t.name}', asked {io_type}",
                                path=source.path, field="--io-type",
                                fix="report this: the converter ignored inference_input_type")


def _layer_fixes(model: TFLiteModel, mode: str, keras, op_layers):
    """Ops the converter left in float (it does so without raising: a DEQUANTIZE/op/QUANTIZE
    sandwich) and ops no target has a kernel for, each with its Keras layer and the fix. The
    model is still written: `check` shows what else is wrong, and TFLM can run it as a hybrid."""
    if mode not in _CALIBRATED_MODES:
        return []
    from ..layer_fixes import layer_fixes

    return layer_fixes(model, op_layers, keras)


def weight_quantization(model: TFLiteModel) -> tuple[WeightQuantization, ...]:
    """Constant integer tensors with quantization: the weights, and how finely they are scaled."""
    out = []
    for t in model.main.tensors:
        if t.is_constant and t.quantization and t.dtype in ("int8", "uint8", "int4", "int16"):
            q = t.quantization
            out.append(WeightQuantization(
                tensor=t.name, shape=t.shape, dtype=t.dtype,
                granularity="per-channel" if q.per_channel else "per-tensor",
                channels=len(q.scales), axis=q.axis if q.per_channel else None))
    return tuple(out)


def _calibration_set(req: QuantizeRequest, source: ModelSource, inputs, keras_inputs=None) -> SampleSet:
    if req.data is None:
        if not source.is_demo:
            raise PipelineError(f"--mode {req.mode} needs representative data to calibrate activations",
                                field="--data",
                                fix="pass --data samples.npy|samples.npz|image_dir|module:function")
        samples = demo.split_samples("calibration", inputs, limit=req.samples)
    else:
        samples = load_samples(req.data, inputs, limit=req.samples, tuple_order=keras_inputs)
    if samples.count < req.samples:
        log.warning("%s has %d samples, fewer than --samples %d: calibrating with %d",
                    samples.source, samples.count, req.samples, samples.count)
    return samples


def _calibration_summary(req: QuantizeRequest, samples: SampleSet | None) -> dict:
    if samples is None:
        return {"source": None, "samples": 0, "requested": None,
                "note": f"--mode {req.mode} does not calibrate activations"}
    return {"source": samples.source, "samples": samples.count, "requested": req.samples}


def _evaluation_set(req, source: ModelSource, inputs, calibration, keras_inputs=None) -> SampleSet | None:
    if req.eval_data:
        return load_samples(req.eval_data, inputs, option="--eval-data", tuple_order=keras_inputs)
    if source.is_demo:
        return demo.split_samples("test", inputs, option="--eval-data")
    return calibration  # unlabelled: agreement only


def _evaluate(float_bytes: bytes, quant_bytes: bytes, samples: SampleSet, *, keras_outputs=None,
              overrides=None) -> Evaluation:
    """Every output with the metrics of its task (`pipeline.evaluation`), float (LiteRT default
    kernels) against quantized (LiteRT's built-in kernels without delegates: what the Edge TPU's
    CPU side runs; XNNPACK's int8 kernels round differently)."""
    from ..evaluation import describe_outputs, output_metrics, primary_accuracy

    quant_model = parse_model(quant_bytes, source="quantized model")
    specs = describe_outputs(quant_model, samples.label_arrays(), keras_outputs=keras_outputs, overrides=overrides)
    float_out = dict(zip(*_named(LiteRTModel(float_bytes, "float model"), samples)))
    quant_out = dict(zip(*_named(LiteRTModel(quant_bytes, "quantized model", delegates=False), samples)))
    labels = samples.label_arrays()
    outputs, metrics = [], {}
    for spec in specs:
        m = output_metrics(spec, float_out[spec.name], quant_out[spec.name],
                           labels.get(spec.labels_key) if spec.labels_key else None, samples.inputs,
                           samples.class_names)
        metrics[spec.name] = m
        outputs.append({**spec.to_json(), "metrics": m})
    diffs = np.concatenate([np.abs(float_out[s.name] - quant_out[s.name]).ravel() for s in specs])
    first = next((s for s in specs if s.task == "classification"), None)
    fm = metrics[first.name] if first else {}
    return Evaluation(
        samples=samples.count, source=samples.source, labelled=fm.get("accuracy") is not None,
        interpreter=litert_version(),
        float_accuracy=fm.get("accuracy_float"), quantized_accuracy=primary_accuracy(metrics, specs),
        top1_agreement=fm.get("top1_agreement"),
        max_abs_error=round(float(diffs.max()), 6), mean_abs_error=round(float(diffs.mean()), 6),
        outputs=tuple(outputs))


def _named(model: LiteRTModel, samples: SampleSet) -> tuple[list[str], list[np.ndarray]]:
    return model.output_names(), model.run(samples)


# --- registry entry ----------------------------------------------------------------------------

def _quantize_key(job: Job) -> dict[str, Any]:
    r = job.request
    model = (f"demo-v{demo.DEMO_VERSION}-{package_version('keras')}" if r.model == demo.DEMO_NAME
             else content_hash(r.model))
    return {"model": model, "data": content_hash(r.data), "eval": content_hash(r.eval_data), "mode": r.mode,
            "io_type": r.io_type, "samples": r.samples, "tasks": list(r.tasks),
            "tools": [package_version("tensorflow-cpu", "tensorflow"), package_version("ai-edge-litert")]}


def _quantize_job(job: Job) -> QuantizeResult:
    r = job.request
    return quantize(QuantizeRequest(model=r.model, data=r.data, eval_data=r.eval_data, mode=r.mode,
                                    io_type=r.io_type, samples=r.samples, name=r.name, out=r.out, tasks=r.tasks))


def quantize_problems(job: Job, result: dict[str, Any]) -> list[str]:
    """Ops left in float: not a full-integer deployment on either target (TFLM can run the model
    as a float/int8 hybrid: verify measures it; the Edge TPU maps nothing after the first)."""
    floats = result.get("float_ops") or []
    if not floats:
        return []
    first = floats[0]
    more = f" (+{len(floats) - 1} more)" if len(floats) > 1 else ""
    return [f"quantize: {first['label']} stayed float{more}: not a full-integer model for the Edge TPU "
            f"nor TFLM (TFLM runs it as a float hybrid; fix: {first['replacement']})"]


STAGE = Stage("quantize", run=_quantize_job, cache_key=_quantize_key, problems=quantize_problems,
              outputs=lambda job: (FLOAT_MODEL_FILE, quantized_file_name(job.request.mode)))
