"""The TensorFlow side of `invoke quantize`, in a child process: load the Keras model (or the
SavedModel), export it with a batch of 1, convert it to a float TFLite model and, once the
parent has sent the calibration samples, to the quantized one.

Why a child: TF 2.21's calibrator segfaults on the WHILE loop Keras 3 builds for LSTM and GRU
layers (exit 139, nothing printed, the pipeline gone with it). In a child, a crash becomes one
line naming the recurrent Keras layers and the fix, and the parent's terminal keeps none of
TensorFlow's C++ chatter: the child's stderr goes to a file that is read only to explain a
failure (the converter's own diagnostics name the ops it could not quantize).

Recurrent layers convert when unrolled: a Keras model's LSTM/GRU/SimpleRNN (also inside
Bidirectional) are rebuilt with `unroll=True` for the model's fixed sequence length, with the
same weights, before export; the float outputs of both are compared on calibration samples and
the difference is recorded. TFLM runs the unrolled layers; the Edge TPU compiler cannot map the
UNPACK the unrolled loop starts with.

Protocol: the child serves jobs one after another (a TensorFlow import costs seconds: a Python
caller or a test session converting many models reuses the process). Each job is a work folder
the parent owns, named on one stdin line {"job": folder}:
  parent: request.json {"kind", "path", "mode", "io_type", "info"}; the child's stderr goes to
    stderr.txt there
  child -> events, one JSON object per line on its original stdout:
    {"event": "loaded", "keras_inputs", "keras_outputs", "recurrent", "rewrites", "tensorflow"}
    {"event": "float"}                       model_float.tflite is written
  parent -> one line on stdin: "calibrate" (calibration.npz written), "convert" (no
    calibration for this mode) or "stop"
  child -> {"event": "progress", "done", "total"} while calibrating,
    {"event": "rewrites", "rewrites"} with the measured float differences,
    {"event": "done"}                        model_quantized.tflite is written
    {"event": "error", "kind", "problem", "fix", "field", "detail"} then exit 2
Ctrl-C reaches the parent, which kills the child; the child ignores SIGINT (its state is the
parent's to clean up) and dies with the parent (PR_SET_PDEATHSIG) on Linux.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import PROJECT_DIR
from ..errors import PipelineError

REQUEST = "request.json"
STDERR = "stderr.txt"
FLOAT_FILE = "model_float.tflite"
QUANT_FILE = "model_quantized.tflite"
CALIBRATION = "calibration.npz"
# Keras layer classes whose Keras 3 implementation is a tf.while_loop over time steps, the loop
# the calibrator crashes on (TF 2.21); Bidirectional wraps one of them.
RECURRENT_CLASSES = ("LSTM", "GRU", "SimpleRNN", "RNN", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D",
                     "Bidirectional")
_FLOAT_CHECK_SAMPLES = 16


MLIR_QUANTIZER = {"name": "mlir", "note": "TF's MLIR quantizer (the converter's default)"}


@dataclass
class Conversion:
    float_bytes: bytes
    quant_bytes: bytes | None
    keras_inputs: list[str] | None  # Keras input names in the model's order; None: not known
    keras_outputs: list[str] | None  # Keras output names, Keras order (signature output_k is k)
    recurrent: list[dict[str, str]] = field(default_factory=list)  # {"layer", "class"}
    rewrites: list[dict[str, Any]] = field(default_factory=list)
    tensorflow: str = ""
    quantizer: dict[str, Any] = field(default_factory=lambda: dict(MLIR_QUANTIZER))


def _child_env() -> dict[str, str]:
    """This process's import path for the child: a Keras model's custom layers are found by the
    module their config names (Keras imports it), so whatever is importable here must be there."""
    paths = [str(PROJECT_DIR)] + [p or os.getcwd() for p in sys.path]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]))
    return env


# variables read when Python, TensorFlow or Keras start (a running process cannot change them),
# and those the pipeline reads in the converter
IMPORT_TIME_VARIABLES = ("PYTHON", "TF_", "KERAS_", "CUDA_")
_CHILD_VARIABLES = IMPORT_TIME_VARIABLES + ("EDGE_DEPLOY_",)


def _identity(env: dict[str, str]) -> dict[str, str]:
    """What makes a converter process fit for a job: its import path and the variables that
    steer Python, TensorFlow and Keras. Not the rest: libraries this process imports later set
    their own (scikit-learn's KMP_*), and a new process for that costs a TensorFlow import."""
    return {k: v for k, v in env.items() if k.startswith(_CHILD_VARIABLES)}


class _Worker:
    """One converter process, reused for the next conversion when it ended its job cleanly (a
    TensorFlow import costs seconds; a test session or a Python caller converts many models).
    A crash, an interrupt or an error in this process discards it. With
    $EDGE_DEPLOY_CONVERTER_SERVER set, the process is forked by the converter server (which has
    TensorFlow imported already: see `converter_server`), else started here."""

    def __init__(self, env: dict[str, str]):
        from .converter_server import connect

        self.env = env
        self.proc = connect(env) or subprocess.Popen(
            [sys.executable, "-m", "pipeline.runtime.convert"], cwd=PROJECT_DIR, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self.workdir: Path | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def event(self) -> dict[str, Any] | None:
        for line in self.proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        return None  # the process ended

    def send(self, command: str) -> None:
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):  # it died meanwhile: the next event() says how
            pass

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if hasattr(self.proc, "close"):  # a child of the converter server: its socket and streams
            self.proc.close()
            return
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except (OSError, BrokenPipeError):
                pass

    def stderr_text(self) -> str:
        try:
            return (self.workdir / STDERR).read_text(errors="replace") if self.workdir else ""
        except OSError:
            return ""


_idle: list[_Worker] = []


def _worker() -> _Worker:
    import atexit

    atexit.register(shutdown)  # once: registering the same function again is a no-op here
    env = _child_env()
    while _idle:
        worker = _idle.pop()
        if worker.alive() and _identity(worker.env) == _identity(env):
            return worker
        worker.close()
    return _Worker(env)


def shutdown() -> None:
    """End the idle converter process (it also ends when this process does)."""
    while _idle:
        _idle.pop().close()


def convert_in_child(workdir: Path, *, kind: str, path: Path, mode: str, io_type: str | None,
                     calibration: Callable[[bytes, list[str] | None], Any | None],
                     error_path: Path, info: dict[str, Any] | None = None) -> Conversion:
    """Convert `path` (a .keras/.h5 file or a SavedModel folder) in a child process.
    `calibration(float_bytes, keras_inputs)` returns the SampleSet to calibrate with (None for
    the uncalibrated modes); it runs in this process, between the float and the quantized
    conversion, so user data code never runs inside TensorFlow's process. Raises PipelineError
    for every failure, a crash included."""
    import numpy as np

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / REQUEST).write_text(json.dumps({"kind": kind, "path": str(path), "mode": mode,
                                               "io_type": io_type, "info": info}))
    child = _worker()
    child.workdir = workdir
    child.send(json.dumps({"job": str(workdir)}))
    loaded: dict[str, Any] = {}
    stage = "loading the model"
    reusable = False
    try:
        loaded = _expect(child, "loaded", stage, error_path, loaded)
        stage = "converting the float model"
        _expect(child, "float", stage, error_path, loaded)
        float_bytes = (workdir / FLOAT_FILE).read_bytes()
        samples = calibration(float_bytes, loaded.get("keras_inputs"))
        if samples is not None:
            np.savez(workdir / CALIBRATION, **samples.inputs)
        child.send("calibrate" if samples is not None else "convert")
        stage = f"the {mode} conversion" + (" (calibration)" if samples is not None else "")
        rewrites = loaded.get("rewrites", [])
        quantizer = dict(MLIR_QUANTIZER)
        progress = None
        try:
            while True:
                event = _expect(child, None, stage, error_path, loaded)
                if event["event"] == "progress":
                    if progress is None:
                        from ..console import Progress

                        progress = Progress(f"calibrating on {event['total']} samples", event["total"])
                    progress.advance()
                elif event["event"] == "rewrites":
                    rewrites = event["rewrites"]
                elif event["event"] == "quantizer":
                    quantizer = event["quantizer"]
                elif event["event"] == "done":
                    break
        finally:
            if progress is not None:
                progress.__exit__(None, None, None)
        quant_bytes = (workdir / QUANT_FILE).read_bytes()
        reusable = True
    except _ChildReported:
        reusable = child.alive()  # it said what was wrong and waits for the next job
        raise
    finally:
        if reusable:
            child.workdir = None
            _idle.append(child)
        else:  # an interrupt, an error here (bad data) or a crash: never reuse a half-done job
            child.close()
    return Conversion(float_bytes=float_bytes, quant_bytes=quant_bytes,
                      keras_inputs=loaded.get("keras_inputs"), keras_outputs=loaded.get("keras_outputs"),
                      recurrent=loaded.get("recurrent", []), rewrites=rewrites,
                      tensorflow=loaded.get("tensorflow", ""), quantizer=quantizer)


