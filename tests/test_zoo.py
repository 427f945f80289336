"""The model zoo (tests/zoo.py) through `invoke deploy`, as a user runs it: a subprocess started in
another folder, every path relative to it. Each member deploys (exit 0) or is refused for a true
reason, named by Keras layer, with a fix; none crashes, none prints a traceback.

Models are built once per session, in child processes, into a cache keyed by the hash of the
zoo's source (beside pytest's own temporary folders, so a second local session reuses them; CI
builds them afresh). The deploys run two at a time in the background while the tests below
assert on them; `--samples` and the evaluation set are small. The heavy members
(MobileNetV1/V2 at 96x96) are marked `zoo_heavy` (they run, CI included; `-m "not zoo_heavy"` leaves them out); the
timings of every build and deploy land in `zoo_times.json` in the session's temporary folder.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

TESTS = Path(__file__).resolve().parent
CALIBRATION_SAMPLES = 64
EVAL_SAMPLES = 100
WORKERS = 2  # deploys at once (CI has 2 cores)
HEAVY = {"mobilenet_v1_vww", "mobilenet_v2_035"}


@dataclass(frozen=True)
class Deploy:
    """One `invoke deploy` of a member; `model`/`data` default to the member's saved files."""

    extra: tuple[str, ...] = ()
    model: str | None = None
    data: str | None = None
    name: str | None = None


RUNS: dict[str, list[Deploy]] = {
    # heavy first: the pool starts the longest jobs first
    "mobilenet_v2_035": [Deploy(), Deploy(("--target", "edgetpu"))],
    "mobilenet_v1_vww": [Deploy()],
    "lstm": [Deploy(("--target", "tflm")), Deploy(("--target", "tflm", "--mode", "int16x8"), name="lstm_int16x8")],
    "two_in_two_out": [Deploy(data="zoodata:two_in_two_out"),
                       Deploy(("--target", "edgetpu", "--max-lsb", "0"), data="zoodata:two_in_two_out"),
                       Deploy(("--target", "tflm", "--max-lsb", "0"), data="zoodata:two_in_two_out")],
    "ds_cnn_kws": [Deploy()],
    "resnet8_ic": [Deploy()],
    "fc_autoencoder_ad": [Deploy()],
    "gru": [Deploy()],
    "resizing": [Deploy()],
    "layer_norm": [Deploy()],
    "gelu": [Deploy()],
    "lambda_sin": [Deploy(), Deploy(model="models/lambda_sin_savedmodel", name="lambda_sin_sm")],
}

ZOODATA = '''"""Calibration samples as users write them: tuples in the Keras model's input order."""
import numpy as np


def two_in_two_out():
    with np.load("models/two_in_two_out_cal.npz") as cal:
        unit, percent = cal["unit"], cal["percent"]
    for i in range(len(unit)):
        yield unit[i], percent[i]
'''


@dataclass
class Run:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    report: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.stdout + self.stderr


def _zoo_key() -> str:
    from pipeline.versions import package_version

    h = hashlib.sha256((TESTS / "zoo.py").read_bytes())
    h.update(f"{package_version('keras')} {package_version('tensorflow-cpu', 'tensorflow')}".encode())
    return h.hexdigest()[:16]


_BUILD = """
import sys, json, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import numpy as np
import zoo
folder = Path(sys.argv[2])
for name in sys.argv[3:]:
    done = folder / f"{name}.built"
    if done.exists():
        continue
    start = time.perf_counter()
    entry = zoo.build(name)
    zoo.save(entry, folder)
    done.write_text(json.dumps({"seconds": round(time.perf_counter() - start, 2), "epochs": entry.epochs}))
    print("ZOO-BUILT", name, flush=True)
"""


