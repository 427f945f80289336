"""`invoke verify`: the host interpreters agree on the demo, thresholds fail as they should, and
a model the TFLM interpreter cannot run is a failed verification, not a crash."""

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
    assert by_name["int8 TFLM"].library.startswith("tflite-micro ")
    assert r.comparisons["litert_vs_tflm"] == {"max_lsb_difference": 0, "identical": True, "first_difference": None}
    assert r.comparisons["int8_vs_float"]["top1_agreement"] >= 0.95
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
    assert [c["check"] for c in failed] == ["int8 vs float top-1 agreement"]
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
    assert not tflm.ran and "GELU" in tflm.note
    assert not r.passed


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
