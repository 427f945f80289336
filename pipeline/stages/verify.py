"""`invoke verify`: with no device on the desk, host interpreters stand in for the hardware.

Each target is judged on its own runtime, against the float model, with the metrics of each
output's task (`pipeline.evaluation`):
  TFLM      the TFLM Python interpreter (the library the MCU links; in a worker process: it can
            abort). Its outputs are the truth for an MCU: accuracy, agreement and error are
            measured on them. As a cross-check, LiteRT's reference kernels (BUILTIN_REF, the
            twins of TFLM's; also in a worker) must agree with TFLM per output within a
            tolerance in quantized steps scaled to the output's bit width; where they differ, the
            first op that differs is named (index, op, Keras layer, LSB) from a run that keeps
            every tensor.
  Edge TPU  the quantized model on LiteRT's built-in kernels without delegates: what runs on the
            Edge TPU's host side, and the CPU reference a compiled model is compared with.
LiteRT with XNNPACK (the default delegate on a Linux host or phone) is shown for information
only: its int8 kernels round differently (up to 80 LSB on MobileNets), so nothing is gated on it.
A stateful model is reset before every sample on every runtime. `tflite_runtime` and a real Edge
TPU (Coral's pycoral) run when present.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..cache import content_hash
from ..data import SampleSet, load_samples
from ..errors import NotDeployableError, PipelineError
from ..evaluation import (
    OutputSpec,
    describe_outputs,
    format_limit,
    format_value,
    gates,
    output_metrics,
    parse_task_overrides,
    primary_accuracy,
)
from ..fileio import scratch_dir
from ..model import DTYPE_BITS, TensorSpec, Thresholds, quantization_scheme
from ..runtime.litert import (
    LiteRTModel,
    dequantize_array,
    litert_version,
    quantize_array,
)
from ..tflite_model import TFLiteModel, read_model
from ..versions import package_version
from .base import Job, Stage

DEFAULT_SAMPLES = 200
TARGET_NAMES = {"tflm": "TFLM", "edgetpu": "Edge TPU CPU model"}
CROSS_RUNTIMES = ("litert-ref", "tflm")
_WORST_SAMPLES = 3  # samples replayed with every tensor kept, to find the first differing op
# A float output has no quantized step: its tolerance is this share of its largest magnitude,
# per unit of --max-lsb
_FLOAT_TOLERANCE = 1e-5
_TFLM_RUNS = "TFLM runs the model"  # the check a TFLM that cannot run the model fails


@dataclass
class Backend:
    name: str
    library: str
    delegate: str | None
    ran: bool
    note: str = ""
    latency_ms: float | None = None
    accuracy: float | None = None
    role: str = ""  # what it stands for: "TFLM target", "Edge TPU target", "cross-check", "information"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "library": self.library, "delegate": self.delegate, "ran": self.ran,
                "note": self.note, "median_latency_ms": self.latency_ms, "accuracy": self.accuracy,
                "role": self.role}


@dataclass
class VerifyResult:
    samples: int
    source: str
    labelled: bool
    backends: list[Backend]
    comparisons: dict[str, Any]
    checks: list[dict[str, Any]] = field(default_factory=list)
    target: str = "all"
    scheme: str = "int8"
    outputs: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c["passed"] for c in self.checks)

    def passed_for(self, target: str) -> bool:
        return all(c["passed"] for c in checks_for(self.checks, target))

    def to_json(self) -> dict[str, Any]:
        # `median_latency_ms` is a measurement of this machine (like HIL's device times): the
        # only values in the report that are not a function of the inputs
        return {"samples": self.samples, "source": self.source, "labelled": self.labelled,
                "passed": self.passed, "target": self.target, "scheme": self.scheme,
                "backends": [b.to_json() for b in self.backends], "outputs": self.outputs,
                "metrics": self.metrics, "comparisons": self.comparisons, "thresholds": self.thresholds,
                "checks": self.checks}


def checks_for(checks: list[dict[str, Any]], target: str) -> list[dict[str, Any]]:
    """The checks that decide a deployment to `target` (all: every check)."""
    return [c for c in checks if target == "all" or c.get("target") in (target, "all", None)]


def _samples(model_path: Path, inputs: list[TensorSpec], data: str | None, limit: int,
             keras_inputs) -> SampleSet:
    if data:
        return load_samples(data, inputs, limit=limit, option="--data", tuple_order=keras_inputs)
    from .. import demo

    if demo.is_demo_model(model_path, [t.sample_shape for t in inputs]):
        return demo.split_samples("test", inputs, limit=limit)
    raise PipelineError("no samples to verify with", path=model_path, field="--data",
                        fix="pass --data samples.npz (labels as 'y' for accuracy)")


def model_inputs(model: TFLiteModel, samples: SampleSet) -> list[np.ndarray]:
    """The samples as each model input takes them (quantized with its own scale and zero point)."""
    out = []
    for name, t in zip(model.input_names(), model.main.input_tensors()):
        x = samples.inputs[name]
        dtype = np.dtype(t.dtype) if t.dtype != "float32" else np.dtype(np.float32)
        if np.issubdtype(dtype, np.integer) and t.quantization:
            x = quantize_array(x, dtype.type, t.scale, t.zero_point)
        out.append(x.astype(dtype, copy=False))
    return out


def _real(spec: OutputSpec, raw: np.ndarray) -> np.ndarray:
    if spec.scale is not None and np.issubdtype(raw.dtype, np.integer):
        return dequantize_array(raw, spec.scale, spec.zero_point)
    return raw.astype(np.float32)


def verify(model_path: Path, *, data: str | None = None, samples: int = DEFAULT_SAMPLES,
           thresholds: Thresholds = Thresholds(), target: str = "all", tasks: tuple[str, ...] = (),
           keras_inputs=None, keras_outputs=None, keras_model: str | None = None) -> VerifyResult:
    """`keras_inputs`/`keras_outputs`/`keras_model`: what quantize recorded of the Keras model
    (report.json `quantize`): tuple order, output names for labels, layer names for ops."""
    model = read_model(model_path)
    scheme = quantization_scheme(model)
    overrides = parse_task_overrides(tasks)
    inputs = [TensorSpec(n, t.shape, "float32") for n, t in zip(model.input_names(), model.main.input_tensors())]
    sample_set = _samples(model_path, inputs, data, samples, keras_inputs)
    labels = sample_set.label_arrays()
    specs = describe_outputs(model, labels, keras_outputs=keras_outputs, overrides=overrides)
    names_out = model.output_names()  # subgraph order, as the workers return them
    raw_inputs = model_inputs(model, sample_set)
    backends: list[Backend] = []
    comparisons: dict[str, Any] = {}
    checks: list[dict[str, Any]] = []
    metrics: dict[str, dict[str, Any]] = {}
    tflm_wanted, edgetpu_wanted = target in ("tflm", "all"), target in ("edgetpu", "all")

    def score(real: dict[str, np.ndarray]) -> dict[str, Any]:
        return {s.name: output_metrics(s, float_real[s.name], real[s.name],
                                       labels.get(s.labels_key) if s.labels_key else None, sample_set.inputs,
                                       sample_set.class_names) for s in specs}

    # float: the reference every target is measured against
    float_path = model_path.parent / "model_float.tflite"
    float_real = None
    if float_path.is_file():
        fmodel = LiteRTModel(float_path.read_bytes(), str(float_path))
        float_real = dict(zip(fmodel.output_names(), fmodel.run(sample_set)))
        float_backend = Backend("float LiteRT", litert_version(), "XNNPACK (default)", True,
                                latency_ms=fmodel.median_latency_ms(sample_set), role="reference")
    else:
        float_backend = Backend("float LiteRT", litert_version(), None, False, role="reference",
                                note=f"no {float_path.name} next to the model (run `invoke quantize`)")

    # the Edge TPU's CPU model: LiteRT's built-in kernels, no delegates
    builtin = LiteRTModel(model_path.read_bytes(), str(model_path), delegates=False)
    builtin_raw = dict(zip(builtin.output_names(), builtin.run(sample_set, raw=True)))
    builtin_real = {s.name: _real(s, builtin_raw[s.name]) for s in specs}
    b = Backend(f"{scheme} LiteRT", litert_version(), "none (built-in kernels)", True,
                latency_ms=builtin.median_latency_ms(sample_set), role="Edge TPU target (CPU model)")
    backends.append(b)
    if float_real is not None:
        if edgetpu_wanted and scheme == "int16x8":
            comparisons["edgetpu"] = "not measured: 16-bit activations do not run on the Edge TPU (--mode int8)"
        elif edgetpu_wanted:
            metrics["edgetpu"] = score(builtin_real)
            checks += _gate_checks("edgetpu", specs, metrics["edgetpu"], thresholds, scheme)
        b.accuracy = primary_accuracy(metrics.get("edgetpu") or score(builtin_real), specs)

    # LiteRT's default delegate: what a Linux host would run; information only
    xnn = LiteRTModel(model_path.read_bytes(), str(model_path))
    xnn_raw = dict(zip(xnn.output_names(), xnn.run(sample_set, raw=True)))
    xnn_lsb = _max_diff(xnn_raw, builtin_raw)
    backends.append(Backend(f"{scheme} LiteRT XNNPACK", litert_version(), "XNNPACK (default)", True,
                            latency_ms=xnn.median_latency_ms(sample_set), role="information",
                            accuracy=primary_accuracy(score({s.name: _real(s, xnn_raw[s.name]) for s in specs}), specs)
                            if float_real is not None else None,
                            note=f"max {xnn_lsb} LSB from the built-in kernels (not gated: XNNPACK rounds its own way)"))
    comparisons["xnnpack_vs_builtin_lsb"] = xnn_lsb

    if tflm_wanted:
        tflm_raw = _tflm(model, model_path, raw_inputs, names_out, specs, backends, checks, keras_model, scheme)
        if tflm_raw is not None:
            tflm_real = {s.name: _real(s, tflm_raw[s.name]) for s in specs}
            comparisons["litert_vs_tflm"] = _builtin_vs_tflm(builtin_raw, tflm_raw, specs)
            if float_real is not None:
                metrics["tflm"] = score(tflm_real)
                checks += _gate_checks("tflm", specs, metrics["tflm"], thresholds, scheme)
                backends[-1].accuracy = primary_accuracy(metrics["tflm"], specs)
            comparisons["cross_runtime"] = _cross_check(model, model_path, raw_inputs, names_out, specs, tflm_raw,
                                                        thresholds, backends, checks, keras_model, scheme)
    else:
        backends.append(Backend(f"{scheme} TFLM", package_version("tflite-micro"), None, False,
                                role="TFLM target", note=f"not run: --target {target}"))

    if float_real is not None:
        float_backend.accuracy = next((metrics[t][s.name].get("accuracy_float") for t in metrics for s in specs
                                       if s.task == "classification" and metrics[t][s.name].get("accuracy_float")
                                       is not None), None)
    backends.append(float_backend)
    backends.append(_tflite_runtime_backend(model_path, raw_inputs, builtin_raw, names_out))
    backends.append(_edgetpu_backend(model_path))
    return VerifyResult(samples=sample_set.count, source=sample_set.source, labelled=bool(labels),
                        backends=backends, comparisons=comparisons, checks=checks, target=target, scheme=scheme,
                        outputs=[s.to_json() for s in specs], metrics=metrics, thresholds=thresholds.to_json())


def _gate_checks(target: str, specs: list[OutputSpec], metrics: dict[str, Any], thresholds: Thresholds,
                 scheme: str = "int8") -> list:
    out = []
    for s in specs:
        m = metrics[s.name]
        for g in gates(s, m, thresholds):
            value = m.get(g.metric)
            out.append({**_check(f"{TARGET_NAMES[target]}: {s.label} ({s.task}) {g.label}", g.passed(value),
                                 f"{format_value(g, value)} ({format_limit(g)})", target),
                        "output": s.name, "metric": g.metric, "value": value, "limit": g.limit,
                        "fix": _GATE_FIX.get((target, scheme)) or _GATE_FIX["edgetpu"]})
    return out


def _abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer):
        return np.abs(a.astype(np.int64) - b.astype(np.int64))
    return np.abs(a.astype(np.float64) - b.astype(np.float64))


_GATE_FIX = {
    ("tflm", "int8"): "quantize with --mode int16x8 (TFLM runs 16-bit activations) or with more representative "
                      "calibration data (--data, --samples); the diagnosis names the layer that loses most",
    ("tflm", "int16x8"): "quantize with more representative calibration data (--data, --samples), or compare "
                         "--mode int8; the diagnosis names the layer that loses most",
    "edgetpu": "quantize with more representative calibration data (--data, --samples); the diagnosis "
               "names the layer that loses most",
}
_CROSS_FIX = ("the first differing op is where LiteRT's and TFLM's kernels part ways: check the tflite-micro "
              "version; when the outputs on TFLM meet their metrics, allow more with --max-lsb")


def _max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> int | float:
    return max(_abs_diff(a[k], b[k]).max().item() for k in a)


def _by_name(arrays: list[np.ndarray], names_out: list[str]) -> dict[str, np.ndarray]:
    return dict(zip(names_out, arrays))


def _tflm(model, model_path, raw_inputs, names_out, specs, backends, checks, keras_model, scheme):
    from ..runtime.tflm_runner import run_tflm_timed

    try:
        arrays, seconds = run_tflm_timed(model_path, raw_inputs)
    except PipelineError as exc:
        detail = exc.problem + _likely_tflm_cause(model, keras_model)
        backends.append(Backend(f"{scheme} TFLM", package_version("tflite-micro"), None, False, role="TFLM target",
                                note=detail))
        checks.append({**_check(_TFLM_RUNS, False, detail, "tflm"),
                       "fix": "run `invoke check` on the model: it names the ops TFLM lacks or aborts on"})
        return None
    backends.append(Backend(f"{scheme} TFLM", package_version("tflite-micro"), None, True, role="TFLM target",
                            latency_ms=round(1000 * float(np.median(seconds)), 4)))
    return _by_name(arrays, names_out)


def _likely_tflm_cause(model: TFLiteModel, keras_model: str | None) -> str:
    """What `check` would say: the ops whose kernels TFLM lacks or aborts on, by Keras layer."""
    from ..rules.tflm import static_check

    verdicts, problem, _ = static_check(model)
    bad = [v for v in verdicts if not v.supported]
    if problem:
        return f"; {problem}"
    if not bad:
        return ""
    layers = _layers(model, keras_model)
    return "; likely cause: " + "; ".join(f"{layers[v.index].label()}: {v.reason}" for v in bad[:3])


def _layers(model: TFLiteModel, keras_model: str | None):
    from ..layers import map_layers, read_keras_layers

    keras = None
    if keras_model and Path(keras_model).suffix in (".keras", ".h5", ".hdf5") and Path(keras_model).is_file():
        try:
            keras = read_keras_layers(keras_model)
        except PipelineError:
            keras = None
    return map_layers(model, keras)


def _builtin_vs_tflm(builtin_raw, tflm_raw, specs) -> dict[str, Any]:
    """LiteRT's optimized built-in kernels against TFLM: information (they round differently,
    e.g. a 1x1 CONV_2D by 1 LSB, which grows through a MobileNet)."""
    diffs = {s.name: _abs_diff(builtin_raw[s.name], tflm_raw[s.name]) for s in specs}
    worst = max(d.max().item() for d in diffs.values())
    first = None
    if worst:
        s = next(s for s in specs if diffs[s.name].max())
        flat = np.argwhere(diffs[s.name] > 0)[0]
        first = {"output": s.name, "sample": int(flat[0]), "index": [int(i) for i in flat[1:]],
                 "litert": builtin_raw[s.name][tuple(flat)].item(), "tflm": tflm_raw[s.name][tuple(flat)].item()}
    return {"max_lsb_difference": worst, "identical": worst == 0, "first_difference": first, "gated": False}


def _cross_check(model, model_path, raw_inputs, names_out, specs, tflm_raw, thresholds, backends, checks,
                 keras_model, scheme) -> dict[str, Any]:
    """LiteRT reference kernels vs TFLM, per output within its tolerance; the first op that
    differs when any output does."""
    from ..runtime.litert import run_isolated

    name = f"{scheme} LiteRT reference kernels vs TFLM"
    try:
        arrays, seconds = run_isolated(model_path, raw_inputs, "BUILTIN_REF")
    except PipelineError as exc:
        backends.append(Backend(f"{scheme} LiteRT reference kernels", litert_version(), "none (BUILTIN_REF)", False,
                                role="cross-check", note=exc.problem))
        checks.append(_check(name, False, f"LiteRT's reference kernels could not run: {exc.problem}", "tflm"))
        return {"between": list(CROSS_RUNTIMES), "error": exc.problem, "outputs": []}
    backends.append(Backend(f"{scheme} LiteRT reference kernels", litert_version(), "none (BUILTIN_REF)", True,
                            role="cross-check", latency_ms=round(1000 * float(np.median(seconds)), 4)))
    ref_raw = _by_name(arrays, names_out)
    rows = []
    per_sample = np.zeros(len(raw_inputs[0]))
    for s in specs:
        a, b = ref_raw[s.name], tflm_raw[s.name]
        diff = _abs_diff(a, b)
        if np.issubdtype(a.dtype, np.integer):
            bits = DTYPE_BITS.get(s.dtype, 8)
            tolerance = thresholds.max_lsb_litert_vs_tflm * 2 ** max(bits - 8, 0)
            unit = f"{s.dtype} LSB"
        else:
            bits = None
            tolerance = thresholds.max_lsb_litert_vs_tflm * _FLOAT_TOLERANCE * float(np.abs(a).max() or 1.0)
            unit = "absolute"
        worst = diff.max().item() if diff.size else 0
        per_sample = np.maximum(per_sample, diff.reshape(len(diff), -1).max(axis=1) / max(tolerance, 1e-30))
        rows.append({"output": s.name, "keras_name": s.keras_name, "dtype": s.dtype, "bits": bits, "unit": unit,
                     "max_lsb": worst, "tolerance_lsb": tolerance,
                     "differing_fraction": round(float(np.mean(diff > 0)), 6) if diff.size else 0.0,
                     "passed": bool(worst <= tolerance)})
    result: dict[str, Any] = {"between": list(CROSS_RUNTIMES), "outputs": rows,
                              "max_lsb_difference": max(r["max_lsb"] for r in rows),
                              "identical": all(r["max_lsb"] == 0 for r in rows),
                              "first_divergence": None, "first_divergence_error": None}
    if not result["identical"]:
        worst_samples = sorted(np.argsort(-per_sample, kind="stable")[:_WORST_SAMPLES].tolist())
        try:
            result["first_divergence"] = _first_divergence(model, model_path, raw_inputs, worst_samples, keras_model)
            result["first_divergence_samples"] = worst_samples
        except PipelineError as exc:
            result["first_divergence_error"] = exc.problem
    passed = all(r["passed"] for r in rows)
    parts = [f"`{r['keras_name'] or r['output']}` {r['max_lsb']:g} (tolerance {r['tolerance_lsb']:g})" for r in rows]
    detail = f"max difference per output in {rows[0]['unit'] if rows else 'LSB'}: " + ", ".join(parts)
    fd = result["first_divergence"]
    if fd:
        detail += (f"; first differs at {fd['label']}: {fd['max_lsb']:g} LSB on "
                   f"{100 * fd['differing_fraction']:.2g}% of its values")
    elif result["identical"]:
        detail = "bit-exact on every output"
    checks.append({**_check(name, passed, detail, "tflm"), "fix": _CROSS_FIX})
    return result


def _first_divergence(model, model_path, raw_inputs, samples: list[int], keras_model) -> dict[str, Any] | None:
    from ..divergence import first_divergence
    from ..runtime.tensor_capture import capture_tensors, op_outputs

    picked = [x[samples] for x in raw_inputs]
    outs = {rt: op_outputs(model, capture_tensors(model_path, picked, rt)) for rt in CROSS_RUNTIMES}
    found = first_divergence(outs[CROSS_RUNTIMES[0]], outs[CROSS_RUNTIMES[1]], model, tolerance=0,
                             names=CROSS_RUNTIMES, layers=_layers(model, keras_model))
    return found.to_json() if found else None


def _check(name: str, passed: bool, detail: str, target: str = "all") -> dict[str, Any]:
    return {"check": name, "passed": bool(passed), "detail": detail, "target": target}


_TFLITE_RUNTIME_WORKER = """
import sys, json, numpy as np
from tflite_runtime.interpreter import Interpreter
it = Interpreter(model_path=sys.argv[1]); it.allocate_tensors()
data = np.load(sys.argv[2])
ins = it.get_input_details(); outs = it.get_output_details()
res = {o["name"]: [] for o in outs}
for n in range(len(data["input_0"])):
    it.reset_all_variables()
    for i, d in enumerate(ins):
        it.set_tensor(d["index"], data[f"input_{i}"][n:n + 1])
    it.invoke()
    for o in outs:
        res[o["name"]].append(it.get_tensor(o["index"])[0].tolist())
