"""`invoke verify`: with no device on the desk, host interpreters stand in for the hardware.

The same inputs run through the float model (LiteRT), the int8 model in LiteRT, the int8 model
in the TFLM Python interpreter (the library the MCU runs; in a subprocess), and when present
`tflite_runtime` (subprocess: it crashes with numpy 2) and a real Edge TPU (Coral's pycoral).
Then: does the deployed int8 model compute what LiteRT computes (bit for bit expected), how far
is it from the float model in real units, and how accurate is each against the labels.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data import SampleSet, load_samples
from ..errors import NotDeployableError, PipelineError
from ..runtime.litert import LiteRTModel, litert_version, quantize_array
from ..model import TensorSpec, Thresholds
from ..tflite_model import read_model
from ..cache import content_hash
from ..versions import package_version
from .base import Job, Stage

DEFAULT_SAMPLES = 200


@dataclass
class Backend:
    name: str
    library: str
    delegate: str | None
    ran: bool
    note: str = ""
    latency_ms: float | None = None
    accuracy: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "library": self.library, "delegate": self.delegate, "ran": self.ran,
                "note": self.note, "median_latency_ms": self.latency_ms, "accuracy": self.accuracy}


@dataclass
class VerifyResult:
    samples: int
    source: str
    labelled: bool
    backends: list[Backend]
    comparisons: dict[str, Any]
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c["passed"] for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        # `median_latency_ms` is a measurement of this machine (like HIL's device times): the
        # only values in the report that are not a function of the inputs
        return {"samples": self.samples, "source": self.source, "labelled": self.labelled,
                "passed": self.passed, "backends": [b.to_json() for b in self.backends],
                "comparisons": self.comparisons, "checks": self.checks}


def _samples(model_path: Path, inputs: list[TensorSpec], data: str | None, limit: int) -> SampleSet:
    if data:
        return load_samples(data, inputs, limit=limit, option="--data")
    from .. import demo

    if demo.is_demo_model(model_path, [t.sample_shape for t in inputs]):
        return demo.split_samples("test", inputs, limit=limit)
    raise PipelineError("no samples to verify with", path=model_path, field="--data",
                        fix="pass --data samples.npz (labels as 'y' for accuracy)")


def _top1(outputs: np.ndarray) -> np.ndarray:
    return outputs.reshape(len(outputs), -1).argmax(axis=1)


def verify(model_path: Path, *, data: str | None = None, samples: int = DEFAULT_SAMPLES,
           thresholds: Thresholds = Thresholds()) -> VerifyResult:
    model = read_model(model_path)
    names_in, names_out = model.input_names(), model.output_names()
    inputs = [TensorSpec(n, t.shape, "float32") for n, t in zip(names_in, model.main.input_tensors())]
    sample_set = _samples(model_path, inputs, data, samples)
    labels = sample_set.labels
    backends: list[Backend] = []
    comparisons: dict[str, Any] = {}
    checks: list[dict[str, Any]] = []

    int8 = LiteRTModel(model_path.read_bytes(), str(model_path), delegates=False)
    out_order = int8.output_names()
    litert_raw = int8.run(sample_set, raw=True)
    litert_real = int8.real(litert_raw)
    backends.append(Backend("int8 LiteRT", litert_version(), "none (built-in kernels)", True,
                            latency_ms=int8.median_latency_ms(sample_set),
                            accuracy=_accuracy(litert_real[0], labels)))
    # LiteRT's default: the XNNPACK delegate, what a Linux host or phone would run
    xnn = LiteRTModel(model_path.read_bytes(), str(model_path))
    xnn_raw = xnn.run(sample_set, raw=True)
    xnn_lsb = int(max(np.abs(a.astype(np.int64) - b.astype(np.int64)).max() for a, b in zip(xnn_raw, litert_raw)))
    backends.append(Backend("int8 LiteRT XNNPACK", litert_version(), "XNNPACK (default)", True,
                            latency_ms=xnn.median_latency_ms(sample_set), accuracy=_accuracy(xnn_raw[0], labels),
                            note=f"max {xnn_lsb} LSB from the built-in kernels"))
    comparisons["xnnpack_vs_builtin_lsb"] = xnn_lsb

    # TFLM: the deployed library, fed the same quantized integers
    from ..runtime.tflm_runner import run_tflm_timed

    q_inputs = []
    for t, n in zip(model.main.input_tensors(), names_in):
        x = sample_set.inputs[n]
        q_inputs.append(quantize_array(x, np.dtype(t.dtype).type, t.scale, t.zero_point)
                        if t.quantization else x.astype(np.float32))
    try:
        tflm_raw_by_index, seconds = run_tflm_timed(model_path, q_inputs)
        by_name = dict(zip(names_out, tflm_raw_by_index))
        tflm_raw = [by_name[n] for n in out_order]
        backends.append(Backend("int8 TFLM", package_version("tflite-micro"), None, True,
                                latency_ms=round(1000 * float(np.median(seconds)), 4),
                                accuracy=_accuracy(tflm_raw[0], labels)))
        diffs = [np.abs(a.astype(np.int64) - b.astype(np.int64)) for a, b in zip(litert_raw, tflm_raw)]
        worst = int(max(d.max() for d in diffs))
        first = None
        if worst:
            k = next(i for i, d in enumerate(diffs) if d.max())
            flat = np.argwhere(diffs[k] > 0)[0]
            first = {"output": out_order[k], "sample": int(flat[0]), "index": [int(i) for i in flat[1:]],
                     "litert": int(litert_raw[k][tuple(flat)]), "tflm": int(tflm_raw[k][tuple(flat)])}
        comparisons["litert_vs_tflm"] = {"max_lsb_difference": worst, "identical": worst == 0,
                                         "first_difference": first}
        checks.append(_check("int8 LiteRT vs TFLM", worst <= thresholds.max_lsb_litert_vs_tflm,
                             f"max difference {worst} LSB (allowed {thresholds.max_lsb_litert_vs_tflm})"))
    except PipelineError as exc:
        backends.append(Backend("int8 TFLM", package_version("tflite-micro"), None, False, note=exc.problem))
        checks.append(_check("int8 TFLM runs", False, exc.problem))

    # float model, when the quantize stage left one next to the int8 model
    float_path = model_path.parent / "model_float.tflite"
    if float_path.is_file():
        fmodel = LiteRTModel(float_path.read_bytes(), str(float_path))
        float_out = fmodel.run(sample_set)
        backends.append(Backend("float LiteRT", litert_version(), "XNNPACK (default)", True,
                                latency_ms=fmodel.median_latency_ms(sample_set),
                                accuracy=_accuracy(float_out[0], labels)))
        err = np.concatenate([np.abs(f - q).ravel() for f, q in zip(float_out, litert_real)])
        agreement = float((_top1(float_out[0]) == _top1(litert_real[0])).mean())
        comparisons["int8_vs_float"] = {"max_abs_error": round(float(err.max()), 6),
                                        "mean_abs_error": round(float(err.mean()), 6),
                                        "top1_agreement": round(agreement, 6)}
        checks.append(_check("int8 vs float top-1 agreement", agreement >= thresholds.min_top1_agreement,
                             f"{100 * agreement:.2f}% (at least {100 * thresholds.min_top1_agreement:.0f}%)"))
        if labels is not None:
            f_acc, q_acc = backends[-1].accuracy, backends[0].accuracy
            drop = round(100 * (f_acc - q_acc), 3)
            comparisons["accuracy_drop_points"] = drop
            checks.append(_check("accuracy drop float -> int8", drop <= thresholds.max_accuracy_drop_points,
                                 f"{drop:+.2f} points (at most {thresholds.max_accuracy_drop_points})"))
    else:
        backends.append(Backend("float LiteRT", litert_version(), None, False,
                                note=f"no {float_path.name} next to the model (run `invoke quantize`)"))

    backends.append(_tflite_runtime_backend(model_path, q_inputs, litert_raw, out_order, names_out))
    backends.append(_edgetpu_backend(model_path))
    result = VerifyResult(samples=sample_set.count, source=sample_set.source, labelled=labels is not None,
                          backends=backends, comparisons=comparisons, checks=checks)
    return result


def _accuracy(outputs: np.ndarray, labels):
    """Top-1 against labels (argmax of raw integers equals argmax of their real values)."""
    if labels is None or outputs.reshape(len(outputs), -1).shape[1] < 2:
        return None
    return round(float((_top1(outputs) == labels).mean()), 6)


def _check(name: str, passed: bool, detail: str) -> dict[str, Any]:
    return {"check": name, "passed": bool(passed), "detail": detail}


_TFLITE_RUNTIME_WORKER = """
import sys, json, numpy as np
from tflite_runtime.interpreter import Interpreter
it = Interpreter(model_path=sys.argv[1]); it.allocate_tensors()
data = np.load(sys.argv[2])
ins = it.get_input_details(); outs = it.get_output_details()
res = {o["name"]: [] for o in outs}
for n in range(len(data["input_0"])):
    for i, d in enumerate(ins):
        it.set_tensor(d["index"], data[f"input_{i}"][n:n + 1])
    it.invoke()
    for o in outs:
        res[o["name"]].append(it.get_tensor(o["index"])[0].tolist())
