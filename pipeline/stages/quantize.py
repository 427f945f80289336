"""Float Keras/SavedModel -> full-integer TFLite with the TF converter, and what it cost.

Every model is first exported as a SavedModel whose batch dimension is fixed to 1: MCUs and the
Edge TPU run one sample at a time, and a dynamic batch makes the converter emit
SHAPE/STRIDED_SLICE/PACK on int32 tensors for every Flatten, which neither target can map.
Conversion happens in memory; nothing is written until every check has passed.
"""

from __future__ import annotations

import logging
import re
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
from ..fileio import safe_name, write_bytes_atomic
from ..runtime.litert import LiteRTModel, litert_version
from ..model import (IO_TYPES, MODES, Evaluation, QuantizeResult, TensorSpec, WeightQuantization,
                    quantized_file_name)
from ..fileio import check_output_folder, mark_output_folder
from ..tflite_model import TFLiteModel, parse_model
from ..cache import content_hash
from ..versions import package_version
from .base import Job, Stage

log = logging.getLogger(__name__)

DEFAULT_SAMPLES = 200  # the converter docs recommend 100-500 representative samples
FLOAT_MODEL_FILE = "model_float.tflite"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_QUANT_WRAPPERS = {"QUANTIZE", "DEQUANTIZE"}
_CALIBRATED_MODES = {"int8", "int16x8"}
_MODE_ACTIVATIONS = {"int8": "int8", "int16x8": "int16"}


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
    if not path.exists():
        raise PipelineError("no such file or directory", path=path, field="--model", fix=fix)
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
    out_dir = check_output_folder(req.out / safe_name(req.name or Path(req.model).stem))
    name = out_dir.name
    source = resolve_model_source(req.model, req.out / ".cache")
    precheck_data_spec(req.data, "--data")
    precheck_data_spec(req.eval_data, "--eval-data")

    from ..runtime.tf import import_tensorflow

    tf = import_tensorflow()
    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        saved = _export_fixed_batch(tf, source, Path(tmp) / "saved_model")
        float_bytes = _convert(tf, saved, "float", source=source)
        float_model = parse_model(float_bytes, source="float model")
        inputs = [TensorSpec.from_tensor(t, n)
                  for t, n in zip(float_model.main.input_tensors(), float_model.input_names())]
        calibration = _calibration_set(req, source, inputs) if req.mode in _CALIBRATED_MODES else None
        quant_bytes = _convert(tf, saved, req.mode, source=source, io_type=io_type,
                               calibration=calibration)
    quant_model = parse_model(quant_bytes, source=f"{req.mode} model")
    _check_fully_quantized(quant_model, req.mode, io_type, source)

    eval_set = _evaluation_set(req, source, inputs, calibration)
    evaluation = _evaluate(float_bytes, quant_bytes, eval_set) if eval_set else None
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
        tool_versions={"tensorflow": tf.__version__, "keras": version("keras"),
                       "litert": litert_version()},
    )
    mark_output_folder(out_dir)
    write_bytes_atomic(result.float_model, float_bytes)
    write_bytes_atomic(result.quantized_model, quant_bytes)
    return result


def _export_fixed_batch(tf, source: ModelSource, dest: Path) -> Path:
    if source.kind == "savedmodel":
        return _rewrap_saved_model(tf, source.path, dest)
    import keras

    path = demo.demo_model_path(source.path.parent) if source.is_demo else source.path
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # third-party loader of a user file: any failure is bad input
        raise PipelineError(f"Keras cannot load the model: {type(exc).__name__}: {_first_line(exc)}",
                            path=source.path, field="--model",
                            fix="re-save it with model.save('model.keras') in Keras 3") from None
    specs = []
    for tensor in model.inputs:
        dims = tuple(tensor.shape[1:])
        if any(d is None for d in dims):
            raise PipelineError(f"input '{tensor.name}' has a dynamic dimension {tuple(tensor.shape)}",
                                path=source.path, field="--model",
                                fix="give the model a fixed input shape (keras.Input(shape=...))")
        specs.append(tf.TensorSpec((1, *dims), tensor.dtype, name=tensor.name))
    signature = [specs[0]] if len(specs) == 1 else [specs]
    from ..runtime.tf import captured_stderr

    with captured_stderr():
        model.export(str(dest), format="tf_saved_model", input_signature=signature, verbose=False)
    return dest


