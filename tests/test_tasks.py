"""End-to-end: run `invoke` as a user does and check exit code, stderr and files."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, invoke_cmd


def run_invoke(*args, cwd=ROOT, timeout=300):
    return subprocess.run(invoke_cmd() + list(args), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_list_shows_every_task_with_help():
    proc = run_invoke("--list")
    assert proc.returncode == 0, proc.stderr
    for name in ("quantize", "check", "boards", "deploy"):
        line = next(l for l in proc.stdout.splitlines() if l.strip().startswith(name))
        assert len(line.split()) > 1, f"{name} has no one-line help"


def test_tasks_module_does_not_import_tensorflow():
    code = ("import sys; sys.path.insert(0, '.'); import tasks; "
            "heavy = [m for m in ('tensorflow', 'keras', 'ai_edge_litert', 'tflite_micro') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def assert_clean_error(proc, code, *needles):
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0]


def test_missing_model_exits_2_without_traceback(tmp_path):
    proc = run_invoke("quantize", "--model", "no/such.keras", "--out", str(tmp_path))
    assert_clean_error(proc, 2, "no/such.keras", "--model", "no such file", "fix:")
    assert not any(tmp_path.iterdir())


def test_bad_io_type_exits_2(tmp_path):
    proc = run_invoke("quantize", "--io-type", "int4", "--out", str(tmp_path))
    assert_clean_error(proc, 2, "--io-type", "int4", "uint8")


def test_non_numeric_samples_exits_2(tmp_path):
    proc = run_invoke("quantize", "--samples", "abc", "--out", str(tmp_path))
    assert_clean_error(proc, 2, "--samples", "abc")


def test_shape_mismatch_exits_2_and_leaves_nothing(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros((4, 64), np.float32))
    out = tmp_path / "out"
    proc = run_invoke("quantize", "--data", str(tmp_path / "flat.npy"), "--out", str(out))
    assert_clean_error(proc, 2, "expected (N, 8, 8, 1), got (4, 64)")
    assert not (out / "demo").exists()


def test_deploy_with_no_arguments_runs_the_demo(tmp_path):
    # A fresh project directory: the user's own tasks file is ours, run from the checkout.
    proc = run_invoke("deploy", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [l.split()[:2] for l in lines[:5]] == [["quantize", "ran"], ["check", "ran"],
                                                   ["compile", "no"], ["firmware", "ran"], ["verify", "ran"]]
    assert "deploy demo (target all): DEPLOYABLE" in proc.stdout
    # one accuracy per target, verify's, on its samples: not also quantize's on another count
    assert re.search(r"on TFLM: `\S+` classification: accuracy \d+\.\d\d% -> \d+\.\d\d%", proc.stdout), proc.stdout
    assert "accuracy   float" not in proc.stdout, proc.stdout
    assert "Traceback" not in proc.stderr
    out = tmp_path / "demo"
    assert {"model_float.tflite", "model_int8.tflite", "report.json", "report.md"} <= \
        {p.name for p in out.iterdir()}
    report = json.loads((out / "report.json").read_text())
    assert report["quantize"]["evaluation"]["accuracy_drop_points"] <= 0.5
    assert report["check"]["edgetpu"]["mapped_ops"] == report["check"]["edgetpu"]["total_ops"]
    assert report["check"]["tflm"]["compatible"] and report["check"]["tflm"]["arena_bytes"] > 0
    assert "## Compatibility (deployable to all)" in (out / "report.md").read_text()
    assert "Edge TPU   7/7 ops mapped (predicted)" in proc.stdout
    # nothing but our outputs: no temp files left behind by the atomic writes
    leftovers = [p for p in out.rglob(".*") if p.name.endswith(".tmp") or "staging" in p.name or
                 p.name.endswith(".old")]
    assert leftovers == []
    assert sorted(p.name for p in (out / ".stages").iterdir()) == [
        "check.json", "firmware.json", "quantize.json", "verify.json"]


@pytest.mark.parametrize("task,option", [("quantize", "--mode"), ("quantize", "--io-type"), ("quantize", "--task"),
                                         *[(t, o) for t in ("deploy", "verify") for o in (
                                             "--task", "--max-lsb", "--min-agreement", "--max-drop",
                                             "--max-rel-error", "--max-clipped", "--max-auc-drop", "--target")],
                                         ("deploy", "--mode"), ("deploy", "--verify-samples")])
def test_help_documents_options(task, option):
    proc = run_invoke("--help", task)
    assert proc.returncode == 0 and option in proc.stdout


def test_a_short_flag_means_the_same_option_in_every_task():
    """Invoke's automatic short flags differed per task (-i: --build in firmware, --min-agreement
    in verify, --io-type in deploy) and used the dash of --max-drop once the letters ran out
    (`--=STRING, --max-drop=STRING`): now a few fixed letters, the same everywhere."""
    meaning: dict[str, set[str]] = {}
    for task in ("quantize", "check", "compile", "firmware", "verify", "deploy", "diagnose", "hil", "emulate"):
        proc = run_invoke("--help", task)
        assert proc.returncode == 0 and "--=" not in proc.stdout
        for short, long in re.findall(r"^\s+-(\S)(?: \S+)?, --(?:\[no-\])?([\w-]+)", proc.stdout, flags=re.M):
            assert short.isalnum(), (task, short, long)
            meaning.setdefault(short, set()).add(long)
    assert meaning.get("m") == {"model"} and meaning.get("o") == {"out"}, meaning
    assert all(len(longs) == 1 for longs in meaning.values()), meaning


def test_a_listing_into_a_closed_pipe_ends_quietly():
    """`invoke --list | head`: the reader may be gone before the listing is written (`true`
    never reads), and then the writer ends quietly, like any Unix tool, without a traceback."""
    proc = subprocess.run(f"{sys.executable} -m invoke --list | true", shell=True, cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("args,message", [
    (["deploy", "--task", "output_0"], "--task: 'output_0' is not OUTPUT=TASK"),
    (["deploy", "--min-agreement", "5"], "--min-agreement: must be at most 1, got 5"),
    (["deploy", "--max-drop", "nan"], "--max-drop: expected a finite number, got nan"),
    (["deploy", "--max-lsb", "-1"], "--max-lsb: must be at least 0, got -1"),
    (["verify", "--samples", "0"], "--samples: must be at least 1, got 0"),
    (["deploy", "--mode", "int4"], "unknown mode 'int4'")])
def test_deploy_and_verify_options_are_checked_before_any_work(args, message, tmp_path):
    proc = run_invoke(*args, "--out", str(tmp_path)) if args[0] == "deploy" else run_invoke(*args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_relative_paths_name_the_same_files_in_every_task(demo_int8, tmp_path):
    """Run from another folder with paths relative to it: the TFLM worker, the firmware and the
    reports must all see the user's files, not files relative to the package."""
    from pipeline import demo

    work = tmp_path / "work"
    (work / "m").mkdir(parents=True)
    for f in ("model_int8.tflite", "model_float.tflite", "report.json"):
        (work / "m" / f).write_bytes((demo_int8.output_dir / f).read_bytes())
    split = demo.digits_split()
    np.savez(work / "test.npz", x=split.x_test[:40], y=split.y_test[:40])
    rel = ["-r", str(ROOT)]
    check = run_invoke(*rel, "check", "--model", "m/model_int8.tflite", "--json", cwd=work)
    assert check.returncode == 0, check.stderr
    doc = json.loads(check.stdout)
    assert doc["tflm"]["compatible"] and doc["tflm"]["arena_bytes"] == demo_arena(demo_int8)
    assert doc["model"] == str(work / "m" / "model_int8.tflite")
    verify = run_invoke(*rel, "verify", "--model", "m/model_int8.tflite", "--data", "test.npz", cwd=work)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "verify: 40 samples of test.npz: PASS" in verify.stdout
    fw = run_invoke(*rel, "firmware", "--model", "m/model_int8.tflite", "--out", "fw", "--data", "test.npz", cwd=work)
    assert fw.returncode == 0, fw.stderr
    assert (work / "fw" / "model_data.cc").is_file() and not (ROOT / "fw").exists()
    report = json.loads((work / "m" / "report.json").read_text())
    assert report["check"]["tflm"]["arena_bytes"] == doc["tflm"]["arena_bytes"]
    assert report["verify"]["passed"] is True