class _ChildReported(PipelineError):
    """An error the child reported itself (it stays usable), as opposed to a crash."""


def _expect(child: _Worker, name: str | None, stage: str, error_path: Path,
            loaded: dict[str, Any]) -> dict[str, Any]:
    event = child.event()
    if event is not None and event["event"] == "error":
        raise _child_error(event, child.stderr_text(), error_path)
    if event is None:
        code = child.proc.wait()
        raise _crash(code, stage, child.stderr_text(), error_path, loaded, child.workdir)
    if name is not None and event["event"] != name:
        raise PipelineError(f"the converter process sent '{event['event']}' while {stage}", path=error_path,
                            field="--model", fix="report this with the model")
    return event


_OP_PATTERN = re.compile(r"'(?:tf|tfl)\.(\w+)' op")


_UNROLL_FIX = ("build the recurrent layers with unroll=True (a fixed sequence length) and export again, or "
               "pass the .keras file, which quantize rebuilds unrolled; TFLM runs unrolled layers, the Edge "
               "TPU cannot map the UNPACK they start with")
_TENSOR_LIST_SCOPE = re.compile(r"([A-Za-z][\w.-]*?)(?:_\d+)?/(?:TensorArray|while)")


class CustomObjectError(_ChildReported):
    """The child could not load a Keras model whose custom classes are registered only in the
    calling process (an API user's notebook or test): see `export_here`."""