def _rewrap_saved_model(tf, path: Path, dest: Path) -> Path:
    """Re-save a SavedModel's serving signature with batch fixed to 1 and static shapes."""
    from ..runtime.tf import captured_stderr

    try:
        with captured_stderr():
            loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # third-party loader of a user file
        raise PipelineError(f"TensorFlow cannot load the SavedModel: {_first_line(exc)}", path=path,
                            field="--model", fix="re-export it with tf.saved_model.save") from None
    if not loaded.signatures:
        raise PipelineError("SavedModel has no serving signature", path=path, field="--model",
                            fix="export it with signatures={'serving_default': ...}")
    key = "serving_default" if "serving_default" in loaded.signatures else next(iter(loaded.signatures))
    fn = loaded.signatures[key]
    _, kwargs = fn.structured_input_signature
    names = sorted(kwargs)
    specs = []
    for n in names:
        spec = kwargs[n]
        dims = tuple(spec.shape[1:])
        if any(d is None for d in dims):
            raise PipelineError(f"input '{n}' has a dynamic dimension {tuple(spec.shape)}", path=path,
                                field="--model", fix="export the model with a fixed input shape")
        specs.append(tf.TensorSpec((1, *dims), spec.dtype, name=n))

    module = tf.Module()
    module.loaded = loaded  # keeps the variables tracked

    @tf.function(input_signature=specs)
    def serve(*args):
        return fn(**dict(zip(names, args)))

    with captured_stderr():
        tf.saved_model.save(module, str(dest), signatures={"serving_default": serve})
    return dest


def _convert(tf, saved: Path, mode: str, *, source: ModelSource, io_type: str | None = None,
             calibration: SampleSet | None = None) -> bytes:
    from ..runtime.tf import captured_stderr

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    if mode != "float":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if calibration is not None:
        def representative_dataset():
            from ..console import Progress

            with Progress(f"calibrating on {calibration.count} samples", calibration.count) as progress:
                for i in range(calibration.count):
                    yield calibration.batch(i)
                    progress.advance()

        converter.representative_dataset = representative_dataset
    if mode == "int8":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = getattr(tf, io_type)
    elif mode == "int16x8":
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        converter.inference_input_type = converter.inference_output_type = tf.int16
    elif mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    try:
        with captured_stderr() as err:
            return converter.convert()
    except Exception as exc:  # the converter raises ConverterError, RuntimeError, ValueError...
        detail = f"{exc}\n{err.text}"
        ops = sorted(set(re.findall(r"'(?:tf|tfl)\.(\w+)' op", detail)))
        if ops and mode != "float":
            raise PipelineError(f"the converter cannot quantize these ops to {mode}: {', '.join(ops)}",
                                path=source.path, field="--model",
                                fix="replace those layers with int8-capable ones, or try --mode int16x8") from None
        raise PipelineError(f"the TF converter failed ({mode}): {_first_line(exc)}", path=source.path,
                            field="--model", fix="check that the model runs in TensorFlow") from None


def _check_fully_quantized(model: TFLiteModel, mode: str, io_type: str | None, source: ModelSource):
    """Read the converted model back: the converter can leave ops in float32 (wrapped in
    DEQUANTIZE/QUANTIZE) without raising, and such a model is not deployable."""
    if mode not in _CALIBRATED_MODES:
        return
    sg = model.main
    for t in sg.input_tensors() + sg.output_tensors():
        if t.dtype != io_type:
            raise PipelineError(f"the converter produced {t.dtype} I/O tensor '{t.name}', asked {io_type}",
                                path=source.path, field="--io-type",
                                fix="report this: the converter ignored inference_input_type")
    float_ops = []
    for op in sg.operators:
        if op.op in _QUANT_WRAPPERS:
            continue
        touched = [sg.tensors[i] for i in op.inputs + op.outputs if i >= 0]
        if any(t.dtype in ("float32", "float16") and not t.is_constant for t in touched):
            float_ops.append(f"{op.op} (op {op.index})")
    if float_ops:
        raise PipelineError(f"ops that stayed float after {mode} quantization: {', '.join(float_ops)}",
                            path=source.path, field="--model",
                            fix="replace those layers with ones that have integer kernels, or move them "
                                "out of the model (pre/post-processing on the host)")


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