class Zoo:
    """Builds the members the selected tests need and deploys them, two at a time."""

    def __init__(self, cache: Path, work: Path, members: list[str]):
        self.cache, self.work = cache, work
        self.times: dict[str, dict] = {}
        self._lock = threading.Lock()
        (work / "models").mkdir(parents=True, exist_ok=True)
        (work / "zoodata.py").write_text(ZOODATA)
        self.pool = ThreadPoolExecutor(max_workers=WORKERS)
        wanted = [m for m in RUNS if m in members]  # longest deploys first
        self.built = {name: threading.Event() for name in wanted}
        self.builder = threading.Thread(target=self._build, args=(wanted,), daemon=True)
        self.builder.start()
        self.futures: dict[str, Future] = {name: self.pool.submit(self._deploy_all, name) for name in wanted}

    def _build(self, names: list[str]) -> None:
        """One process builds them in order (one TensorFlow import), saying when each is ready."""
        start = time.perf_counter()
        try:
            self.cache.mkdir(parents=True, exist_ok=True)
            proc = subprocess.Popen([sys.executable, "-c", _BUILD, str(TESTS), str(self.cache), *names],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                    stdin=subprocess.DEVNULL)
            for line in proc.stdout:
                if line.startswith("ZOO-BUILT "):
                    name = line.split()[1]
                    self.built[name].set()
                    with self._lock:
                        self.times[f"built {name}"] = {"seconds": round(time.perf_counter() - start, 1)}
            err = proc.stderr.read()
            with self._lock:
                self.times["build"] = {"seconds": round(time.perf_counter() - start, 1),
                                       "returncode": proc.wait(), "stderr": err[-2000:] if proc.returncode else ""}
        finally:
            for event in self.built.values():
                event.set()

    def _deploy_all(self, name: str) -> list[Run]:
        self.built[name].wait()
        if not (self.cache / f"{name}.built").exists():
            raise RuntimeError(f"zoo member {name} was not built: {self.times}")
        self._stage(name)
        return [self._deploy(name, d) for d in RUNS[name]]

    def _stage(self, name: str) -> None:
        """The member's files in the work folder: the model, the first calibration samples, a
        small labelled evaluation set."""
        models = self.work / "models"
        for src in self.cache.glob(f"{name}*"):
            if src.name.endswith(".built"):
                continue
            dst = models / src.name
            if src.is_dir():
                import shutil

                shutil.copytree(src, dst, dirs_exist_ok=True)
            elif src.name.endswith("_eval.npz"):  # every k-th sample: classes (and anomalies) stay mixed
                with np.load(src) as f:
                    step = max(1, len(f[f.files[0]]) // EVAL_SAMPLES)
                    np.savez(dst, **{k: f[k][::step][:EVAL_SAMPLES] for k in f.files})
            else:
                dst.write_bytes(src.read_bytes())

    def _deploy(self, name: str, d: Deploy) -> Run:
        run_name = d.name or name
        args = ["deploy", "--model", d.model or f"models/{name}.keras", "--data", d.data or f"models/{name}_cal.npz",
                "--eval-data", f"models/{name}_eval.npz", "--out", "build", "--name", run_name,
                "--samples", str(CALIBRATION_SAMPLES), "--verify-samples", str(EVAL_SAMPLES), *d.extra]
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), *args], cwd=self.work,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=1800)
        seconds = round(time.perf_counter() - start, 1)
        report_path = self.work / "build" / run_name / "report.json"
        report = json.loads(report_path.read_text()) if report_path.is_file() else {}
        with self._lock:
            self.times[" ".join(args[1:3] + list(d.extra))] = {"seconds": seconds, "returncode": proc.returncode}
        return Run(args, proc.returncode, proc.stdout, proc.stderr, seconds, report)

    def runs(self, name: str) -> list[Run]:
        return self.futures[name].result()

    def close(self, times_path: Path) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        times_path.write_text(json.dumps(self.times, indent=1))


def _selected_members(session) -> list[str]:
    names = set()
    for item in session.items:
        if item.module.__name__ == __name__:
            names.update(m for m in RUNS if item.name == f"test_{m}" or item.name.startswith(f"test_{m}_"))
    return sorted(names)