def _child_error(event: dict[str, Any], stderr: str, error_path: Path) -> PipelineError:
    if event.get("kind") == "custom_object":
        return CustomObjectError(event["problem"], path=error_path, field=event.get("field") or "--model",
                                 fix=event.get("fix"))
    if event.get("kind") == "converter":
        mode, detail = event["mode"], f"{event.get('detail', '')}\n{stderr}"
        if "tensor list" in detail.lower() or "TensorList" in detail:
            layers = sorted(set(_TENSOR_LIST_SCOPE.findall(detail)))
            named = ", ".join(f"`{n}`" for n in layers) or "a recurrent layer"
            return _ChildReported(f"the TF converter cannot lower the while loop over time steps of {named} "
                                 f"({mode}: its tensor-list ops have no TFLite builtin)", path=error_path,
                                 field="--model", fix=_UNROLL_FIX)
        ops = sorted(set(_OP_PATTERN.findall(detail)))
        if ops and mode != "float":
            return _ChildReported(f"the converter cannot quantize these ops to {mode}: {', '.join(ops)}",
                                 path=error_path, field="--model",
                                 fix="replace those layers with int8-capable ones, or try --mode int16x8")
        return _ChildReported(f"the TF converter failed ({mode}): {_first_line(event.get('detail', ''))}"
                             + (f" [converter: {_converter_line(stderr)}]" if _converter_line(stderr) else ""),
                             path=error_path, field="--model", fix="check that the model runs in TensorFlow")
    return _ChildReported(event["problem"], path=error_path, field=event.get("field") or "--model",
                          fix=event.get("fix"))


