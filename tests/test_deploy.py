"""`invoke deploy`: the chain per target, stage caching and --force, an interrupted run, a
missing compiler, a failing check, bad input, configuration, and the report's JSON contract."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, invoke_cmd
from pipeline.deploy import DeployRequest, content_hash, deploy, raise_if_not_deployable
from pipeline.errors import NotDeployableError, PipelineError


@pytest.fixture(scope="module")
def deployed(demo_int8, tmp_path_factory):
    """One demo deploy into an output root that shares the session's trained demo model."""
    out = tmp_path_factory.mktemp("deploy")
    shutil.copytree(demo_int8.output_dir.parent / ".cache", out / ".cache")
    result = deploy(DeployRequest(out=out), on_stage=lambda run: None)
    return out, result


def statuses(result):
    return {s.name: s.status for s in result.stages}


def test_demo_deploy_all_targets(deployed):
    out, result = deployed
    assert statuses(result) == {"quantize": "ran", "check": "ran", "compile": "no compiler", "firmware": "ran",
                                "verify": "ran", "diagnose": "not applicable"}
    assert result.deployable and result.reasons == []
    d = out / "demo"
    for f in ("model_int8.tflite", "report.json", "report.md", "edgetpu_partition.svg", "firmware/model_data.cc"):
        assert (d / f).is_file(), f


def test_report_json_contract(deployed):
    out, _ = deployed
    report = json.loads((out / "demo" / "report.json").read_text())
    assert {"model", "quantize", "check", "compile", "firmware", "verify", "deploy"} <= set(report)
    assert report["deploy"]["deployable"] is True and report["deploy"]["target"] == "all"
    for stage in ("quantize", "check", "compile", "firmware", "verify"):
        assert set(report["deploy"]["stages"][stage]) == {"status", "note"}
    e = report["check"]["edgetpu"]
    assert {"compatible", "total_ops", "mapped_ops", "cut_at", "ops"} <= set(e)
    assert report["compile"]["compiled"] is False
    assert report["firmware"]["arena_bytes"] % 16 == 0
    svg = (out / "demo" / "edgetpu_partition.svg").read_text()
    assert svg.count("<rect") == e["total_ops"] and "7/7 mapped" in svg


def test_second_run_skips_every_stage(deployed):
    out, _ = deployed
    again = deploy(DeployRequest(out=out))
    assert statuses(again) == {"quantize": "skipped", "check": "skipped", "compile": "no compiler",
                               "firmware": "skipped", "verify": "skipped",
                               "diagnose": "not applicable"}
    assert again.deployable


def test_force_reruns_and_a_removed_output_is_rebuilt(deployed):
    out, _ = deployed
    def without_measurements(path):
        """The report minus the host latencies verify measured: all else is a function of the inputs."""
        report = json.loads(path.read_text())
        for backend in report["verify"]["backends"]:
            backend.pop("median_latency_ms")
        return report

    report_before = without_measurements(out / "demo" / "report.json")
    md_before = (out / "demo" / "report.md").read_text().split("## Host verification")[0]
    model_before = (out / "demo" / "model_int8.tflite").read_bytes()
    forced = deploy(DeployRequest(out=out, force=True))
    assert statuses(forced)["quantize"] == "ran" and statuses(forced)["firmware"] == "ran"
    # a full rerun regenerates the same bytes: no timestamps anywhere
    assert without_measurements(out / "demo" / "report.json") == report_before
    assert (out / "demo" / "report.md").read_text().split("## Host verification")[0] == md_before
    assert (out / "demo" / "model_int8.tflite").read_bytes() == model_before
    (out / "demo" / "firmware" / "main.cc").unlink()
    again = deploy(DeployRequest(out=out))
    assert statuses(again)["firmware"] == "ran" and statuses(again)["quantize"] == "skipped"
    assert (out / "demo" / "firmware" / "main.cc").is_file()


def test_each_target(deployed):
    out, _ = deployed
    # verify measures each target on its own runtime: another target is another verification
    edgetpu = deploy(DeployRequest(out=out, target="edgetpu"))
    assert statuses(edgetpu) == {"quantize": "skipped", "check": "ran", "compile": "no compiler",
                                 "firmware": "not applicable", "verify": "ran",
                                 "diagnose": "not applicable"}
    assert {c["target"] for c in edgetpu.stage("verify").result["checks"]} == {"edgetpu"}
    tflm = deploy(DeployRequest(out=out, target="tflm", board="arduino-nano-33-ble-sense"))
    assert statuses(tflm) == {"quantize": "skipped", "check": "ran", "compile": "not applicable",
                              "firmware": "ran", "verify": "ran",
                              "diagnose": "not applicable"}
    report = json.loads((out / "demo" / "report.json").read_text())
    assert report["check"]["board"]["board"] == "arduino-nano-33-ble-sense"