print(json.dumps([res[o["name"]] for o in outs]))
"""


def _tflite_runtime_backend(model_path, q_inputs, litert_raw, out_order, names_out) -> Backend:
    """Optional: the last tflite-runtime (2.14) needs numpy < 2, so it runs in its own process."""
    import importlib.util

    if importlib.util.find_spec("tflite_runtime") is None:
        return Backend("int8 tflite_runtime", "tflite-runtime", None, False, note="not installed (optional)")
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "in.npz", **{f"input_{i}": a for i, a in enumerate(q_inputs)})
        proc = subprocess.run([sys.executable, "-c", _TFLITE_RUNTIME_WORKER, str(model_path),
                               str(Path(tmp) / "in.npz")], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        return Backend("int8 tflite_runtime", package_version("tflite-runtime"), None, False,
                       note=f"failed (it needs numpy < 2): {last[:200]}")
    outs = [np.array(o) for o in json.loads(proc.stdout)]
    same = all(np.array_equal(a, b) for a, b in zip(litert_raw, outs))
    return Backend("int8 tflite_runtime", package_version("tflite-runtime"), None, True,
                   note="identical to LiteRT" if same else "differs from LiteRT")


def _edgetpu_backend(model_path: Path) -> Backend:
    from ..runtime.edgetpu import edgetpu_device_status, run_on_device

    compiled = sorted((model_path.parent / "edgetpu").glob("*_edgetpu.tflite"))
    device = edgetpu_device_status()
    if not device.get("present"):
        return Backend("Edge TPU", "pycoral", "libedgetpu", False, note=device["reason"])
    if not compiled:
        return Backend("Edge TPU", "pycoral", "libedgetpu", False, note="no compiled model: run `invoke compile`")
    run = run_on_device(compiled[0], model_path)
    return Backend("Edge TPU", "pycoral", "libedgetpu", True, latency_ms=run["median_latency_ms"],
                   note=f"max difference to the CPU int8 model {run['max_output_difference_lsb']} LSB")


def raise_if_failed(result: VerifyResult) -> None:
    failed = [f"{c['check']}: {c['detail']}" for c in result.checks if not c["passed"]]
    if failed:
        raise NotDeployableError(f"verification failed: {'; '.join(failed)}", field="verify",
                                 fix="see the report; thresholds are options of `invoke verify`")


# --- registry entry ----------------------------------------------------------------------------

def _verify_key(job: Job) -> dict[str, Any]:
    r = job.request
    return {"model": content_hash(job.model), "data": content_hash(r.eval_data or r.data),
            "float": content_hash(job.model.parent / "model_float.tflite"), "samples": r.verify_samples,
            "thresholds": r.thresholds,
            "tools": [package_version("ai-edge-litert"), package_version("tflite-micro")]}


def _verify_job(job: Job) -> VerifyResult:
    r = job.request
    return verify(job.model, data=r.eval_data or r.data, samples=r.verify_samples, thresholds=r.thresholds)


def _verify_problems(job: Job, result: dict[str, Any]) -> list[str]:
    return [f"verify: {c['check']}: {c['detail']}" for c in result.get("checks", []) if not c["passed"]]


STAGE = Stage("verify", run=_verify_job, cache_key=_verify_key, problems=_verify_problems)