@pytest.fixture(scope="session")
def zoo(request, tmp_path_factory):
    cache = tmp_path_factory.getbasetemp().parent / f"zoo-cache-{_zoo_key()}"
    work = tmp_path_factory.mktemp("zoo")
    z = Zoo(cache, work, _selected_members(request.session))
    yield z
    z.close(work / "zoo_times.json")


# --- what every run must be ---------------------------------------------------------------------

def clean(run: Run, code: int) -> Run:
    """Exit `code`, no traceback, and an error is one line naming the fix."""
    assert run.returncode == code, f"{run.args}: exit {run.returncode}\n{run.stdout}\n{run.stderr}"
    assert "Traceback" not in run.text
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    if code:
        assert len(errors) == 1 and "(fix: " in errors[0], run.stderr
    return run


def deployable(run: Run) -> dict:
    clean(run, 0)
    assert "DEPLOYABLE" in run.stdout
    return run.report


def tflm_metrics(report: dict, output: int = 0) -> dict:
    v = report["verify"]
    return v["metrics"]["tflm"][v["outputs"][output]["name"]]


def checks(report: dict, target: str) -> list[dict]:
    return [c for c in report["verify"]["checks"] if c["target"] == target]


# --- MLPerf Tiny ------------------------------------------------------------------------------------

def test_ds_cnn_kws(zoo):
    report = deployable(zoo.runs("ds_cnn_kws")[0])
    m = tflm_metrics(report)
    assert report["verify"]["outputs"][0]["task"] == "classification"
    assert m["accuracy"] >= 0.9 and m["accuracy_drop_points"] <= 1.0
    assert len(m["confusion"]) == 12 and sum(map(sum, m["confusion"])) == EVAL_SAMPLES
    assert report["check"]["edgetpu"]["mapped_ops"] == report["check"]["edgetpu"]["total_ops"]
    assert report["verify"]["comparisons"]["cross_runtime"]["max_lsb_difference"] <= 32


@pytest.mark.zoo_heavy
def test_mobilenet_v1_vww(zoo):
    report = deployable(zoo.runs("mobilenet_v1_vww")[0])
    assert tflm_metrics(report)["accuracy"] >= 0.9
    assert report["check"]["tflm"]["arena_bytes"] > 50_000


def test_resnet8_ic(zoo):
    report = deployable(zoo.runs("resnet8_ic")[0])
    assert tflm_metrics(report)["accuracy"] >= 0.9
    assert all(c["passed"] for c in report["verify"]["checks"])


def test_fc_autoencoder_ad(zoo):
    """An autoencoder is scored as one: reconstruction error and anomaly AUC, on TFLM."""
    report = deployable(zoo.runs("fc_autoencoder_ad")[0])
    out = report["verify"]["outputs"][0]
    assert out["task"] == "reconstruction" and out["reproduces_input"] == "features"
    m = tflm_metrics(report)
    assert m["auc_float"] > 0.8 and abs(m["auc_drop"]) <= 0.01
    assert m["error_vs_spread"] < 0.1 and "accuracy" not in m
    assert {c["metric"] for c in checks(report, "tflm") if "metric" in c} == \
        {"error_vs_spread", "clipped_fraction", "auc_drop"}


# --- the usual user models ----------------------------------------------------------------------

@pytest.mark.zoo_heavy
def test_mobilenet_v2_035(zoo):
    """Untrained, its logits barely vary: TFLM's softmax aborts (a true refusal, named by op and
    layer), while the Edge TPU's CPU model computes what the float model does."""
    both, edgetpu = zoo.runs("mobilenet_v2_035")
    clean(both, 1)
    why = [line for line in both.stdout.splitlines() if line.lstrip().startswith("why")]
    assert any("TFLM's softmax aborts" in line and "(layer `predictions`" in line for line in why), both.stdout
    report = deployable(edgetpu)
    assert report["check"]["edgetpu"]["mapped_ops"] == 65
    assert report["verify"]["target"] == "edgetpu" and not checks(report, "tflm")