def test_changed_data_reruns_quantize_and_an_interrupt_keeps_the_previous_outputs(deployed, monkeypatch):
    out, _ = deployed
    model = out / "demo" / "model_int8.tflite"
    before = model.read_bytes()
    record = (out / "demo" / ".stages" / "quantize.json").read_bytes()
    from pipeline import demo

    data = out / "cal.npy"
    np.save(data, demo.digits_split().x_calibration[:100])

    def interrupted(request):
        raise KeyboardInterrupt

    monkeypatch.setattr("pipeline.stages.quantize.quantize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        deploy(DeployRequest(out=out, data=str(data)))
    assert model.read_bytes() == before, "the previous good model is intact"
    assert (out / "demo" / ".stages" / "quantize.json").read_bytes() == record
    monkeypatch.undo()
    rerun = deploy(DeployRequest(out=out, data=str(data)))
    assert statuses(rerun)["quantize"] == "ran"  # the new data is used, not the old record


def test_unsupported_model_is_not_deployable(run_quantize, tmp_path):
    """LEAKY_RELU cuts the Edge TPU graph: deploy --target edgetpu is exit 1 with the reason."""
    import keras

    from pipeline.runtime.tf import import_tensorflow

    import_tensorflow()
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3), keras.layers.LeakyReLU(0.1),
                              keras.layers.Flatten(), keras.layers.Dense(10)])
    model.save(tmp_path / "leaky.keras")
    np.save(tmp_path / "cal.npy", np.random.default_rng(0).random((20, 8, 8, 1), dtype=np.float32))
    result = deploy(DeployRequest(model=str(tmp_path / "leaky.keras"), data=str(tmp_path / "cal.npy"),
                                  out=tmp_path / "out", target="edgetpu"))
    assert not result.deployable and "Edge TPU: 1/4 ops mapped" in result.reasons[0]
    assert statuses(result)["compile"] == "not applicable"
    with pytest.raises(NotDeployableError) as info:
        raise_if_not_deployable(result)
    assert info.value.exit_code == 1


@pytest.mark.parametrize("kwargs,match", [({"target": "gpu"}, "unknown target 'gpu'"),
                                          ({"board": "uno"}, "unknown board 'uno'"),
                                          ({"model": "missing.keras"}, "no such file"),
                                          ({"io_type": "int4"}, "unsupported model I/O type")])
def test_bad_input_is_exit_2_and_writes_nothing(tmp_path, kwargs, match):
    with pytest.raises(PipelineError, match=match) as info:
        deploy(DeployRequest(out=tmp_path / "out", **kwargs))
    assert info.value.exit_code == 2
    assert not (tmp_path / "out").exists()


def test_content_hash_tracks_files_dirs_and_modules(tmp_path):
    (tmp_path / "a.npy").write_bytes(b"1")
    h1 = content_hash(tmp_path / "a.npy")
    (tmp_path / "a.npy").write_bytes(b"2")
    assert content_hash(tmp_path / "a.npy") != h1
    d = tmp_path / "imgs"
    d.mkdir()
    (d / "x.png").write_bytes(b"x")
    h2 = content_hash(d)
    (d / "y.png").write_bytes(b"y")
    assert content_hash(d) != h2
    # what a data function returns depends on more than its module's source (files it reads,
    # modules it imports): a stage that depends on one is never skipped
    from pipeline.cache import NOT_CACHEABLE, stage_key

    assert content_hash("json:loads") is NOT_CACHEABLE
    assert stage_key("quantize", {"data": content_hash("json:loads")}) is None
    assert content_hash(None) is None


