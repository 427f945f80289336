"""`invoke verify`: each target judged on its own runtime (TFLM; the Edge TPU's CPU model on
LiteRT), LiteRT's reference kernels cross-checking TFLM within a tolerance scaled to the bit width,
thresholds per target, and a model the TFLM interpreter cannot run is a failed verification,
not a crash."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from conftest import ROOT, invoke_cmd, as_task
from pipeline.errors import NotDeployableError, PipelineError
from pipeline.stages.verify import Thresholds, raise_if_failed, verify
from tflite_builder import ModelBuilder


@pytest.fixture(scope="module")
def demo_verified(demo_int8):
    return as_task("verify", demo_int8.quantized_model, verify_samples=120)


def test_demo_interpreters_agree(demo_verified, demo_int8):
    r = demo_verified
    assert r.passed and r.samples == 120 and r.labelled and r.source == "demo test split"
    by_name = {b.name: b for b in r.backends}
    assert by_name["int8 LiteRT"].ran and by_name["int8 TFLM"].ran and by_name["float LiteRT"].ran
    assert by_name["int8 LiteRT"].delegate == "none (built-in kernels)"
    assert by_name["int8 LiteRT reference kernels"].ran and by_name["int8 LiteRT reference kernels"].role == "cross-check"
    assert by_name["int8 TFLM"].library.startswith("tflite-micro ") and by_name["int8 TFLM"].role == "TFLM target"
    assert r.comparisons["litert_vs_tflm"]["identical"] and r.comparisons["litert_vs_tflm"]["gated"] is False
    cross = r.comparisons["cross_runtime"]
    assert cross["between"] == ["litert-ref", "tflm"] and cross["identical"]
    assert [(o["dtype"], o["tolerance_lsb"], o["passed"]) for o in cross["outputs"]] == [("int8", 32, True)]
    assert {c["target"] for c in r.checks} == {"tflm", "edgetpu"}
    assert r.metrics["tflm"]["output_0"]["top1_agreement"] >= 0.95
    assert all(b.latency_ms and b.latency_ms > 0 for b in r.backends if b.ran)
    assert by_name["int8 LiteRT"].accuracy == by_name["int8 TFLM"].accuracy > 0.9
    assert not by_name["Edge TPU"].ran and by_name["Edge TPU"].note
    report = json.loads((demo_int8.output_dir / "report.json").read_text())
    assert report["verify"]["passed"] is True
    latencies = [b["median_latency_ms"] for b in report["verify"]["backends"] if b["ran"]]
    assert latencies and all(t > 0 for t in latencies)
    assert "median latency (this host)" in (demo_int8.output_dir / "report.md").read_text()


def test_thresholds_fail_with_exit_1(demo_int8):
    r = verify(demo_int8.quantized_model, samples=40, thresholds=Thresholds(min_top1_agreement=1.01))
    assert not r.passed
    failed = [c for c in r.checks if not c["passed"]]
    assert [(c["target"], c["metric"]) for c in failed] == [("edgetpu", "top1_agreement"), ("tflm", "top1_agreement")]
    assert all(c["fix"] for c in failed)
    with pytest.raises(NotDeployableError, match="verification failed") as info:
        raise_if_failed(r)
    assert info.value.exit_code == 1


def test_model_tflm_cannot_run_fails_verification(tmp_path):
    mb = ModelBuilder()
    x, y = mb.tensor("x", (1, 10), scale=0.1), mb.tensor("y", (1, 10), scale=0.1)
    mb.op("GELU", [x], [y])
    (tmp_path / "gelu.tflite").write_bytes(mb.build([x], [y]))
    np.save(tmp_path / "d.npy", np.zeros((5, 10), np.float32))
    r = verify(tmp_path / "gelu.tflite", data=str(tmp_path / "d.npy"))
    tflm = next(b for b in r.backends if b.name == "int8 TFLM")
    assert not tflm.ran and "likely cause: op 0 GELU" in tflm.note
    assert not r.passed and [c["check"] for c in r.checks if not c["passed"]] == ["TFLM runs the model"]
    assert r.passed_for("edgetpu")  # the Edge TPU's CPU model does not care


def test_needs_samples_for_a_user_model(tmp_path):
    mb = ModelBuilder()
    x, y = mb.tensor("x", (1, 4)), mb.tensor("y", (1, 4))
    mb.op("RELU", [x], [y])
    (tmp_path / "m.tflite").write_bytes(mb.build([x], [y]))
    with pytest.raises(PipelineError, match="no samples to verify with") as info:
        verify(tmp_path / "m.tflite")
    assert info.value.exit_code == 2 and "--data" in info.value.fix


def test_invoke_verify_end_to_end(demo_int8):
    ok = subprocess.run(invoke_cmd() + ["verify", "--model", str(demo_int8.quantized_model), "--samples", "50"],
                        cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "verify: 50 samples of demo test split: PASS" in ok.stdout and "delegate: XNNPACK" in ok.stdout
    bad = subprocess.run(invoke_cmd() + ["verify", "--model", str(demo_int8.quantized_model),
                                         "--min-agreement", "abc"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "--min-agreement" in bad.stderr and "Traceback" not in bad.stderr


def test_model_without_signatures(tmp_path):
    """Coral's and older converters' models have no SignatureDef: run by tensor name."""
    mb = ModelBuilder()
    x, y = mb.tensor("x", (1, 10), scale=0.1), mb.tensor("y", (1, 10), scale=0.1)
    mb.op("RELU", [x], [y])
    (tmp_path / "m.tflite").write_bytes(mb.build([x], [y]))
    np.save(tmp_path / "d.npy", np.linspace(-1, 1, 50, dtype=np.float32).reshape(5, 10))
    r = verify(tmp_path / "m.tflite", data=str(tmp_path / "d.npy"))
    assert r.comparisons["litert_vs_tflm"]["identical"] and r.passed


def test_target_edgetpu_runs_and_counts_only_the_edge_tpu_model(demo_int8):
    r = verify(demo_int8.quantized_model, samples=40, target="edgetpu",
               thresholds=Thresholds(max_lsb_litert_vs_tflm=0))
    tflm = next(b for b in r.backends if b.role == "TFLM target")
    assert not tflm.ran and tflm.note == "not run: --target edgetpu"
    assert r.checks and {c["target"] for c in r.checks} == {"edgetpu"} and r.passed
    assert "cross_runtime" not in r.comparisons and list(r.metrics) == ["edgetpu"]


@pytest.fixture(scope="module")
def demo_int16x8(run_quantize):
    return run_quantize(name="demo_16x8_verify", mode="int16x8")


def test_int16x8_is_named_and_its_tolerance_scaled(demo_int16x8, tmp_path):
    from pipeline import demo

    split = demo.digits_split()
    np.savez(tmp_path / "test.npz", x=split.x_test[:40], y=split.y_test[:40])
    r = verify(demo_int16x8.quantized_model, data=str(tmp_path / "test.npz"))
    assert r.scheme == "int16x8"
    names = {b.name for b in r.backends}
    assert {"int16x8 TFLM", "int16x8 LiteRT", "int16x8 LiteRT reference kernels"} <= names
    (row,) = r.comparisons["cross_runtime"]["outputs"]
    assert (row["dtype"], row["bits"], row["tolerance_lsb"]) == ("int16", 16, 32 * 256)
    assert "16-bit activations" in r.comparisons["edgetpu"] and "edgetpu" not in r.metrics
    assert r.passed_for("tflm")


def _sigmoid_pair(folder):
    """A one-wide sigmoid output (a binary classifier), as int8 and float twins."""
    for name, dtype in (("model_int8.tflite", "int8"), ("model_float.tflite", "float32")):
        mb = ModelBuilder()
        x = mb.tensor("x", (1, 1), dtype, scale=0.05)
        y = mb.tensor("y", (1, 1), dtype, scale=1 / 256, zero_point=-128)
        mb.op("LOGISTIC", [x], [y])
        (folder / name).write_bytes(mb.build([x], [y]))
    return folder / "model_int8.tflite"


def test_one_wide_output_with_labels_is_scored_not_a_type_error(tmp_path):
    model = _sigmoid_pair(tmp_path)
    x = np.linspace(-3, 3, 60, dtype=np.float32).reshape(60, 1)
    np.savez(tmp_path / "d.npz", x=x, y=(x[:, 0] > 0).astype(int))
    r = verify(model, data=str(tmp_path / "d.npz"))
    (out,) = r.outputs
    assert (out["task"], out["task_reason"], out["labels"]) == ("classification", "LOGISTIC produces it", "y")
    m = r.metrics["tflm"]["y"]
    assert m["accuracy_float"] == m["accuracy"] == 1.0 and r.passed


def test_litert_reference_kernels_run_in_a_worker_that_may_abort(tmp_path):
    """A softmax input scale this small makes the reference kernel abort in Prepare (an untrained
    MobileNetV2): a PipelineError, not the end of this process."""
    from pipeline.runtime.litert import run_isolated

    mb = ModelBuilder()
    x = mb.tensor("x", (1, 4), scale=7.8e-9)
    y = mb.tensor("y", (1, 4), scale=1 / 256, zero_point=-128)
    mb.op("SOFTMAX", [x], [y], options=("SoftmaxOptions", {"Beta": 1.0}))
    (tmp_path / "m.tflite").write_bytes(mb.build([x], [y]))
    with pytest.raises(PipelineError, match=r"LiteRT \(BUILTIN_REF\) failed \(SIGABRT\)"):
        run_isolated(tmp_path / "m.tflite", [np.zeros((2, 1, 4), np.int8)])