def test_two_in_two_out(zoo):
    """Tuples follow the Keras input order (unit in [0, 1], percent in [0, 100]); each output is
    scored by its task (a regression head first, a classifier second, labels per output)."""
    run, edgetpu_strict, tflm_strict = zoo.runs("two_in_two_out")
    report = deployable(run)
    q = report["quantize"]
    assert q["keras_inputs"] == ["unit", "percent"] and q["keras_outputs"] == ["value", "kind"]
    scale = {t["name"]: t["scale"] for t in q["inputs"]}
    assert scale["percent"] == pytest.approx(100 / 255, rel=0.05) and scale["unit"] == pytest.approx(1 / 255, rel=0.05)
    value, kind = report["verify"]["outputs"]
    assert (value["keras_name"], value["task"], value["labels"]) == ("value", "regression", "y_value")
    assert (kind["keras_name"], kind["task"], kind["labels"]) == ("kind", "classification", "y_kind")
    mv, mk = tflm_metrics(report, 0), tflm_metrics(report, 1)
    assert mv["error_vs_spread"] < 0.1 and mv["clipped_fraction"] == 0 and mv["rmse_vs_labels"] < 0.5
    assert mk["accuracy"] >= 0.85
    cross = report["verify"]["comparisons"]["cross_runtime"]
    assert [r["tolerance_lsb"] for r in cross["outputs"]] == [32, 32]
    # LiteRT's reference kernels and TFLM part ways at a FULLY_CONNECTED (1 LSB): named
    assert cross["max_lsb_difference"] > 0 and cross["first_divergence"]["op"] == "FULLY_CONNECTED"
    assert cross["first_divergence"]["keras_layer"]
    # --target edgetpu counts the Edge TPU's checks only; the same limit fails the TFLM target
    deployable(edgetpu_strict)
    clean(tflm_strict, 1)
    why = [line for line in tflm_strict.stdout.splitlines() if line.lstrip().startswith("why")]
    assert any("LiteRT reference kernels vs TFLM" in line and "first differs at op" in line for line in why), \
        tflm_strict.stdout
    # the last line counts the reasons the summary gave; it does not repeat them
    assert re.search(r"not deployable to tflm: \d+ reasons? \(the `why` lines above", tflm_strict.stderr), \
        tflm_strict.stderr


def test_lstm(zoo):
    """Keras 3 LSTM converts unrolled (TF 2.21's calibrator crashes on its while loop) and runs on
    TFLM in int8 and int16x8 (its int8 SPLIT, float in some runs of TF's MLIR quantizer, is
    integer in every run: pipeline/runtime/convert.py retries it); LiteRT's reference kernels part from TFLM at the cell's first
    FULLY_CONNECTED (1 LSB) and 16 steps grow it: within the tolerance, reported, named."""
    int8, int16 = zoo.runs("lstm")
    report = deployable(int8)
    assert report["quantize"]["fully_integer"] and report["quantize"]["quantizer"]["name"] in ("mlir", "legacy")
    rewrite = report["quantize"]["rewrites"][0]
    assert (rewrite["layer"], rewrite["class"], rewrite["change"]) == ("lstm", "LSTM", "unroll=True")
    assert rewrite["float_max_abs_difference"] < 1e-5
    assert tflm_metrics(report)["accuracy_drop_points"] <= 1.0 and tflm_metrics(report)["accuracy"] >= 0.8
    (row,) = report["verify"]["comparisons"]["cross_runtime"]["outputs"]
    assert 0 < row["max_lsb"] <= row["tolerance_lsb"] == 32
    fd = report["verify"]["comparisons"]["cross_runtime"]["first_divergence"]
    assert (fd["op"], fd["keras_layer"], fd["max_lsb"]) == ("FULLY_CONNECTED", "lstm", 1.0)
    report = deployable(int16)
    assert report["verify"]["scheme"] == "int16x8" and report["quantize"]["mode"] == "int16x8"
    assert tflm_metrics(report)["accuracy_drop_points"] <= 1.0
    assert report["verify"]["comparisons"]["cross_runtime"]["outputs"][0]["tolerance_lsb"] == 32 * 256
    assert [b["name"] for b in report["verify"]["backends"] if b["role"] == "TFLM target"] == ["int16x8 TFLM"]