print(json.dumps([res[o["name"]] for o in outs]))
"""


def _tflite_runtime_backend(model_path, q_inputs, builtin_raw, names_out) -> Backend:
    """Optional: the last tflite-runtime (2.14) needs numpy < 2, so it runs in its own process."""
    import importlib.util

    if importlib.util.find_spec("tflite_runtime") is None:
        return Backend("tflite_runtime", "tflite-runtime", None, False, note="not installed (optional)",
                       role="information")
    with scratch_dir("tflite-runtime-") as tmp:
        np.savez(Path(tmp) / "in.npz", **{f"input_{i}": a for i, a in enumerate(q_inputs)})
        proc = subprocess.run([sys.executable, "-c", _TFLITE_RUNTIME_WORKER, str(model_path),
                               str(Path(tmp) / "in.npz")], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        return Backend("tflite_runtime", package_version("tflite-runtime"), None, False, role="information",
                       note=f"failed (it needs numpy < 2): {last[:200]}")
    outs = [np.array(o) for o in json.loads(proc.stdout)]
    same = all(np.array_equal(builtin_raw[n], o) for n, o in zip(names_out, outs))
    return Backend("tflite_runtime", package_version("tflite-runtime"), None, True, role="information",
                   note="identical to LiteRT" if same else "differs from LiteRT")


def _edgetpu_backend(model_path: Path) -> Backend:
    from ..runtime.edgetpu import edgetpu_device_status, run_on_device

    compiled = sorted((model_path.parent / "edgetpu").glob("*_edgetpu.tflite"))
    device = edgetpu_device_status()
    if not device.get("present"):
        return Backend("Edge TPU", "pycoral", "libedgetpu", False, note=device["reason"], role="Edge TPU device")
    if not compiled:
        return Backend("Edge TPU", "pycoral", "libedgetpu", False, note="no compiled model: run `invoke compile`",
                       role="Edge TPU device")
    run = run_on_device(compiled[0], model_path)
    return Backend("Edge TPU", "pycoral", "libedgetpu", True, latency_ms=run["median_latency_ms"],
                   role="Edge TPU device",
                   note=f"max difference to the CPU int8 model {run['max_output_difference_lsb']} LSB")


def raise_if_failed(result: VerifyResult, target: str = "all") -> None:
    failed = [f"{c['check']}: {c['detail']}" for c in checks_for(result.checks, target) if not c["passed"]]
    if failed:
        raise NotDeployableError(f"verification failed: {'; '.join(failed)}", field="verify",
                                 fix="see the report; thresholds are options of `invoke verify`")


# --- registry entry ----------------------------------------------------------------------------

def _keras_facts(job: Job) -> dict[str, Any]:
    """What quantize recorded of the Keras model (this run's, or the model folder's report)."""
    q = job.results.get("quantize") or {}
    return {"keras_inputs": q.get("keras_inputs"), "keras_outputs": q.get("keras_outputs"),
            "keras_model": q.get("source_model")}


def _verify_key(job: Job) -> dict[str, Any]:
    r = job.request
    return {"model": content_hash(job.model), "data": content_hash(r.eval_data or r.data),
            "float": content_hash(job.model.parent / "model_float.tflite"), "samples": r.verify_samples,
            "thresholds": r.thresholds, "target": r.target, "tasks": list(r.tasks), **_keras_facts(job),
            "tools": [package_version("ai-edge-litert"), package_version("tflite-micro")]}


def _verify_job(job: Job) -> VerifyResult:
    r = job.request
    return verify(job.model, data=r.eval_data or r.data, samples=r.verify_samples, thresholds=r.thresholds,
                  target=r.target, tasks=r.tasks, **_keras_facts(job))


def _verify_problems(job: Job, result: dict[str, Any]) -> list[str]:
    """The failed checks, less verify's "TFLM runs the model" when the check stage already gave
    TFLM's refusal in this chain (the same abort, said again, with `invoke check` as its fix)."""
    refused = not ((job.results.get("check") or {}).get("tflm") or {}).get("compatible", True)
    return [f"verify: {c['check']}: {c['detail']}" + (f" (fix: {c['fix']})" if c.get("fix") else "")
            for c in checks_for(result.get("checks", []), job.request.target)
            if not c["passed"] and not (refused and c["check"] == _TFLM_RUNS)]


STAGE = Stage("verify", run=_verify_job, cache_key=_verify_key, problems=_verify_problems)