def _calibration_set(req: QuantizeRequest, source: ModelSource, inputs) -> SampleSet:
    if req.data is None:
        if not source.is_demo:
            raise PipelineError(f"--mode {req.mode} needs representative data to calibrate activations",
                                field="--data",
                                fix="pass --data samples.npy|samples.npz|image_dir|module:function")
        samples = demo.split_samples("calibration", inputs, limit=req.samples)
    else:
        samples = load_samples(req.data, inputs, limit=req.samples)
    if samples.count < req.samples:
        log.warning("%s has %d samples, fewer than --samples %d: calibrating with %d",
                    samples.source, samples.count, req.samples, samples.count)
    return samples


def _calibration_summary(req: QuantizeRequest, samples: SampleSet | None) -> dict:
    if samples is None:
        return {"source": None, "samples": 0, "requested": None,
                "note": f"--mode {req.mode} does not calibrate activations"}
    return {"source": samples.source, "samples": samples.count, "requested": req.samples}


def _evaluation_set(req, source: ModelSource, inputs, calibration) -> SampleSet | None:
    if req.eval_data:
        return load_samples(req.eval_data, inputs, option="--eval-data")
    if source.is_demo:
        return demo.split_samples("test", inputs, option="--eval-data")
    return calibration  # unlabelled: agreement only


def _evaluate(float_bytes: bytes, quant_bytes: bytes, samples: SampleSet) -> Evaluation:
    float_out = LiteRTModel(float_bytes, "float model").run(samples)
    quant_out = LiteRTModel(quant_bytes, "quantized model").run(samples)
    diffs = np.concatenate([np.abs(f - q).ravel() for f, q in zip(float_out, quant_out)])
    f0, q0 = float_out[0].reshape(samples.count, -1), quant_out[0].reshape(samples.count, -1)
    f_top, q_top = f0.argmax(axis=1), q0.argmax(axis=1)
    labelled = samples.labels is not None and f0.shape[1] > 1
    return Evaluation(
        samples=samples.count, source=samples.source, labelled=labelled, interpreter=litert_version(),
        float_accuracy=round(float((f_top == samples.labels).mean()), 6) if labelled else None,
        quantized_accuracy=round(float((q_top == samples.labels).mean()), 6) if labelled else None,
        top1_agreement=round(float((f_top == q_top).mean()), 6),
        max_abs_error=round(float(diffs.max()), 6), mean_abs_error=round(float(diffs.mean()), 6))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


# --- registry entry ----------------------------------------------------------------------------

def _quantize_key(job: Job) -> dict[str, Any]:
    r = job.request
    model = (f"demo-v{demo.DEMO_VERSION}-{package_version('keras')}" if r.model == demo.DEMO_NAME
             else content_hash(r.model))
    return {"model": model, "data": content_hash(r.data), "eval": content_hash(r.eval_data), "mode": r.mode,
            "io_type": r.io_type, "samples": r.samples,
            "tools": [package_version("tensorflow-cpu", "tensorflow"), package_version("ai-edge-litert")]}


def _quantize_job(job: Job) -> QuantizeResult:
    r = job.request
    return quantize(QuantizeRequest(model=r.model, data=r.data, eval_data=r.eval_data, mode=r.mode,
                                    io_type=r.io_type, samples=r.samples, name=r.name, out=r.out))


STAGE = Stage("quantize", run=_quantize_job, cache_key=_quantize_key,
              outputs=lambda job: (FLOAT_MODEL_FILE, quantized_file_name(job.request.mode)))