def test_invoke_deploy_end_to_end_with_environment_configuration(deployed):
    out, _ = deployed
    env = {**os.environ, "INVOKE_PIPELINE_TARGET": "tflm", "INVOKE_PIPELINE_OUT": str(out)}
    proc = subprocess.run(invoke_cmd() + ["deploy"], cwd=ROOT, capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert "deploy demo (target tflm): DEPLOYABLE" in proc.stdout
    assert "compile   not applicable" in proc.stdout
    bad = subprocess.run(invoke_cmd() + ["deploy", "--target", "gpu"], cwd=ROOT, capture_output=True,
                         text=True, stdin=subprocess.DEVNULL)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_installed_command_reads_invoke_yaml_from_the_project(deployed, tmp_path):
    out, _ = deployed
    exe = shutil.which("edge-deploy", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip("edge-deploy is not installed in this environment (pip install -e .)")
    (tmp_path / "invoke.yaml").write_text(f"pipeline:\n  target: edgetpu\n  out: {out}\n")
    proc = subprocess.run([exe, "deploy"], cwd=tmp_path, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert "target edgetpu" in proc.stdout and "firmware  not applicable" in proc.stdout


def test_invoke_deploy_diagnose_end_to_end(deployed):
    """`invoke deploy --diagnose` on the demo: the diagnose stage runs after verify, its section
    lists every op with its (confirmed) Keras layer, report.md shows it with the plot; without
    the option the stage is not applicable and the report says the diagnosis is an earlier one;
    unchanged inputs skip it."""
    import re
    import xml.dom.minidom

    from pipeline.tflite_model import read_model

    out, _ = deployed
    proc = subprocess.run(invoke_cmd() + ["deploy", "--diagnose", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^diagnose\s+ran\b", proc.stdout, re.MULTILINE) and re.search(r"^  diagnose\s+worst ", proc.stdout, re.MULTILINE)
    d = out / "demo"
    report = json.loads((d / "report.json").read_text())
    assert report["deploy"]["stages"]["diagnose"] == {"status": "done", "note": ""}
    assert all(c["passed"] for c in report["verify"]["checks"])
    g = report["diagnose"]
    ops = read_model(d / "model_int8.tflite").main.operators
    assert [(r["op_index"], r["op"]) for r in g["layers"]] == [(op.index, op.op) for op in ops]
    for row in g["layers"]:
        assert {"op_index", "op", "keras_layer", "rmse_over_scale", "snr_db", "cosine", "clipped_fraction"} <= set(row)
        assert row["keras_layer"] and row["layer_class"]
    assert g["keras_model"].endswith(".keras") and g["ran_because"] == []
    assert g["runtimes_compared"] == ["litert", "tflm"] and "first_divergence" in g
    assert g["recommendations_measured"] is False and "--recommend" in g["recommendations_note"]
    md = (d / "report.md").read_text()
    assert "## Layer-level diagnosis" in md and "(diagnose_layers.svg)" in md and "earlier run" not in md
    svg = (d / "diagnose_layers.svg").read_text()
    xml.dom.minidom.parseString(svg)
    assert svg.count("<rect") == len(ops)
    again = deploy(DeployRequest(out=out, diagnose=True))
    assert statuses(again)["diagnose"] == "skipped"
    plain = deploy(DeployRequest(out=out))
    run = plain.stage("diagnose")
    assert run.status == "not applicable" and "every verify check passed" in run.note
    assert "This diagnosis is from an earlier run" in (d / "report.md").read_text()
def test_a_failing_stage_still_prints_the_summary_and_writes_the_report(deployed):
    """No device at --port: the hil stage fails (exit 2), after the summary and with the report
    saying so, not keeping the previous run's verdict."""
    out, _ = deployed
    proc = subprocess.run(invoke_cmd() + ["deploy", "--out", str(out), "--port", "/nonexistent/ttyACM9"], cwd=ROOT,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "deploy demo (target all): NOT deployable" in proc.stdout and "hil       failed" in proc.stdout
    assert proc.stderr.startswith("error: ") and "/nonexistent/ttyACM9" in proc.stderr
    report = json.loads((out / "demo" / "report.json").read_text())
    assert report["deploy"]["deployable"] is False and report["deploy"]["stages"]["hil"]["status"] == "failed"
    assert "| hil | failed |" in (out / "demo" / "report.md").read_text()


def test_a_model_too_big_for_the_board_ends_with_the_summary_and_the_report(tmp_path):
    """1.1 M int8 weights on a 1 MiB-flash board: firmware refuses (exit 1), the summary and the
    report say why."""
    import keras

    from pipeline.runtime.tf import import_tensorflow

    import_tensorflow()
    keras.utils.set_random_seed(6)
    model = keras.Sequential([keras.Input((1024,), name="x"), keras.layers.Dense(1100, activation="relu"),
                              keras.layers.Dense(4, activation="softmax")])
    model.save(tmp_path / "big.keras")
    np.save(tmp_path / "cal.npy", np.random.default_rng(0).random((16, 1024), dtype=np.float32))
    proc = subprocess.run(invoke_cmd() + ["-r", str(ROOT), "deploy", "--model", "big.keras", "--data", "cal.npy",
                                          "--out", "build", "--target", "tflm", "--board", "arduino-nano-33-ble-sense",
                                          "--samples", "16", "--verify-samples", "16"],
                          cwd=tmp_path, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "deploy big (target tflm): NOT deployable" in proc.stdout and "firmware  failed" in proc.stdout
    assert "does not fit Arduino Nano 33 BLE Sense" in proc.stderr
    report = json.loads((tmp_path / "build" / "big" / "report.json").read_text())
    assert report["deploy"]["stages"]["firmware"]["status"] == "failed"
    assert any("does not fit" in r for r in report["deploy"]["reasons"])
    assert "**NOT deployable** to tflm." in (tmp_path / "build" / "big" / "report.md").read_text()


def test_a_single_stage_task_loads_only_its_own_stage(demo_int8):
    """The registry imports a stage's module on first use: `invoke check` does not pay for the
    firmware, verify, diagnose, compile and HIL stages' imports at every start."""
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print(' '.join(sorted(m for m in sys.modules if m.startswith('pipeline.stages.'))),"
            " file=sys.__stderr__))\n"
            "sys.argv = ['invoke', '-r', sys.argv[1], 'check', '--model', sys.argv[2]]\n"
            "from invoke.main import program\n"
            "program.run()\n")
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT), str(demo_int8.quantized_model)], cwd=ROOT,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    loaded = set(proc.stderr.strip().splitlines()[-1].split())
    assert "pipeline.stages.check" in loaded
    assert not loaded & {f"pipeline.stages.{s}" for s in ("firmware", "verify", "diagnose", "compile", "hil")}, loaded