def _crash(code: int, stage: str, stderr: str, error_path: Path, loaded: dict[str, Any],
           workdir: Path) -> PipelineError:
    from .process import signal_name

    how = signal_name(code)
    recurrent = loaded.get("recurrent") or _while_loop_layers(workdir / FLOAT_FILE)
    named = ", ".join(f"`{r['layer']}` ({r['class']})" for r in recurrent)
    if code < 0 and recurrent:
        unrolled = any(r.get("change") == "unroll=True" for r in loaded.get("rewrites", []))
        fix = "report it with the model: the layers were already rebuilt with unroll=True" if unrolled else _UNROLL_FIX
        return PipelineError(f"the TF converter crashed ({how}) during {stage} on the recurrent layer(s) {named}: "
                             "TF 2.21 cannot calibrate the while loop Keras builds for them",
                             path=error_path, field="--model", fix=fix)
    if code < 0:
        return PipelineError(f"the TF converter crashed ({how}) during {stage}", path=error_path,
                             field="--model", fix="report it with the model; try --mode int16x8 or a smaller model")
    last = _converter_line(stderr) or "no message"
    return PipelineError(f"the converter process failed ({how}) during {stage}: {last}", path=error_path,
                         field="--model", fix="check that the model loads and runs in TensorFlow")


def _while_loop_layers(float_path: Path) -> list[dict[str, str]]:
    """Without the Keras model (a SavedModel): the layers whose ops are WHILE loops in the float
    model, named by `pipeline.layers` from the converter's tensor names."""
    if not float_path.is_file():
        return []
    from ..layers import map_layers
    from ..tflite_model import read_model

    try:
        model = read_model(float_path)
    except PipelineError:
        return []
    loops = [layer for op, layer in zip(model.main.operators, map_layers(model)) if op.op == "WHILE"]
    return [{"layer": layer.keras_layer or f"op {layer.op_index}", "class": "a while loop: LSTM, GRU or RNN"}
            for layer in loops]


_NOISE = re.compile(r"^(W0000|I0000|WARNING: All log messages|To enable the following|This TensorFlow binary)")