def test_gru(zoo):
    """Unrolled, the GRU runs on TFLM; the Edge TPU maps only the first op (UNPACK has no kernel there)."""
    run = clean(zoo.runs("gru")[0], 1)
    report = run.report
    assert all(c["passed"] for c in checks(report, "tflm"))
    assert [r.split(":")[0] for r in report["deploy"]["reasons"]] == ["Edge TPU"]
    ops = report["check"]["edgetpu"]["ops"]
    assert any(o["op"] == "UNPACK" and not o["mapped"] for o in ops)
    assert "the Edge TPU cannot map the UNPACK" in report["quantize"]["rewrites"][0]["note"]


def test_gelu(zoo):
    """GELU is an int8 op neither target has a kernel for: refused, the Dense layer named, ReLU offered."""
    run = clean(zoo.runs("gelu")[0], 1)
    (fix,) = run.report["quantize"]["layer_fixes"]
    assert (fix["op"], fix["layer_class"], fix["activation"], fix["in_float"]) == ("GELU", "Dense", "gelu", False)
    assert "relu" in fix["replacement"]
    assert f"(layer `{fix['keras_layer']}`, Dense) has no kernel on either target" in run.stdout


def test_layer_norm(zoo):
    """LayerNormalization leaves NEG in float: the model is written, refused as full-integer on
    both targets with the layer and BatchNormalization; TFLM's run of the hybrid is measured."""
    run = clean(zoo.runs("layer_norm")[0], 1)
    report = run.report
    (op,) = report["quantize"]["float_ops"]
    assert (op["op"], op["layer_class"]) == ("NEG", "LayerNormalization") and "BatchNormalization" in op["replacement"]
    assert report["quantize"]["fully_integer"] is False
    assert any(r.startswith("quantize: op ") and "TFLM runs it as a float hybrid" in r for r in report["deploy"]["reasons"])
    assert report["check"]["tflm"]["compatible"] and tflm_metrics(report)["accuracy"] >= 0.9


def test_resizing(zoo):
    """Resizing 24 -> 32 is not an integer scale: the Edge TPU leaves it on the CPU (true); TFLM runs it."""
    run = clean(zoo.runs("resizing")[0], 1)
    report = run.report
    assert [r.split(":")[0] for r in report["deploy"]["reasons"]] == ["Edge TPU"]
    unmapped = [o for o in report["check"]["edgetpu"]["ops"] if not o["mapped"]]
    assert unmapped[0]["op"] == "RESIZE_BILINEAR" and unmapped[0]["fix"]
    layer = next(o["keras_layer"] for o in report["quantize"]["op_layers"] if o["op_index"] == unmapped[0]["index"])
    assert layer.startswith("resizing")
    assert f"op {unmapped[0]['index']} RESIZE_BILINEAR (layer `{layer}`)" in run.stdout and "(fix: resize 24x24" in run.stdout
    assert all(c["passed"] for c in checks(report, "tflm"))


def test_lambda_sin(zoo):
    """A Lambda's Python code: Keras refuses it in safe mode (said so, with the SavedModel route);
    the SavedModel converts with SIN left float: refused with the layer and the host fix."""
    keras_file, saved = zoo.runs("lambda_sin")
    clean(keras_file, 2)
    assert "Lambda" in keras_file.stderr and "SavedModel" in keras_file.stderr
    assert "model.save('model.keras')" not in keras_file.stderr
    clean(saved, 1)
    (op,) = saved.report["quantize"]["float_ops"]
    assert (op["op"], op["keras_layer"]) == ("SIN", "sin") and "host" in op["replacement"]