def demo_arena(demo_int8) -> int:
    from pipeline.stages.check import check

    return check(demo_int8.quantized_model, target="tflm").tflm.arena_bytes


@pytest.mark.parametrize("task, option", [("firmware", ("--board", "arduino-nano")), ("firmware", ("--vectors", "0")),
                                          ("compile", ("--timeout", "-1")), ("hil", ("--port", "/dev/null", "--baud", "x")),
                                          ("emulate", ("--op", "x"))])
def test_a_wrong_option_is_refused_before_the_demo_is_quantized(tmp_path, task, option):
    """With no model yet, a task on the demo quantizes it first (a minute): an option that is
    wrong anyway must not cost that minute, nor leave a build/ folder behind."""
    proc = run_invoke("-r", str(ROOT), task, *option, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error:"), proc.stderr
    assert not (tmp_path / "build").exists(), "the demo was quantized before the option was checked"


@pytest.mark.parametrize("args, needle", [(("deploy", "--sample", "5"), "No idea what '--sample' is"),
                                          (("deploy", "--target"), "needed value"),
                                          (("check", "--model"), "needed value")])
def test_a_task_line_invoke_cannot_parse_is_bad_input_not_a_verdict(tmp_path, args, needle):
    """Exit 1 means "not deployable": Invoke's own exit 1 for a typo must not read as one."""
    for program in (["-r", str(ROOT)], None):
        cmd = run_invoke(*program, *args, cwd=tmp_path) if program else subprocess.run(
            [str(Path(sys.executable).with_name("edge-deploy")), *args], cwd=tmp_path, capture_output=True,
            text=True, stdin=subprocess.DEVNULL, timeout=60)
        assert cmd.returncode == 2, cmd.stdout + cmd.stderr
        assert cmd.stderr.startswith("error: ") and needle in cmd.stderr and f"invoke --help {args[0]}" in cmd.stderr
        assert "Traceback" not in cmd.stderr