def _converter_line(stderr: str) -> str:
    """The last line of the child's stderr that says something (not TF's start-up banner)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and not _NOISE.match(line.strip())]
    return lines[-1][:300] if lines else ""


def _first_line(text: str) -> str:
    lines = str(text).strip().splitlines()
    return lines[0][:300] if lines else "no message"


def registered_here(model_file: Path) -> bool:
    """Every custom class the .keras config names is registered in this process (which has
    Keras imported already: nothing is imported here for the check)."""
    if "keras" not in sys.modules or model_file.suffix != ".keras":
        return False
    import zipfile

    import keras

    try:
        with zipfile.ZipFile(model_file) as z:
            config = json.loads(z.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return False
    names: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            module = node.get("module")
            if isinstance(module, str) and not module.startswith("keras") and node.get("registered_name"):
                names.append(node["registered_name"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return bool(names) and all(keras.saving.get_registered_object(n) is not None for n in names)


def export_here(model_file: Path, dest: Path) -> dict[str, Any]:
    """Load and export the Keras model in this process (its custom classes are registered
    here, not in a fresh child); the child then converts the export. Returns what the child's
    `loaded` event would carry."""
    from .tf import captured_stderr, import_tensorflow

    tf = import_tensorflow()
    import keras

    with captured_stderr():
        try:
            model = keras.models.load_model(model_file, compile=False)
        except Exception as exc:  # a user file through a third-party loader
            problem, fix, *_ = _load_error(exc, model_file)
            raise PipelineError(problem, path=model_file, field="--model", fix=fix) from None
        try:
            model, _, info = _prepared(keras, model)
            _export(tf, {"kind": "keras"}, model, dest)
        except ChildError as exc:
            raise PipelineError(exc.event["problem"], path=model_file, field="--model", fix=exc.event["fix"]) from None
    return info


def export_fixed_batch(tf, kind: str, model_file: Path, dest: Path) -> Path:
    """A SavedModel of the model with batch 1, as the converter process exports it, made in
    this process: for callers that convert several variants of one model (diagnose's remedies)."""
    if kind == "savedmodel":
        return _rewrap_saved_model(tf, Path(model_file), dest)
    export_here(Path(model_file), dest)
    return dest


# --- the child ------------------------------------------------------------------------------------

class ChildError(Exception):
    def __init__(self, problem: str, fix: str | None = None, field: str | None = "--model", kind: str = "input",
                 **extra: Any):
        super().__init__(problem)
        self.event = {"event": "error", "kind": kind, "problem": problem, "fix": fix, "field": field, **extra}


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _child_main() -> int:
    """Serve jobs until stdin ends: each job is a work folder (its request, its stderr file)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    events = os.fdopen(os.dup(1), "w", buffering=1)
    import faulthandler

    from .tf import import_tensorflow

    tf = None
    while True:
        line = sys.stdin.readline()
        if not line:
            return 0
        if not line.startswith("{"):
            continue  # a "stop" that arrived after its job ended
        workdir = Path(json.loads(line)["job"])
        _temporary_files_in(workdir / "tmp")
        with open(workdir / STDERR, "wb") as err:  # this job's diagnostics, read on failure
            os.dup2(err.fileno(), 2)
            os.dup2(err.fileno(), 1)  # anything printed lands there too, not in the event stream
        faulthandler.enable()
        if tf is None:
            tf = import_tensorflow()
        _job(tf, workdir, lambda **event: events.write(json.dumps(event) + "\n"))
        _forget(tf)


def _temporary_files_in(folder: Path) -> None:
    """TensorFlow's temporary files (autograph's generated modules, the converter's) go into the
    job's folder, which the parent removes: a converter killed mid-job (Ctrl-C) leaves nothing in
    the user's TMPDIR."""
    import tempfile

    folder.mkdir(exist_ok=True)
    tempfile.tempdir = str(folder)
    os.environ["TMPDIR"] = str(folder)


def _forget(tf) -> None:
    """Drop the finished job's graphs and models before the next one."""
    import gc

    try:
        import keras

        keras.backend.clear_session()
    except ImportError:
        pass
    gc.collect()


def _job(tf, workdir: Path, emit) -> None:
    request = json.loads((workdir / REQUEST).read_text())
    try:
        keras_model, original, info = _load(tf, request)
        saved = _export(tf, request, keras_model, workdir / "saved_model")
        emit(event="loaded", tensorflow=tf.__version__, **info)
        (workdir / FLOAT_FILE).write_bytes(_convert(tf, saved, "float"))
        emit(event="float")
        command = sys.stdin.readline().strip()
        if command not in ("calibrate", "convert"):
            return
        calibration = None
        if command == "calibrate":
            import numpy as np

            with np.load(workdir / CALIBRATION) as f:
                calibration = {k: f[k] for k in f.files}
            if original is not None:
                emit(event="rewrites", rewrites=_measure_rewrites(original, keras_model, info["rewrites"],
                                                                  calibration))
        data = _convert(tf, saved, request["mode"], io_type=request["io_type"], calibration=calibration,
                        progress=lambda done, total: emit(event="progress", done=done, total=total))
        if request["mode"] == "int8" and (left := _float_ops(data)):
            data, quantizer = _retried(lambda mlir: _convert(tf, saved, "int8", io_type=request["io_type"],
                                                             calibration=calibration, mlir_quantizer=mlir),
                                       data, left)
            if quantizer:
                emit(event="quantizer", quantizer=quantizer)
        (workdir / QUANT_FILE).write_bytes(data)
        emit(event="done")
    except ChildError as exc:
        emit(**exc.event)


def _load(tf, request: dict[str, Any]):
    kind, path = request["kind"], Path(request["path"])
    if kind == "exported":  # the parent exported it (custom classes registered only there)
        return None, None, request["info"]
    if kind == "savedmodel":
        return None, None, {"keras_inputs": None, "keras_outputs": None, "recurrent": [], "rewrites": []}
    import keras

    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # a user file through a third-party loader: any failure is bad input
        problem, fix, *kind = _load_error(exc, path)
        raise ChildError(problem, fix, kind=kind[0] if kind else "input") from None
    return _prepared(keras, model)


def _prepared(keras, model):
    """The model to export (recurrent layers unrolled), the original when it was rebuilt, and
    what the parent learns about it."""
    recurrent = _recurrent_layers(keras, model)
    info = {"keras_inputs": [t.name for t in model.inputs],
            "keras_outputs": _output_layer_names(model),
            "recurrent": recurrent, "rewrites": []}
    original = None
    if recurrent:
        unrolled, info["rewrites"] = _unrolled(keras, model, recurrent)
        if unrolled is not model:
            original, model = model, unrolled
    return model, original, info


def _load_error(exc: BaseException, path: Path) -> tuple[str, str]:
    text = str(exc)
    first = _first_line(text)
    if "Lambda" in text and "safe_mode" in text:
        return ("Keras refuses to load the Python code of a Lambda layer (safe mode: loading it would run "
                "code from the file)",
                "export a SavedModel from the code that builds the model (model.export('model_dir')) and pass "
                "the folder, or replace the Lambda with a layer registered with "
                "@keras.saving.register_keras_serializable")
    if "Could not locate" in text or "Unknown layer" in text or "custom_objects" in text:
        missing = re.search(r"Could not locate (?:class|function) '([^']+)'", text)
        what = f"the custom class '{missing.group(1)}'" if missing else "a custom class"
        return (f"Keras cannot load the model: it uses {what}, which is not registered in this process",
                "export a SavedModel from the code that defines the class (model.export('model_dir')) and pass "
                "the folder, or call pipeline's quantize from Python after importing the class",
                "custom_object")
    if path.suffix in (".h5", ".hdf5"):
        return (f"Keras cannot load the model: {type(exc).__name__}: {first}",
                "re-save it with model.save('model.keras') in Keras 3")
    import keras

    return (f"Keras cannot load the model: {type(exc).__name__}: {first}",
            f"check that keras.models.load_model('{path.name}') works with Keras {keras.__version__}, or "
            "export a SavedModel and pass the folder")


def _output_layer_names(model) -> list[str]:
    """The layer making each output, in Keras order (a Sequential's `output_names` are tensor
    names such as `keras_tensor_20`; the layer name is what the user gave)."""
    names = []
    for k, t in enumerate(model.outputs):
        history = getattr(t, "_keras_history", None)
        layer = getattr(history, "operation", None) or (history[0] if history else None)
        names.append(getattr(layer, "name", None) or (list(getattr(model, "output_names", []) or [])[k:k + 1] or [t.name])[0])
    return names


def _recurrent_layers(keras, model) -> list[dict[str, str]]:
    found = []
    inside = set()
    for layer in model._flatten_layers(include_self=False):
        if id(layer) in inside:
            continue
        if type(layer).__name__ in RECURRENT_CLASSES or isinstance(layer, keras.layers.RNN):
            found.append({"layer": layer.name, "class": type(layer).__name__})
            inside.update(id(sub) for sub in layer._flatten_layers(include_self=False))
    return found


def _set_unroll(config: Any) -> bool:
    """Set every `unroll` in a layer config (nested: Bidirectional's inner layers) to True."""
    changed = False
    if isinstance(config, dict):
        for key, value in config.items():
            if key == "unroll" and value is False:
                config[key] = True
                changed = True
            else:
                changed |= _set_unroll(value)
    elif isinstance(config, list):
        for value in config:
            changed |= _set_unroll(value)
    return changed


def _unrolled(keras, model, recurrent: list[dict[str, str]]):
    names = {r["layer"] for r in recurrent}
    rebuilt: list[str] = []

    def clone(layer):
        config = layer.get_config()
        if layer.name in names and _set_unroll(config):
            rebuilt.append(layer.name)
        return layer.__class__.from_config(config)

    try:
        clone_model = keras.models.clone_model(model, clone_function=clone, recursive=True)
        clone_model.set_weights(model.get_weights())
    except Exception as exc:  # a custom layer that cannot be rebuilt from its config: keep the model
        return model, [{"layer": r["layer"], "class": r["class"], "change": None,
                        "note": f"could not be rebuilt unrolled ({type(exc).__name__}: {_first_line(str(exc))})"}
                       for r in recurrent]
    steps = _sequence_lengths(model)
    rewrites = [{"layer": r["layer"], "class": r["class"], "change": "unroll=True" if r["layer"] in rebuilt else None,
                 "sequence_length": steps, "float_max_abs_difference": None,
                 "note": ("rebuilt with unroll=True for the fixed sequence length (same weights): TF 2.21's "
                          "calibrator crashes on the while loop Keras builds otherwise; TFLM runs the unrolled "
                          "layer, the Edge TPU cannot map the UNPACK it starts with")
                 if r["layer"] in rebuilt else "already unrolled"} for r in recurrent]
    return clone_model, rewrites


def _sequence_lengths(model) -> int | None:
    shapes = [tuple(t.shape) for t in model.inputs if len(t.shape) >= 3]
    return int(shapes[0][1]) if shapes and shapes[0][1] is not None else None


def _measure_rewrites(original, unrolled, rewrites: list[dict[str, Any]],
                      calibration: dict[str, Any]) -> list[dict[str, Any]]:
    """The unrolled model against the original on the first calibration samples (float)."""
    import numpy as np

    rewrites = [dict(r) for r in rewrites]
    names = [t.name for t in original.inputs]
    batch = [calibration[n][:_FLOAT_CHECK_SAMPLES] for n in names]
    feed = batch if len(batch) > 1 else batch[0]
    a, b = original.predict(feed, verbose=0), unrolled.predict(feed, verbose=0)
    a, b = (a if isinstance(a, list) else [a]), (b if isinstance(b, list) else [b])
    diff = float(max(np.abs(np.asarray(x) - np.asarray(y)).max() for x, y in zip(a, b)))
    for r in rewrites:
        if r.get("change"):
            r["float_max_abs_difference"] = diff
            r["float_samples_compared"] = len(batch[0])
    return rewrites


def _export(tf, request: dict[str, Any], model, dest: Path) -> Path:
    if request["kind"] == "exported":
        return Path(request["path"])
    if request["kind"] == "savedmodel":
        return _rewrap_saved_model(tf, Path(request["path"]), dest)
    specs = []
    for tensor in model.inputs:
        dims = tuple(tensor.shape[1:])
        if any(d is None for d in dims):
            raise ChildError(f"input '{tensor.name}' has a dynamic dimension {tuple(tensor.shape)}",
                             "give the model a fixed input shape (keras.Input(shape=...))")
        specs.append(tf.TensorSpec((1, *dims), tensor.dtype, name=tensor.name))
    signature = [specs[0]] if len(specs) == 1 else [specs]
    model.export(str(dest), format="tf_saved_model", input_signature=signature, verbose=False)
    return dest


def _rewrap_saved_model(tf, path: Path, dest: Path) -> Path:
    """Re-save a SavedModel's serving signature with batch fixed to 1 and static shapes. Its
    inputs come in name order: a SavedModel signature is a map, the order it was built in is lost."""
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # a user file through a third-party loader
        raise ChildError(f"TensorFlow cannot load the SavedModel: {_first_line(str(exc))}",
                         "re-export it with tf.saved_model.save or model.export") from None
    if not loaded.signatures:
        raise ChildError("SavedModel has no serving signature",
                         "export it with signatures={'serving_default': ...}")
    key = "serving_default" if "serving_default" in loaded.signatures else next(iter(loaded.signatures))
    fn = loaded.signatures[key]
    _, kwargs = fn.structured_input_signature
    names = sorted(kwargs)
    specs = []
    for n in names:
        spec = kwargs[n]
        dims = tuple(spec.shape[1:])
        if any(d is None for d in dims):
            raise ChildError(f"input '{n}' has a dynamic dimension {tuple(spec.shape)}",
                             "export the model with a fixed input shape")
        specs.append(tf.TensorSpec((1, *dims), spec.dtype, name=n))

    module = tf.Module()
    module.loaded = loaded  # keeps the variables tracked

    @tf.function(input_signature=specs)
    def serve(*args):
        return fn(**dict(zip(names, args)))

    tf.saved_model.save(module, str(dest), signatures={"serving_default": serve})
    return dest


def _float_ops(model_bytes: bytes) -> list[str]:
    """'op K NAME' for each op a quantized model left in float (no TensorFlow involved); none
    when the converter's output cannot be read here (the parent reads it again and says why)."""
    from ..errors import PipelineError
    from ..layer_fixes import float_op_indices
    from ..tflite_model import parse_model

    try:
        model = parse_model(model_bytes, source="the quantized model")
    except PipelineError:
        return []
    return [f"op {k} {model.main.operators[k].op}" for k in float_op_indices(model)]


MLIR_ATTEMPTS = 5


def _retried(convert: Callable[[bool], bytes], first: bytes, left: list[str]) -> tuple[bytes, dict | None]:
    """TF 2.21's MLIR quantizer does not give the same model from run to run on some graphs: an
    unrolled LSTM's SPLIT comes out float in about one run in three, integer otherwise. TF's
    older quantizer is deterministic: when it makes every op integer, the float ops were that
    chance, and the MLIR quantizer is run again (its models are the more accurate; the older
    one's is kept when every run left an op float). When the older one leaves ops float too,
    they are the model's: the first result stands and no time is spent on retries."""
    try:
        legacy = convert(False)
    except ChildError:  # it refuses what it cannot quantize ("not yet supported for op: 'SIN'")
        return first, None
    if _float_ops(legacy):
        return first, None
    for attempt in range(2, MLIR_ATTEMPTS + 1):
        data = convert(True)
        if not _float_ops(data):
            return data, {"name": "mlir", "attempts": attempt,
                          "note": f"TF's MLIR quantizer left {', '.join(left)} float in its first run and made "
                                  f"every op integer in run {attempt} (its result varies from run to run on "
                                  "some graphs; TF's older quantizer showed the op can be integer)"}
    return legacy, {"name": "legacy", "attempts": MLIR_ATTEMPTS,
                    "note": f"TF's MLIR quantizer left {', '.join(left)} float in {MLIR_ATTEMPTS} runs; TF's older "
                            "quantizer made every op integer"}


def _convert(tf, saved: Path, mode: str, *, io_type: str | None = None, calibration=None,
             progress: Callable[[int, int], None] | None = None, mlir_quantizer: bool = True) -> bytes:
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    if not mlir_quantizer:
        converter.experimental_new_quantizer = False
    if mode != "float":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if calibration is not None:
        count = len(next(iter(calibration.values())))

        def representative_dataset():
            for i in range(count):
                yield {name: arr[i:i + 1] for name, arr in calibration.items()}
                if progress:
                    progress(i + 1, count)

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
        return converter.convert()
    except Exception as exc:  # the converter raises ConverterError, RuntimeError, ValueError...
        raise ChildError(f"the TF converter failed ({mode})", kind="converter", mode=mode,
                         detail=str(exc)[:20000]) from None


if __name__ == "__main__":
    sys.exit(_child_main())
