"""Reliability battery (issue 16): nothing a user passes can delete their files, run code, hang,
or end in a traceback.

Black-box: every case runs a task as a user does (`python -m invoke ...` in a subprocess whose
working directory is a sandboxed project, TMPDIR inside the sandbox) and asserts the contract
of DESIGN.md and the house standards: exit 0, or 1 (not deployable) / 2 (bad input, failing
tool) with ONE `error:` line on stderr naming the file/field, no traceback; a bounded run time
(the subprocess is killed and the case fails as "hung" otherwise); nothing written outside the
output folder; no temporary litter; the user's own files byte for byte as they were.

The cases read as one list, in this order:
  1 data loss  2 injection  3 configuration  4 numbers  5 sizes  6 data functions
  7 cache and records  8 tools  9 file system  10 models  11 interruptions
  12 disk full / read-only  13 serial / HIL  14 properties (hypothesis)

Models are schema-built (tests/tflite_builder.py) unless a case is about the TF conversion or
the deploy chain; those share one real `invoke deploy` of the demo (the `deployed` fixture).
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shutil
import signal
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from reliability_support import (
    VERSION_LINE,
    FakeDevice,
    Sandbox,
    assert_clean_failure,
    assert_ok,
    assert_ok_or_clean,
    changed_outside,
    changes,
    cmake_configure,
    finish,
    json_text,
    kill_group,
    litter,
    project_tasks_shim,
    relu_model,
    repo_snapshot,
    reshape_model,
    run_invoke,
    run_ok_reply,
    script,
    small_disk,
    snapshot,
    syntax_check,
    write,
)

LINUX = sys.platform == "linux"
pytestmark = pytest.mark.skipif(not LINUX, reason="pseudo-terminals, FIFOs and tmpfs as used here are Linux-only")

GB = 1 << 30


@pytest.fixture
def box(tmp_path) -> Sandbox:
    """A user's project folder with its own TMPDIR; the checkout must not change meanwhile."""
    before = repo_snapshot()
    sandbox = Sandbox(tmp_path)
    yield sandbox
    touched = changed_outside(before, repo_snapshot(), allowed=())
    assert not touched, f"a task wrote into the checkout: {touched[:5]}"


@pytest.fixture(scope="session")
def deployed(tmp_path_factory) -> Path:
    """One real `invoke deploy` of the demo (train, quantize, check, firmware, verify): the
    output root, with build/demo/ (records in .stages/) and the trained model in build/.cache."""
    base = tmp_path_factory.mktemp("deployed")
    (base / "tmp").mkdir()
    run = run_invoke("deploy", "--out", base / "build", cwd=base, timeout=900, env={"TMPDIR": str(base / "tmp")})
    assert_ok(run)
    return base / "build"


def copy_build(deployed: Path, box: Sandbox, name: str = "build") -> Path:
    dst = box.root / name
    shutil.copytree(deployed, dst, symlinks=True)
    return dst


def user_files_lost(before: dict, after: dict, owned: tuple[str, ...] = ()) -> list[str]:
    """Entries of `before` (the user's files) that are gone or different in `after`."""
    lost = []
    for path, value in before.items():
        if any(path == o or path.startswith(o + "/") for o in owned):
            continue
        if path not in after:
            lost.append(f"deleted: {path}")
        elif after[path] != value:
            lost.append(f"changed: {path}")
    return lost


def int8_model(folder: Path, name: str = "model_int8.tflite", **kw) -> Path:
    return write(folder / name, relu_model(**kw))


def small_model_with_demo_report(deployed: Path, box: Sandbox) -> Path:
    """A small int8 model in an output folder whose report.json is the real one of the demo's
    deploy: report cases without the demo model's 10 s arena search."""
    folder = box.root / "build" / "m"
    model = int8_model(folder)
    shutil.copyfile(deployed / "demo" / "report.json", folder / "report.json")
    return model


# Cases whose failure today is a hang cost their whole time bound. They are started together
# (a module fixture per group), so the battery waits for the longest bound once rather than
# for each in turn; each test then judges its own run. prepare(box, cleanups) -> the task's
# arguments, its time bound and run options.
def start_together(base: Path, cases: dict) -> dict:
    pending, cleanups = {}, []
    try:
        for name, prepare in cases.items():
            box = Sandbox(base / name)
            spec = prepare(box, cleanups)
            started = time.monotonic()
            pending[name] = (box.start(*spec["args"], **spec.get("options", {})), spec, started, box)
        return {name: (finish(proc, spec["args"], spec["timeout"], started), box)
                for name, (proc, spec, started, box) in pending.items()}
    finally:
        for proc, *_ in pending.values():
            kill_group(proc)
        for cleanup in cleanups:
            cleanup()


def our_report(folder: Path, name: str = "m") -> Path:
    """The smallest report.json the pipeline itself would have written beside a model."""
    return write(folder / "report.json", json_text({"model": name, "generated_by": "edge-deploy 0.1.0"}))


def npy(path: Path, array) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)
    return path


def samples(n: int = 8, shape=(8, 8, 1)) -> np.ndarray:
    return np.random.default_rng(0).random((n, *shape), dtype=np.float32)


# =============================================================================================
# 1. Data loss: a tool may only replace what it made
# =============================================================================================

def _firmware_into(box: Sandbox, out: Path | str, model: Path | None = None):
    model = model or int8_model(box.root / "models")
    before = box.snap()
    run = box.run("firmware", "--model", model, "--out", out)
    return run, before, box.snap()


def test_data_loss_firmware_out_is_a_users_folder(box):
    mine = box.root / "mine"
    write(mine / "notes.txt", "my notes\n")
    write(mine / "src" / "driver.c", "int main(void) { return 0; }\n")
    run, before, after = _firmware_into(box, mine)
    lost = user_files_lost(before, after)
    assert not lost, f"--out {mine.name}/ (a folder the tool did not make): {lost}\n  {run.describe()}"
    if run.returncode != 0:
        assert_clean_failure(run, (2,), "--out")


def test_data_loss_firmware_out_is_the_models_own_folder(box):
    folder = box.root / "build" / "m"
    model = int8_model(folder)
    our_report(folder)
    run, before, after = _firmware_into(box, folder, model)
    lost = user_files_lost(before, after, owned=("build/m/report.json", "build/m/report.md"))
    assert not lost, f"--out = the model's folder: {lost}\n  {run.describe()}"
    assert (folder / "model_int8.tflite").is_file(), "the model itself is gone"
    if run.returncode != 0:
        assert_clean_failure(run, (2,), "--out")


def test_data_loss_firmware_out_is_the_parent_of_the_model(box):
    folder = box.root / "build" / "m"
    model = int8_model(folder)
    run, before, after = _firmware_into(box, box.root / "build", model)
    lost = user_files_lost(before, after)
    assert not lost, f"--out build (the model's parent): {lost}\n  {run.describe()}"
    if run.returncode != 0:
        assert_clean_failure(run, (2,), "--out")


def test_data_loss_firmware_out_is_a_file(box):
    notes = write(box.root / "notes.txt", "precious\n")
    run, before, after = _firmware_into(box, notes)
    lost = user_files_lost(before, after)
    assert not lost and notes.read_text() == "precious\n", f"--out notes.txt: {lost}\n  {run.describe()}"
    assert_clean_failure(run, (2,), "--out")


def test_data_loss_firmware_out_is_a_symlink_to_a_users_folder(box):
    mine = box.root / "mine"
    write(mine / "notes.txt", "my notes\n")
    (box.root / "link").symlink_to(mine)
    run, before, after = _firmware_into(box, box.root / "link")
    lost = user_files_lost(before, after)
    assert not lost, f"--out link -> mine/: {lost}\n  {run.describe()}"
    if run.returncode != 0:
        assert_clean_failure(run, (2,), "--out")


def test_data_loss_firmware_default_out_replaces_a_users_firmware_folder(box):
    """No --out: firmware/ beside the model. A user's own firmware/ there is not the tool's."""
    project = box.root / "robot"
    model = int8_model(project, "net.tflite")
    write(project / "firmware" / "motor_driver.c", "void drive(void) {}\n")
    before = box.snap()
    run = box.run("firmware", "--model", model)
    lost = user_files_lost(before, box.snap())
    assert not lost, f"robot/firmware/ written by the user: {lost}\n  {run.describe()}"
    if run.returncode != 0:
        assert_clean_failure(run, (2,), "--out")


def test_data_loss_firmware_deletes_a_users_dot_old_folder(box):
    """replace_dir() clears `.<name>.old` beside the output before it swaps: a user's folder of
    that name is deleted although the tool never made it."""
    out = box.root / "out"
    write(out / ".firmware.old" / "keep.txt", "mine\n")
    run, before, after = _firmware_into(box, out / "firmware")
    lost = user_files_lost(before, after)
    assert not lost, f"out/.firmware.old/ (the user's): {lost}\n  {run.describe()}"


_REPORT_WRITERS = {
    "check": lambda m, box: ["check", "--model", m, "--no-interpreter"],
    "compile": lambda m, box: ["compile", "--model", m],
    "firmware": lambda m, box: ["firmware", "--model", m, "--out", box.root / "fw"],
    "verify": lambda m, box: ["verify", "--model", m, "--data", npy(box.root / "d.npy", samples())],
}


@pytest.mark.parametrize("task", list(_REPORT_WRITERS))
def test_data_loss_task_rewrites_a_users_report_beside_the_model(box, task):
    """A report.json the pipeline did not write (no generated_by) and the user's report.md."""
    folder = box.root / "mine"
    model = int8_model(folder, "net.tflite")
    write(folder / "report.json", json_text({"title": "bench results", "runs": [1, 2, 3]}))
    write(folder / "report.md", "# My report\n\nHand-written notes.\n")
    before = box.snap()
    run = box.run(*_REPORT_WRITERS[task](model, box), env={"EDGETPU_COMPILER": None, "PATH": "/usr/bin:/bin"})
    lost = [p for p in user_files_lost(before, box.snap()) if "report" in p]
    assert not lost, f"`invoke {task}` beside a user's report: {lost}\n  {run.describe()}"


def test_data_loss_check_overwrites_a_hand_written_report_md_in_an_output_folder(box):
    """report.json is the pipeline's, report.md is the user's (no "generated by" banner)."""
    folder = box.root / "build" / "m"
    model = int8_model(folder)
    our_report(folder)
    write(folder / "report.md", "# Notes for the review\n\nwritten by hand\n")
    run = box.run("check", "--model", model, "--no-interpreter")
    assert (folder / "report.md").read_text() == "# Notes for the review\n\nwritten by hand\n", \
        f"report.md without our banner was overwritten\n  {run.describe()}"


def test_data_loss_compile_replaces_a_users_edgetpu_folder(box, compiler):
    """compile writes <model folder>/edgetpu/ and replaces it as a whole."""
    project = box.root / "robot"
    model = int8_model(project, "net.tflite")
    write(project / "edgetpu" / "coral_setup.md", "# How I wired the Coral\n")
    c = compiler("success")
    before = box.snap()
    run = box.run("compile", "--model", model, "--compiler", c.path)
    lost = user_files_lost(before, box.snap(), owned=("compiler-ran.txt",))
    assert not lost, f"robot/edgetpu/ written by the user: {lost}\n  {run.describe()}"
    if run.returncode != 0:
        assert_clean_failure(run, (2,), "edgetpu")


@pytest.mark.slow
def test_data_loss_quantize_overwrites_files_in_a_folder_it_did_not_make(box, deployed):
    """--out/--name naming a user's existing folder: their report.md and model files stay."""
    out = box.root / "out"
    shutil.copytree(deployed / ".cache", out / ".cache")
    mine = out / "mine"
    write(mine / "report.md", "# My own report\n")
    write(mine / "model_float.tflite", b"my float model, trained for a week")
    before = box.snap()
    run = box.run("quantize", "--out", out, "--name", "mine", timeout=600)
    lost = user_files_lost(before, box.snap(), owned=("out/.cache",))
    assert not lost, f"quantize into out/mine/ (the user's folder): {lost}\n  {run.describe()}"
    if run.returncode != 0:
        assert_clean_failure(run, (2,), "--name")


# =============================================================================================
# 2. Injection: every string that reaches generated C, CMake, Markdown or SVG is escaped
# =============================================================================================

def _firmware_for_name(box: Sandbox, file_name: str | bytes, folder_name: str = "models"):
    folder = box.root / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    data = relu_model()
    if isinstance(file_name, bytes):
        path = os.path.join(os.fsencode(folder), file_name)
        with open(path, "wb") as f:
            f.write(data)
        model = os.fsdecode(path)
    else:
        model = write(folder / file_name, data)
    run = box.run("firmware", "--model", model, "--out", box.root / "fw")
    return run, box.root / "fw"


# (a file name cannot hold "/": the payloads below do without it)
@pytest.mark.parametrize("file_name", [
    "m\nmessage(WARNING INJECTED-CMAKE-CODE-RAN)\n#.tflite",
    "m\rmessage(WARNING INJECTED-CMAKE-CODE-RAN)\r#.tflite",
], ids=["newline", "carriage-return"])
def test_injection_model_file_name_runs_cmake_code_at_configure(box, file_name):
    run, fw = _firmware_for_name(box, file_name)
    if run.returncode != 0:
        assert_clean_failure(run, (2,), "--model")
        return
    configured = cmake_configure(fw, box.root / "fw-build")
    assert "INJECTED-CMAKE-CODE-RAN" not in configured.stdout + configured.stderr, \
        "a line of the model's file name ran as CMake code at configure time (CMakeLists.txt banner)"


@pytest.mark.parametrize("file_name", [
    "m\n#error injected into every header\n.tflite",
    "m\r#error injected into every header\r.tflite",
    'm * " \\ ??= \' ${X} <&> #x.tflite',
    "mod\u00e8le \u2028 \u6a21\u578b.tflite",
], ids=["newline", "carriage-return", "c-metacharacters", "unicode"])
def test_injection_model_file_name_in_generated_headers(box, file_name):
    run, fw = _firmware_for_name(box, file_name)
    if run.returncode != 0:
        assert_clean_failure(run, (2,), "--model")
        return
    errors = syntax_check(fw)
    assert errors is None, f"the generated sources do not compile:\n{errors}"


def test_injection_model_file_name_that_is_not_utf8(box):
    run, fw = _firmware_for_name(box, b"m\xff\xfe.tflite")
    if run.returncode != 0:
        assert_clean_failure(run, (2,), "--model")
        return
    assert syntax_check(fw) is None


def test_injection_tensor_names_in_generated_headers(box):
    model = write(box.root / "models" / "model_int8.tflite",
                  relu_model(in_name='in\n#error x\n"*/\\', out_name="out ${PWN} \u00e9 ??= //"))
    run = box.run("firmware", "--model", model, "--out", box.root / "fw")
    assert_ok(run)
    assert syntax_check(box.root / "fw") is None


def test_injection_folder_name_in_report_md(box):
    """`check` inside an output folder renders report.md with the folder's name as its title."""
    folder = box.root / "proj\n# INJECTED heading\n<img src=x onerror=alert(1)>"  # no "/" in a name
    model = int8_model(folder)
    our_report(folder)
    run = box.run("check", "--model", model, "--no-interpreter")
    assert_ok(run)
    md = (folder / "report.md").read_text()
    assert not [l for l in md.splitlines() if l.startswith("# INJECTED")], "a heading injected into report.md"
    assert "<img" not in md, "raw HTML from a folder name in report.md"


def test_injection_hand_edited_report_json_reaches_model_data_h(box, deployed):
    model = small_model_with_demo_report(deployed, box)
    report = json.loads((model.parent / "report.json").read_text())
    report["quantize"]["tool_versions"]["tensorflow"] = '2.21"\n#error injected from report.json\n"'
    write(model.parent / "report.json", json_text(report))
    run = box.run("firmware", "--model", model)
    assert_ok_or_clean(run)
    if run.returncode == 0:
        errors = syntax_check(model.parent / "firmware")
        assert errors is None, f"MODEL_TENSORFLOW_VERSION from report.json is pasted unescaped:\n{errors}"


def test_injection_hand_edited_labels_are_escaped(box, deployed):
    model = small_model_with_demo_report(deployed, box)
    report = json.loads((model.parent / "report.json").read_text())
    report["quantize"]["labels"] = ['zero"\n#error injected', "one\\", "*/", "??=", "${x}", "\u00e9"] + ["x"] * 4
    write(model.parent / "report.json", json_text(report))
    run = box.run("firmware", "--model", model)
    assert_ok(run)
    assert syntax_check(model.parent / "firmware") is None


def _report_md_injected(md: str) -> list[str]:
    found = [l for l in md.splitlines() if l.lstrip("|` ").startswith("# INJECTED")]
    if "<script" in md:
        found.append("raw <script> element")
    return found


def test_injection_hand_edited_report_json_reaches_report_md(box, deployed):
    model = small_model_with_demo_report(deployed, box)
    report = json.loads((model.parent / "report.json").read_text())
    report["quantize"]["inputs"][0]["name"] = "x` |\n# INJECTED heading\n<script>alert(1)</script>"
    write(model.parent / "report.json", json_text(report))
    run = box.run("check", "--model", model, "--no-interpreter")
    assert_ok(run)
    bad = _report_md_injected((model.parent / "report.md").read_text())
    assert not bad, f"report.md renders report.json strings as Markdown/HTML: {bad}"


def test_injection_hand_edited_report_json_reaches_the_partition_svg(box, deployed):
    """A cached deploy re-renders edgetpu_partition.svg from report.json's check section."""
    import xml.etree.ElementTree as ET

    build = copy_build(deployed, box)
    report = json.loads((build / "demo" / "report.json").read_text())
    report["check"]["edgetpu"]["ops"][0]["index"] = '0"/><script>alert(1)</script><x a="'
    write(build / "demo" / "report.json", json_text(report))
    run = box.run("deploy", "--out", build, timeout=300)
    assert_ok_or_clean(run)
    svg = (build / "demo" / "edgetpu_partition.svg").read_text()
    assert "<script>" not in svg, "report.json markup pasted into the SVG"
    ET.fromstring(svg.encode())  # still well-formed XML


def test_injection_data_path_reaches_report_md(box):
    folder = box.root / "build" / "m"
    model = int8_model(folder)
    our_report(folder)
    data = npy(box.root / "cal\n# INJECTED heading\n<img src=x onerror=alert(1)>.npy", samples())
    run = box.run("verify", "--model", model, "--data", data)
    assert_ok_or_clean(run)
    md = (folder / "report.md").read_text()
    bad = _report_md_injected(md) + (["raw <img> element"] if "<img" in md else [])
    assert not bad, f"the --data path is rendered as Markdown/HTML in report.md: {bad}"


def _relu_device_reply(frame):
    x = np.frombuffer(frame.payload, dtype=np.int8)
    return run_ok_reply(frame, np.maximum(x, 0).astype(np.int8).tobytes())


def test_injection_device_info_reaches_report_md(box):
    folder = box.root / "build" / "m"
    model = int8_model(folder)
    our_report(folder)
    device = FakeDevice(model.read_bytes(), on_run=_relu_device_reply,
                        info={"board": "x | <script>alert(1)</script> | `y"})  # INFO is one line per key
    try:
        run = box.run("hil", "--port", device.port, "--model", model, timeout=60)
    finally:
        device.close()
    assert_ok(run)
    bad = _report_md_injected((folder / "report.md").read_text())
    assert not bad, f"the device's INFO board name is rendered as Markdown/HTML in report.md: {bad}"


@pytest.mark.parametrize("scale", [math.nan, math.inf, 0.0, -0.05], ids=["nan", "inf", "zero", "negative"])
def test_injection_invalid_quantization_scale_passes_check_strict(box, scale):
    model = write(box.root / "m" / "model_int8.tflite", reshape_model(scale=scale))
    run = box.run("check", "--model", model, "--strict")
    assert run.returncode in (1, 2) and "Traceback" not in run.stderr, \
        f"a model with quantization scale {scale} is accepted as deployable\n  {run.describe()}"


@pytest.mark.parametrize("scale", [math.nan, math.inf, 0.0, -0.05], ids=["nan", "inf", "zero", "negative"])
def test_injection_invalid_quantization_scale_reaches_model_settings_h(box, scale):
    model = write(box.root / "m" / "model_int8.tflite", reshape_model(scale=scale))
    run = box.run("firmware", "--model", model, "--out", box.root / "fw")
    if run.returncode != 0:
        assert_clean_failure(run, (1, 2), "scale")
        return
    errors = syntax_check(box.root / "fw")
    assert errors is None, f"scale {scale}: model_settings.h does not compile:\n{errors}"


@pytest.mark.parametrize("zero_point", [1000, 1 << 40], ids=["outside-int8", "outside-int32"])
def test_injection_zero_point_out_of_range(box, zero_point):
    model = write(box.root / "m" / "model_int8.tflite", reshape_model(zero_point=zero_point))
    strict = box.run("check", "--model", model, "--strict")
    assert strict.returncode in (1, 2), f"zero point {zero_point} for int8 accepted\n  {strict.describe()}"
    run = box.run("firmware", "--model", model, "--out", box.root / "fw")
    if run.returncode != 0:
        assert_clean_failure(run, (1, 2), "zero point")
        return
    assert syntax_check(box.root / "fw") is None


# =============================================================================================
# 3. Configuration: invoke.yaml and INVOKE_PIPELINE_* are input like any other
# =============================================================================================

# invoke.yaml, as the plain `invoke` of a project with its own tasks.py reads it ("project"),
# and as the installed `edge-deploy` reads it from the current directory ("edge-deploy").
_BAD_CONFIGS = {
    "yaml-syntax": ("pipeline: [unclosed\n", "invoke.yaml"),
    "tab-indentation": ("pipeline:\n\ttarget: tflm\n", "invoke.yaml"),
    "scalar-for-mapping": ("pipeline: 5\n", "pipeline"),
    "list-for-mapping": ("pipeline: [a, b]\n", "pipeline"),
    "null-for-mapping": ("pipeline: null\n", "pipeline"),
    "top-level-list": ("- pipeline\n- target\n", "invoke.yaml"),
    "not-utf8": (b"pipeline:\n  target: \xff\xfe\n", "invoke.yaml"),
    "out-not-a-string": ("pipeline:\n  out: 5\n", "out"),
    "model-not-a-string": ("pipeline:\n  model: 5\n", "model"),
    "data-not-a-string": ("pipeline:\n  data: 5\n", "data"),
    "name-not-a-string": ("pipeline:\n  name: [a, b]\n", "name"),
    "samples-a-list": ("pipeline:\n  samples: [1, 2]\n", "samples"),
    "unknown-key": ("pipeline:\n  targt: tflm\n", "targt"),
}


@pytest.mark.parametrize("entry", ["project", "edge-deploy"])
@pytest.mark.parametrize("case", list(_BAD_CONFIGS))
def test_config_malformed_invoke_yaml(box, case, entry):
    text, needle = _BAD_CONFIGS[case]
    write(box.root / "invoke.yaml", text)
    if entry == "project":
        project_tasks_shim(box.root)
    # `deploy --model missing.keras` gets past every option before any heavy work, and `check`
    # with no --model reads the configured model
    args = ["check"] if case == "model-not-a-string" else ["deploy", "--model", "missing.keras"]
    run = box.run(*args, entry=entry)
    assert_clean_failure(run, (2,), needle)


@pytest.mark.parametrize("variable, value", [
    ("INVOKE_PIPELINE_SAMPLES", "abc"), ("INVOKE_PIPELINE_BAUD", "abc"), ("INVOKE_PIPELINE_SAMPLES", ""),
    ("INVOKE_PIPELINE", "tflm"),
])
def test_config_bad_environment_variable(box, variable, value):
    run = box.run("deploy", "--model", "missing.keras", env={variable: value})
    assert_clean_failure(run, (2,), variable)


def test_config_missing_runtime_config_file(box):
    run = box.run("-f", box.root / "missing.yaml", "boards")
    assert_clean_failure(run, (2,), "missing.yaml")


# =============================================================================================
# 4. Numbers: ranges validated at the edge, exit 2 naming the option
# =============================================================================================

def _numbers_args(box: Sandbox, task: str) -> list:
    model = int8_model(box.root / "m")
    data = npy(box.root / "d.npy", samples())
    return {"quantize": ["quantize", "--out", box.root / "out"],
            "deploy": ["deploy", "--out", box.root / "out"],
            "verify": ["verify", "--model", model, "--data", data],
            "firmware": ["firmware", "--model", model, "--out", box.root / "fw"]}[task]


@pytest.mark.parametrize("task, option, value", [
    ("quantize", "--samples", "0"), ("quantize", "--samples", "-5"), ("deploy", "--samples", "0"),
    ("verify", "--samples", "0"), ("verify", "--samples", "-3"),
    ("verify", "--max-drop", "nan"), ("verify", "--min-agreement", "5"), ("verify", "--min-agreement", "-0.5"),
    ("verify", "--min-agreement", "nan"), ("verify", "--max-lsb", "-1"),
    ("firmware", "--vectors", "0"), ("firmware", "--vectors", "-1"), ("firmware", "--vectors", "1000000000"),
    ("firmware", "--tolerance", "-1"),
])
def test_numbers_out_of_range(box, task, option, value):
    run = box.run(*_numbers_args(box, task), option, value, as_bytes=4 * GB, timeout=120)
    assert_clean_failure(run, (2,), option)


# =============================================================================================
# 5. Sizes: read with limits, refuse what exceeds them, in bounded time and memory
# =============================================================================================

def _data_task(box: Sandbox, task: str, data) -> list:
    model = int8_model(box.root / "m")
    if task == "firmware":
        return ["firmware", "--model", model, "--data", data, "--out", box.root / "fw"]
    return ["verify", "--model", model, "--data", data]


@pytest.mark.parametrize("task", ["firmware", "verify"])
@pytest.mark.parametrize("kind", ["npy-1e12-samples", "npz-1e12-samples", "npy-shape-overflow"])
def test_sizes_array_header_declares_too_many_samples(box, task, kind):
    from reliability_support import npy_with_header, npz_with_header

    path = {"npy-1e12-samples": lambda: npy_with_header(box.root / "cal.npy", (10 ** 12, 8, 8, 1)),
            "npz-1e12-samples": lambda: npz_with_header(box.root / "cal.npz", (10 ** 12, 8, 8, 1)),
            "npy-shape-overflow": lambda: npy_with_header(box.root / "cal.npy", (2 ** 62, 2 ** 62, 8, 1))}[kind]()
    run = box.run(*_data_task(box, task, path), as_bytes=2 * GB, timeout=60)
    assert_clean_failure(run, (2,), "--data")


def test_sizes_npz_that_inflates_to_a_gigabyte(box):
    """An honest archive of zeros, 4.7 MB on disk: 4 golden vectors need 1 KB of it."""
    from reliability_support import npz_bomb

    path = npz_bomb(box.root / "cal.npz", 1 * GB)
    run = box.run(*_data_task(box, "firmware", path), as_bytes=1 * GB, timeout=120)
    assert_ok_or_clean(run, (2,))


def test_sizes_image_folder_with_a_decompression_bomb(box):
    from reliability_support import png_header_only

    folder = box.root / "images"
    folder.mkdir()
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(folder / f"ok{i}.png")
    png_header_only(folder / "zz_bomb.png", 30000, 30000)  # 900 Mpixel
    run = box.run(*_data_task(box, "firmware", folder), as_bytes=2 * GB, timeout=60)
    assert_clean_failure(run, (2,), "zz_bomb.png")


def _fifo_case(where: str):
    """A named pipe nobody writes to: opening it blocks forever."""
    def prepare(box, cleanups):
        if where == "image-folder":
            (box.root / "images").mkdir()
            os.mkfifo(box.root / "images" / "a.png")
            return {"args": _data_task(box, "firmware", box.root / "images"), "timeout": 20}
        if where in ("npy", "npz"):
            os.mkfifo(box.root / f"cal.{where}")
            return {"args": _data_task(box, "firmware", box.root / f"cal.{where}"), "timeout": 20}
        os.mkfifo(box.root / "model.tflite")
        return {"args": ["check", "--model", box.root / "model.tflite"], "timeout": 15}
    return prepare


def _repeated_table_case(what: str):
    def prepare(box, cleanups):
        from reliability_support import repeated_table_model

        model = write(box.root / "rep.tflite", repeated_table_model(40_000, 40_000, what=what))
        return {"args": ["check", "--model", model, "--no-interpreter"], "timeout": 15}
    return prepare


def _compiler_case(mode: str, timeout_option: str, bound: float):
    def prepare(box, cleanups):
        c = Compiler(box.root, mode)
        cleanups.append(c.cleanup)
        return {"args": ["compile", "--model", int8_model(box.root / "m"), "--compiler", c.path,
                         "--timeout", timeout_option], "timeout": bound}
    return prepare


def _silent_device_case(box, cleanups):
    model = int8_model(box.root / "m")
    dev = FakeDevice(model.read_bytes(), answer=False)
    cleanups.append(dev.close)
    return {"args": ["hil", "--port", dev.port, "--model", model, "--timeout", "nan"], "timeout": 15}


HANG_CASES = {
    **{f"fifo-{w}": _fifo_case(w) for w in ("image-folder", "npy", "npz", "model")},
    **{f"repeated-{w}": _repeated_table_case(w) for w in ("tensors", "operators")},
    "compiler-version-hangs": _compiler_case("version-hangs", "3", 12),
    "compiler-version-daemon": _compiler_case("version-daemon", "3", 12),
    "compiler-daemon": _compiler_case("daemon", "5", 15),
    "hil-timeout-nan": _silent_device_case,
}


@pytest.fixture(scope="module")
def hang_runs(tmp_path_factory) -> dict:
    return start_together(tmp_path_factory.mktemp("hang"), HANG_CASES)


@pytest.mark.parametrize("where", ["image-folder", "npy", "npz", "model"])
def test_sizes_fifo_instead_of_a_file(hang_runs, where):
    run, _ = hang_runs[f"fifo-{where}"]
    assert_clean_failure(run, (2,))


@pytest.mark.parametrize("task", ["check", "firmware", "verify", "compile", "hil", "emulate"])
def test_sizes_model_is_dev_zero(box, task):
    extra = {"hil": ["--port", "/dev/null"], "verify": ["--data", npy(box.root / "d.npy", samples())]}.get(task, [])
    run = box.run(task, "--model", "/dev/zero", *extra, as_bytes=2 * GB, timeout=30)
    assert_clean_failure(run, (2,), "/dev/zero")


def test_sizes_model_of_several_gigabytes(box):
    """A sparse 3 GiB file with a TFLite header: refused from its size, not read into memory."""
    path = box.root / "huge.tflite"
    with path.open("wb") as f:
        f.write(relu_model())
        f.truncate(3 * GB)
    run = box.run("check", "--model", path, "--no-interpreter", as_bytes=2 * GB, timeout=60)
    assert_clean_failure(run, (2,), "huge.tflite")


@pytest.mark.parametrize("what", ["tensors", "operators"])
def test_sizes_flatbuffer_repeating_one_table(hang_runs, what):
    """40,000 offsets of one table with a 40,000-entry vector: 300 KB on disk."""
    run, _ = hang_runs[f"repeated-{what}"]
    assert_clean_failure(run, (2,), "rep.tflite")


# =============================================================================================
# 6. Data functions (`module:function`) and labels
# =============================================================================================

_OK_FUNCTION = "import numpy as np\ndef samples():\n    return [np.zeros((8, 8, 1), np.float32)] * 4\n"
_DATA_FUNCTIONS = {
    "raises-at-import": ({"badmod.py": "raise RuntimeError('boom at import')\n"}, "badmod:samples"),
    "syntax-error": ({"synmod.py": "def samples(:\n    pass\n"}, "synmod:samples"),
    "sys-exit-at-import": ({"exitmod.py": "import sys\nsys.exit(3)\n"}, "exitmod:samples"),
    "sys-exit-in-function": ({"exitfn.py": "import sys\ndef samples():\n    sys.exit(4)\n"}, "exitfn:samples"),
    "empty-module-name": ({}, ":samples"),
    "empty-function-name": ({"okmod.py": _OK_FUNCTION}, "okmod:"),
    "relative-module-name": ({"okmod.py": _OK_FUNCTION}, ".okmod:samples"),
    "returns-none": ({"nonemod.py": "def samples():\n    return None\n"}, "nonemod:samples"),
    "yields-strings": ({"strmod.py": "def samples():\n    yield 'not an array'\n"}, "strmod:samples"),
}


@pytest.mark.parametrize("case", list(_DATA_FUNCTIONS))
def test_datafn_broken_data_function(box, case):
    files, spec = _DATA_FUNCTIONS[case]
    for name, text in files.items():
        write(box.root / name, text)
    run = box.run(*_data_task(box, "firmware", spec))
    assert_clean_failure(run, (2,), "--data")


def test_datafn_endless_generator_is_bounded_by_the_vectors_asked(box):
    write(box.root / "endless.py", "import numpy as np\nimport itertools\n"
                                   "def samples():\n    return (np.zeros((8, 8, 1), np.float32) for _ in itertools.count())\n")
    run = box.run(*_data_task(box, "firmware", "endless:samples"), timeout=60)
    assert_ok(run)


def test_datafn_missing_file_with_a_colon_is_not_a_module(box):
    run = box.run(*_data_task(box, "firmware", "cal:2024.npy"))
    assert_clean_failure(run, (2,), "no such file")


def test_datafn_missing_file_with_a_colon_does_not_import_a_module(box):
    """`evil:samples.npy` is a file name (`samples.npy` is no function name): evil.py in the
    current directory must not be imported (run)."""
    write(box.root / "evil.py", "import pathlib\npathlib.Path('IMPORTED').write_text('code ran')\n")
    run = box.run(*_data_task(box, "firmware", "evil:samples.npy"))
    assert not (box.root / "IMPORTED").exists(), f"evil.py was imported for a file name\n  {run.describe()}"
    assert_clean_failure(run, (2,), "no such file")


def test_datafn_labels_that_are_strings(box):
    path = box.root / "cal.npz"
    np.savez(path, x=samples(8), y=np.array(["cat", "dog"] * 4))
    run = box.run(*_data_task(box, "verify", path))
    assert_ok_or_clean(run, (1, 2))


# =============================================================================================
# 7. Cache and records: .stages/*.json and report.json are files a user (or a crash) can break
# =============================================================================================

def _stage_status(run, stage: str) -> str | None:
    for line in run.stdout.splitlines():
        parts = line.split()
        if parts[:1] == [stage] and len(parts) > 1:
            return parts[1]
    return None


def _edit_record(build: Path, stage: str, edit) -> None:
    path = build / "demo" / ".stages" / f"{stage}.json"
    record = json.loads(path.read_text())
    new = edit(record)
    if isinstance(new, (bytes, str)):
        write(path, new)
    else:
        write(path, json_text(new))


_RECORD_EDITS = {
    "null": ("firmware", lambda r: "null"),
    "a-list": ("firmware", lambda r: "[]"),
    "a-string": ("firmware", lambda r: '"text"'),
    "deeply-nested": ("firmware", lambda r: "[" * 100_000 + "]" * 100_000),
    "outputs-not-a-mapping": ("firmware", lambda r: {**r, "outputs": 5}),
    "result-null": ("check", lambda r: {**r, "result": None}),
    "result-wrong-types": ("check", lambda r: {**r, "result": {"edgetpu": 5, "tflm": "yes", "board": []}}),
    "result-empty": ("check", lambda r: {**r, "result": {}}),
    "result-missing-arena": ("check", lambda r: {**r, "result": {**r["result"], "tflm": {"compatible": True}}}),
    "verify-checks-wrong-type": ("verify", lambda r: {**r, "result": {**r["result"], "checks": [5]}}),
}


@pytest.mark.parametrize("case", list(_RECORD_EDITS))
def test_cache_corrupt_stage_record(box, deployed, case):
    """A broken record is stale: the stage reruns (or the run stops with one line naming it)."""
    build = copy_build(deployed, box)
    stage, edit = _RECORD_EDITS[case]
    _edit_record(build, stage, edit)
    run = box.run("deploy", "--out", build, timeout=60)
    if run.returncode == 2:
        assert_clean_failure(run, (2,), ".stages")
        return
    assert_ok(run)
    assert _stage_status(run, stage) == "ran", \
        f"the {stage} stage trusted a corrupt record ({_stage_status(run, stage)})\n  {run.describe()}"


def _deployed_case(change):
    def prepare(box, cleanups, *, deployed):
        build = copy_build(deployed, box)
        change(build / "demo")
        return {"args": ["deploy", "--out", build], "timeout": 20}
    return prepare


def _replace_with_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _record_outputs_a_huge_folder(demo: Path) -> None:
    """A record that names /usr among its outputs: the next run hashes all of it."""
    path = demo / ".stages" / "firmware.json"
    record = json.loads(path.read_text())
    write(path, json_text({**record, "outputs": {"/usr": "0" * 64}}))


DEPLOYED_HANG_CASES = {
    "record-fifo": _deployed_case(lambda demo: _replace_with_fifo(demo / ".stages" / "check.json")),
    "report-fifo": _deployed_case(lambda demo: _replace_with_fifo(demo / "report.json")),
    "record-outputs-a-huge-folder": _deployed_case(_record_outputs_a_huge_folder),
}


@pytest.fixture(scope="module")
def deployed_hang_runs(tmp_path_factory, deployed) -> dict:
    cases = {name: functools.partial(prepare, deployed=deployed) for name, prepare in DEPLOYED_HANG_CASES.items()}
    return start_together(tmp_path_factory.mktemp("deployed-hang"), cases)


def test_cache_stage_record_names_a_huge_folder_as_output(deployed_hang_runs):
    run, _ = deployed_hang_runs["record-outputs-a-huge-folder"]
    assert_ok_or_clean(run, (2,))


def test_cache_stage_record_is_a_fifo(deployed_hang_runs):
    run, _ = deployed_hang_runs["record-fifo"]
    assert_ok_or_clean(run, (2,))


def test_cache_stage_record_is_a_folder(box, deployed):
    build = copy_build(deployed, box)
    record = build / "demo" / ".stages" / "check.json"
    record.unlink()
    record.mkdir()
    run = box.run("deploy", "--out", build, timeout=60)
    assert_ok_or_clean(run, (2,))


def _edit_report(build: Path, edit) -> None:
    path = build / "demo" / "report.json"
    new = edit(json.loads(path.read_text()))
    write(path, new if isinstance(new, str) else json_text(new))


_REPORT_EDITS = {
    "deeply-nested": lambda r: "[" * 100_000 + "]" * 100_000,
    "section-a-number": lambda r: {**r, "quantize": 5},
    "section-a-list": lambda r: {**r, "check": [1, 2]},
    "labels-a-number": lambda r: {**r, "quantize": {**r["quantize"], "labels": 5}},
    "tool-versions-a-string": lambda r: {**r, "quantize": {**r["quantize"], "tool_versions": "2.21"}},
}


@pytest.mark.parametrize("task", ["deploy", "check", "firmware"])
@pytest.mark.parametrize("case", list(_REPORT_EDITS))
def test_cache_corrupt_report_json(box, deployed, case, task):
    """deploy re-renders the report of the demo's cached run; check and firmware read the
    report beside a (small) model."""
    if task == "deploy":
        build = copy_build(deployed, box)
        _edit_report(build, _REPORT_EDITS[case])
        args = ["deploy", "--out", build]
    else:
        model = small_model_with_demo_report(deployed, box)
        path = model.parent / "report.json"
        new = _REPORT_EDITS[case](json.loads(path.read_text()))
        write(path, new if isinstance(new, str) else json_text(new))
        args = ["check", "--model", model, "--no-interpreter"] if task == "check" else ["firmware", "--model", model]
    run = box.run(*args, timeout=60)
    assert_ok_or_clean(run, (2,))


@pytest.mark.parametrize("content", ["null", "[1, 2]", "{ this is not json"], ids=["null", "a-list", "not-json"])
def test_cache_unreadable_report_json_is_rewritten(box, deployed, content):
    build = copy_build(deployed, box)
    write(build / "demo" / "report.json", content)
    run = box.run("deploy", "--out", build, timeout=60)
    assert_ok(run)
    assert json.loads((build / "demo" / "report.json").read_text())["deploy"]["deployable"] is True


def test_cache_report_json_is_a_fifo(deployed_hang_runs):
    run, _ = deployed_hang_runs["report-fifo"]
    assert_ok_or_clean(run, (2,))


# A data function whose result changes although the spec string does not.
_CAL_MODULE = """import numpy as np
from calhelper import scale
def samples():
    base = np.load("cal_values.npy")
    return [np.clip(base[i] * scale(), 0, 1).astype(np.float32) for i in range(len(base))]
"""


@pytest.fixture(scope="module")
def datafn_project(deployed, tmp_path_factory):
    """A project whose `deploy --data calmod:samples` ran once (python -m: cwd on sys.path)."""
    base = tmp_path_factory.mktemp("datafn")
    project = base / "project"
    shutil.copytree(deployed / ".cache", project / "build" / ".cache")
    write(project / "calmod.py", _CAL_MODULE)
    write(project / "calhelper.py", "def scale():\n    return 1.0\n")
    npy(project / "cal_values.npy", samples(64))
    (base / "tmp").mkdir()
    run = run_invoke("deploy", "--data", "calmod:samples", "--target", "tflm", "--out", project / "build",
                     cwd=project, timeout=900, env={"TMPDIR": str(base / "tmp")})
    assert_ok(run)
    assert _stage_status(run, "quantize") == "ran"
    return project


@pytest.mark.parametrize("change", ["helper-module", "data-file-it-reads"])
@pytest.mark.slow
def test_cache_data_function_change_is_not_seen(datafn_project, tmp_path, change):
    project = tmp_path / "project"
    shutil.copytree(datafn_project, project, symlinks=True)
    if change == "helper-module":
        write(project / "calhelper.py", "def scale():\n    return 0.5\n")
    else:
        npy(project / "cal_values.npy", samples(64) * 0.25)
    (tmp_path / "tmp").mkdir()
    run = run_invoke("deploy", "--data", "calmod:samples", "--target", "tflm", "--out", project / "build",
                     cwd=project, timeout=900, env={"TMPDIR": str(tmp_path / "tmp")})
    assert_ok(run)
    assert _stage_status(run, "quantize") == "ran", \
        f"the calibration data changed ({change}) but quantize was skipped: a stale model\n  {run.describe()}"


@pytest.mark.slow
def test_cache_data_function_edit_is_not_seen_without_cwd_on_sys_path(deployed, box):
    """The `invoke`/`edge-deploy` console scripts do not put the current directory on sys.path
    (python -P here): the content hash cannot find the module and hashes only its name."""
    project = box.root
    shutil.copytree(deployed / ".cache", project / "build" / ".cache")
    write(project / "calfn.py", "import numpy as np\ndef samples():\n"
                                "    return list(np.load('cal_values.npy'))\n")
    npy(project / "cal_values.npy", samples(64))
    out = project / "build"
    first = box.run("deploy", "--data", "calfn:samples", "--target", "tflm", "--out", out, python_flags=("-P",),
                    timeout=900)
    assert_ok(first)
    write(project / "calfn.py", "import numpy as np\ndef samples():\n"
                                "    return [0.5 * x for x in np.load('cal_values.npy')]\n")
    second = box.run("deploy", "--data", "calfn:samples", "--target", "tflm", "--out", out, python_flags=("-P",),
                     timeout=900)
    assert_ok(second)
    assert _stage_status(second, "quantize") == "ran", \
        f"calfn.py was edited but quantize was skipped: a stale model\n  {second.describe()}"


# =============================================================================================
# 8. Tools: a compiler stand-in that misbehaves the way real binaries do
# =============================================================================================

_COMPILER = r'''
import os, pathlib, sys, time
args = sys.argv[1:]
MODE = {mode!r}
MARKER = pathlib.Path({marker!r})
PIDFILE = pathlib.Path({pidfile!r})
VERSION = {version!r}

def daemon():
    """Double fork and setsid, like a daemon: the grandchild keeps our stdout/stderr pipes."""
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            PIDFILE.write_text(str(os.getpid()))
            time.sleep(60)
            os._exit(0)
        os._exit(0)
    os.wait()

if "--version" in args:
    if MODE == "version-not-utf8":
        sys.stdout.buffer.write(b"\xff\xfe\x80 " + VERSION.encode() + b" \xc3\x28\n")
        sys.exit(0)
    if MODE == "version-hangs":
        PIDFILE.write_text(str(os.getpid()))
        time.sleep(600)
    print(VERSION, flush=True)
    if MODE == "version-daemon":
        daemon()
    sys.exit(0)
MARKER.write_text(" ".join(args))
out_dir = pathlib.Path(args[args.index("--out_dir") + 1])
print(VERSION, flush=True)
if MODE == "daemon":
    daemon()
    sys.exit(0)
if MODE == "flood":
    chunk = b"Operator not understood " * 4096
    while True:
        sys.stdout.buffer.write(chunk)
if MODE == "hang":
    PIDFILE.write_text(str(os.getpid()))
    time.sleep(600)
if MODE == "chatty-failure":
    for i in range(6000):
        print(f"progress line {{i}} " + "." * 40)
    sys.exit(1)
if MODE in ("success", "huge-output-model"):
    out = out_dir / (pathlib.Path(args[-1]).stem + "_edgetpu.tflite")
    with out.open("wb") as f:  # the input model stands in for the compiled one: a valid flatbuffer
        f.write(pathlib.Path(args[-1]).read_bytes())
        if MODE == "huge-output-model":
            f.truncate(3 << 30)
    print("Model compiled successfully in 5 ms.")
    print(f"Input model: {{args[-1]}}")
    print(f"Output model: {{out}}")
    print("Number of Edge TPU subgraphs: 1")
    print("Total number of operations: 1")
    sys.exit(0)
sys.exit(1)
'''


class Compiler:
    def __init__(self, folder: Path, mode: str):
        self.marker = folder / "compiler-ran.txt"
        self.pidfile = folder / "compiler-child.pid"
        self.path = script(folder / "edgetpu_compiler", _COMPILER.format(
            mode=mode, marker=str(self.marker), pidfile=str(self.pidfile), version=VERSION_LINE))

    def cleanup(self) -> None:
        """Kill what the stand-in left running (a daemon, a hang), so no test leaks processes."""
        if self.pidfile.is_file():
            try:
                os.kill(int(self.pidfile.read_text()), signal.SIGKILL)
            except (ValueError, ProcessLookupError):
                pass

    def alive(self) -> bool:
        if not self.pidfile.is_file():
            return False
        try:
            os.kill(int(self.pidfile.read_text()), 0)
        except (ValueError, ProcessLookupError):
            return False
        return True


@pytest.fixture
def compiler(box):
    made = []

    def make(mode: str) -> Compiler:
        c = Compiler(box.root, mode)
        made.append(c)
        return c

    yield make
    for c in made:
        c.cleanup()


def test_tools_compiler_version_is_not_utf8(box, compiler):
    c = compiler("version-not-utf8")
    run = box.run("compile", "--model", int8_model(box.root / "m"), "--compiler", c.path)
    assert_ok_or_clean(run, (2,))


@pytest.mark.parametrize("mode", ["version-hangs", "version-daemon"])
def test_tools_compiler_version_check_respects_timeout(hang_runs, mode):
    """`compile --timeout 3`: the `--version` probe hangs, or leaves a daemon on its pipes."""
    run, _ = hang_runs[f"compiler-{mode}"]
    assert_ok_or_clean(run, (2,))


def test_tools_compiler_leaves_a_daemon_holding_its_pipes(hang_runs):
    """`compile --timeout 5`: the compiler exits at once but a daemon child keeps its stdout."""
    run, _ = hang_runs["compiler-daemon"]
    assert_clean_failure(run, (2,), "--compiler")


def test_tools_compiler_floods_stdout(box, compiler):
    c = compiler("flood")
    run = box.run("compile", "--model", int8_model(box.root / "m"), "--compiler", c.path, "--timeout", "8",
                  as_bytes=2 * GB, timeout=60)
    assert_clean_failure(run, (2,), "--compiler")


def test_tools_compiler_writes_a_huge_output_model(box, compiler):
    c = compiler("huge-output-model")
    run = box.run("compile", "--model", int8_model(box.root / "m"), "--compiler", c.path,
                  as_bytes=2 * GB, timeout=60)
    assert_clean_failure(run, (2,))


@pytest.mark.parametrize("value", ["-5", "0"])
def test_tools_timeout_not_positive_is_blamed_on_the_compiler(box, compiler, value):
    c = compiler("hang")
    run = box.run("compile", "--model", int8_model(box.root / "m"), "--compiler", c.path, "--timeout", value,
                  timeout=30)
    assert_clean_failure(run, (2,), "--timeout")
    assert "did not finish" not in run.stderr, f"--timeout {value} is blamed on the compiler\n  {run.describe()}"
    assert not c.marker.exists(), "the compiler was started with an impossible --timeout"


@pytest.mark.parametrize("option, value", [
    ("--num-segments", "0"), ("--num-segments", "-1"), ("--delegate-search-step", "0"),
    ("--timeout-sec", "-1"), ("--min-runtime-version", "-1"),
])
def test_tools_compiler_options_out_of_range(box, compiler, option, value):
    c = compiler("exit1")
    run = box.run("compile", "--model", int8_model(box.root / "m"), "--compiler", c.path, option, value)
    assert_clean_failure(run, (2,), option)
    assert not c.marker.exists(), f"the compiler was started with {option} {value}"


# =============================================================================================
# 9. File system: names, special paths, links
# =============================================================================================

LONG = "n" * 300  # NAME_MAX is 255 on Linux file systems


@pytest.mark.parametrize("task", ["quantize", "deploy"])
def test_fs_name_too_long(box, task):
    run = box.run(task, "--name", LONG, "--out", box.root / "out")
    assert_clean_failure(run, (2,), "--")
    assert not litter(box.root)


def test_fs_firmware_out_name_too_long(box):
    run = box.run("firmware", "--model", int8_model(box.root / "m"), "--out", box.root / LONG)
    assert_clean_failure(run, (2,), "--out")
    assert not litter(box.root)


def test_fs_out_path_longer_than_path_max(box):
    deep = box.root.joinpath(*["d" * 200] * 22)  # > 4096 bytes
    run = box.run("quantize", "--out", deep)
    assert_clean_failure(run, (2,), "--out")


@pytest.mark.parametrize("out", [".", "..", "/"])
def test_fs_firmware_out_is_a_special_folder(box, out):
    work = box.root / "work"
    int8_model(work)
    write(work / "notes.txt", "mine\n")
    before = box.snap()
    run = box.run("firmware", "--model", work / "model_int8.tflite", "--out", out, cwd=work, timeout=60)
    lost = user_files_lost(before, box.snap())
    assert not lost, f"--out {out}: {lost}\n  {run.describe()}"
    if run.returncode != 0:
        assert_clean_failure(run, (2,), "--out")
    assert not litter(box.root) and not [p for p in Path("/").iterdir() if p.name.startswith(".-staging")]


@pytest.mark.parametrize("what", ["quantize-model", "firmware-data", "check-model"])
def test_fs_symlink_loop_is_reported_as_a_loop(box, what):
    loop = box.root / {"quantize-model": "net.keras", "firmware-data": "cal.npy", "check-model": "m.tflite"}[what]
    loop.symlink_to(loop.name)
    args = {"quantize-model": ["quantize", "--model", loop, "--out", box.root / "out"],
            "firmware-data": _data_task(box, "firmware", loop),
            "check-model": ["check", "--model", loop]}[what]
    run = box.run(*args)
    assert_clean_failure(run, (2,), loop.name)
    assert "no such file" not in run.error_lines()[0].lower(), f"a symlink loop reported as missing\n  {run.describe()}"


@pytest.mark.parametrize("kind", ["report.json-is-a-folder",
                                  pytest.param(".stages-is-a-file", marks=pytest.mark.slow)])
def test_fs_output_entry_of_the_wrong_kind(box, deployed, kind):
    """.stages as a file: no record can be read, so quantize reruns (TensorFlow) first."""
    build = copy_build(deployed, box)
    if kind == "report.json-is-a-folder":
        (build / "demo" / "report.json").unlink()
        (build / "demo" / "report.json").mkdir()
    else:
        shutil.rmtree(build / "demo" / ".stages")
        write(build / "demo" / ".stages", "not a folder\n")
    run = box.run("deploy", "--out", build, timeout=120)
    assert_ok_or_clean(run, (2,))


@pytest.mark.parametrize("task", ["check", "firmware", "verify"])
def test_fs_relative_model_path_from_a_project_folder(box, task):
    """From the user's project (not the checkout), `--model m/model_int8.tflite` is relative."""
    int8_model(box.root / "m")
    npy(box.root / "d.npy", samples())
    args = {"check": ["check", "--model", "m/model_int8.tflite", "--strict"],
            "firmware": ["firmware", "--model", "m/model_int8.tflite"],
            "verify": ["verify", "--model", "m/model_int8.tflite", "--data", "d.npy"]}[task]
    run = box.run(*args)
    assert_ok(run)


def test_fs_relative_out_from_a_project_folder(box, deployed):
    """`invoke deploy --target tflm` with the default --out build (relative), from the user's
    project folder: quantize is cached (the demo's deploy), check reruns for the new target."""
    copy_build(deployed, box)
    run = box.run("deploy", "--target", "tflm", timeout=300)
    assert_ok(run)
    assert _stage_status(run, "check") == "ran", run.describe()


# =============================================================================================
# 10. Models that do not fit the task
# =============================================================================================

def float_model(folder: Path) -> Path:
    return write(folder / "model_float.tflite", relu_model((1, 4), dtype="float32"))


def run_emulator(box: Sandbox, model, timeout: float = 20):
    """`invoke emulate`: (run, served). Served: its first stdout line is a port; it is then
    stopped with SIGTERM, as rigs stop it."""
    import select

    started = time.monotonic()
    proc = box.start("emulate", "--model", model)
    first = b""
    while time.monotonic() - started < timeout and proc.poll() is None and not first.endswith(b"\n"):
        if select.select([proc.stdout], [], [], 0.1)[0]:
            # one byte from the pipe itself: proc.stdout.read(1) may pull the whole line into
            # its buffer, where neither select() nor communicate() sees it again
            byte = os.read(proc.stdout.fileno(), 1)
            if not byte:
                break
            first += byte
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    run = finish(proc, ["emulate", "--model", str(model)], timeout + 15, started)
    run.stdout = first.decode("utf-8", "replace") + run.stdout
    return run, run.stdout.startswith("/dev/")


def test_models_float_model_to_firmware(box):
    run = box.run("firmware", "--model", float_model(box.root / "m"), "--out", box.root / "fw")
    assert_clean_failure(run, (1, 2), "--model")


def test_models_float_model_to_hil(box):
    run = box.run("hil", "--port", "/dev/null", "--model", float_model(box.root / "m"))
    assert_clean_failure(run, (1, 2))


def test_models_float_model_to_emulate(box):
    run, served = run_emulator(box, float_model(box.root / "m"))
    if not served:
        assert_clean_failure(run, (1, 2), "--model")


def _gelu_model() -> bytes:
    from tflite_builder import ModelBuilder

    mb = ModelBuilder()
    x, y = mb.tensor("x", (1, 4)), mb.tensor("y", (1, 4))
    mb.op("GELU", [x], [y])
    return mb.build([x], [y])


@pytest.mark.parametrize("kind", ["missing", "garbage", "truncated", "empty", "a-folder", "op-tflm-lacks"])
def test_models_emulate_with_a_bad_model(box, kind):
    path = box.root / "m.tflite"
    if kind == "garbage":
        write(path, os.urandom(4096))
    elif kind == "truncated":
        write(path, relu_model()[:300])
    elif kind == "empty":
        write(path, b"")
    elif kind == "a-folder":
        path.mkdir()
    elif kind == "op-tflm-lacks":
        write(path, _gelu_model())
    run, served = run_emulator(box, path)
    assert not served, f"the emulator serves a {kind} model"
    assert_clean_failure(run, (1, 2), "m.tflite")


def test_models_small_model_with_large_activations_to_firmware(box):
    """A 500-byte model whose activations need 8 KB of arena: `check` measures it; the golden
    outputs must be computed with that arena, not the TFLM Python interpreter's default."""
    model = write(box.root / "m" / "model_int8.tflite", relu_model((1, 64, 64, 1)))
    assert_ok(box.run("check", "--model", model, "--strict"))
    assert_ok(box.run("firmware", "--model", model, "--out", box.root / "fw"))


def test_models_small_model_with_large_activations_to_verify(box):
    model = write(box.root / "m" / "model_int8.tflite", relu_model((1, 64, 64, 1)))
    assert_ok(box.run("verify", "--model", model, "--data", npy(box.root / "d.npy", samples(4, (64, 64, 1)))))


def test_models_small_model_with_large_activations_to_emulate(box):
    model = write(box.root / "m" / "model_int8.tflite", relu_model((1, 64, 64, 1)))
    run, served = run_emulator(box, model, timeout=10)
    assert served, f"the emulator cannot run a model `invoke check` passes\n  {run.describe()}"


def test_models_a_diagnosis_that_cannot_run_leaves_deploys_verdict(box, deployed):
    """Every runtime that captures tensors aborts (as both of LiteRT's kernel sets and TFLM can
    on a model): diagnose only explains a verdict, so deploy's verdict and exit code stand and
    the diagnose line and report.json say it failed."""
    out = copy_build(deployed, box)
    hook = """
import subprocess, sys
_real = subprocess.run
def run(cmd, *a, **k):
    if "pipeline.runtime.tensor_capture" in cmd:
        cmd = [sys.executable, "-c", "import os; os.abort()"]
    return _real(cmd, *a, **k)
subprocess.run = run
"""
    run = box.run("deploy", "--out", out, "--diagnose", hook=hook, timeout=600)
    assert_ok(run)
    assert re.search(r"^diagnose\s+failed\s.*SIGABRT", run.stdout, re.M), run.describe()
    deploy = json.loads((out / "demo" / "report.json").read_text())["deploy"]
    assert deploy["deployable"] and deploy["stages"]["diagnose"]["status"] == "failed"


# =============================================================================================
# 11. Interruptions: the previous complete outputs survive, the next run recovers
# =============================================================================================

# Fault injection at the OS boundary: after the n-th rename/replace that touches the output
# folder's name, the process signals itself. Nothing of the project is replaced.
_SWAP_HOOK = """
import os, signal
_count = [0]
_real_rename, _real_replace = os.rename, os.replace
def _touches(*paths):
    return any(os.path.basename(os.fspath(p).rstrip("/")).lstrip(".").startswith({name!r}) for p in paths)
def _after(src, dst):
    if _touches(src, dst):
        _count[0] += 1
        if _count[0] == {nth}:
            os.kill(os.getpid(), {sig})
def _rename(src, dst, *a, **k):
    result = _real_rename(src, dst, *a, **k)
    _after(src, dst)
    return result
def _replace(src, dst, *a, **k):
    result = _real_replace(src, dst, *a, **k)
    _after(src, dst)
    return result
os.rename, os.replace = _rename, _replace
"""


@pytest.mark.parametrize("sig, nth", [(signal.SIGINT, 1), (signal.SIGTERM, 1), (signal.SIGKILL, 1), (signal.SIGKILL, 2)],
                         ids=["SIGINT-after-1st-rename", "SIGTERM-after-1st-rename", "SIGKILL-after-1st-rename",
                              "SIGKILL-after-2nd-rename"])
def test_interrupt_during_the_firmware_swap(box, sig, nth):
    folder = box.root / "m"
    model = int8_model(folder)
    assert_ok(box.run("firmware", "--model", model))
    old = snapshot(folder / "firmware")
    write(model, relu_model(scale=0.1))  # a new model: the next firmware differs
    hook = _SWAP_HOOK.format(name="firmware", nth=nth, sig=int(sig))
    run = box.run("firmware", "--model", model, hook=hook)
    now = snapshot(folder / "firmware")
    again = box.run("firmware", "--model", model)  # the recovery run makes the new project
    assert_ok(again)
    new = snapshot(folder / "firmware")
    assert old != new
    assert now in (old, new), (f"after {signal.Signals(sig).name} during the swap firmware/ is neither the "
                               f"previous nor the new project: {changes(old, now)}\n  {run.describe()}")
    if sig == signal.SIGINT:
        assert_clean_failure(run, (130,))
    assert not litter(folder), f"the next run did not clean up after the interrupted one: {litter(folder)}"


def test_interrupt_kill_during_the_edgetpu_swap(box, compiler):
    folder = box.root / "m"
    model = int8_model(folder)
    c = compiler("success")
    assert_ok(box.run("compile", "--model", model, "--compiler", c.path))
    old = snapshot(folder / "edgetpu")
    killed = box.run("compile", "--model", model, "--compiler", c.path,
                     hook=_SWAP_HOOK.format(name="edgetpu", nth=1, sig=int(signal.SIGKILL)))
    assert killed.returncode == -signal.SIGKILL
    # as for firmware/: the previous outputs, or (the swap is one atomic exchange) the new ones,
    # whole: the same files, each complete
    now = snapshot(folder / "edgetpu")
    assert set(now) == set(old), f"SIGKILL during the swap left a partial edgetpu/: {changes(old, now)}"
    json.loads((folder / "edgetpu" / "compile.json").read_text())
    assert_ok(box.run("compile", "--model", model, "--compiler", c.path))
    assert not litter(folder), litter(folder)


def test_interrupt_kill_during_an_atomic_write_leaves_litter(box):
    """SIGKILL between the temporary file and its rename: report.json stays whole, and the next
    run removes the orphaned temporary file."""
    folder = box.root / "m"
    model = int8_model(folder)
    our_report(folder)
    assert_ok(box.run("check", "--model", model, "--no-interpreter"))
    before = (folder / "report.json").read_bytes()
    hook = """
import os, signal
_real_replace = os.replace
def _replace(src, dst, *a, **k):
    if os.path.basename(os.fspath(dst)) == "report.json":
        os.kill(os.getpid(), signal.SIGKILL)
    return _real_replace(src, dst, *a, **k)
os.replace = _replace
"""
    killed = box.run("check", "--model", model, "--no-interpreter", hook=hook)
    assert killed.returncode == -signal.SIGKILL
    assert (folder / "report.json").read_bytes() == before
    assert_ok(box.run("check", "--model", model, "--no-interpreter"))
    assert not litter(folder), f"orphaned temporary files: {litter(folder)}"


def test_interrupt_during_compile_leaves_the_compiler_running(box, compiler):
    """Ctrl-C reaches the terminal's foreground process group; the compiler runs in a session
    of its own (start_new_session), so the tool must stop it on the way out."""
    c = compiler("hang")
    proc = box.start("compile", "--model", int8_model(box.root / "m"), "--compiler", c.path)
    started = time.monotonic()
    try:
        deadline = time.monotonic() + 20
        while not c.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert c.alive(), "the stand-in compiler never started"
        os.killpg(proc.pid, signal.SIGINT)
        run = finish(proc, ["compile", "(Ctrl-C)"], 30, started)
    finally:
        kill_group(proc)
    time.sleep(0.5)
    assert not c.alive(), f"edgetpu_compiler still runs after Ctrl-C\n  {run.describe()}"
    assert_clean_failure(run, (130,))


def test_interrupt_during_check_interpreter_run(box):
    """Ctrl-C to the foreground process group while the TFLM arena search runs. The probe
    process waits 30 s before it starts (a fast machine finishes the search in less than the
    0.3 s before the key press), so the key always lands while the tool waits on it; the timer
    is a daemon thread, which must not keep a finished run alive."""
    model = int8_model(box.root / "m")
    hook = """
import subprocess, os, signal, sys, threading
_real = subprocess.run
_LATER = "import subprocess, sys, time; time.sleep(30); sys.exit(subprocess.call(sys.argv[1:]))"
def run(cmd, *a, **k):
    if any("tflm_probe" in str(x) for x in cmd):
        press = threading.Timer(0.3, os.killpg, (os.getpgid(0), signal.SIGINT))
        press.daemon = True
        press.start()
        cmd = [sys.executable, "-c", _LATER, *cmd]
    return _real(cmd, *a, **k)
subprocess.run = run
"""
    run = box.run("check", "--model", model, hook=hook, timeout=60)
    assert_clean_failure(run, (130,))


# Ctrl-C during the TF conversion. TensorFlow runs in a converter process (pipeline/runtime/
# convert.py), so a key press reaches the whole foreground process group, as a terminal sends
# it; the hook delivers it that way once the converter process exists:
#  - "as-the-converter-starts": right after it is spawned, while it imports TensorFlow;
#  - "while-it-converts": a few seconds later, in the middle of the export and conversion
#    (before the converter moved there, this case is the one where the KeyboardInterrupt landed
#    in a finalizer during the converter's garbage collection and was "ignored").
_CONVERT_HOOK = """
import os, signal
import pipeline.runtime.convert as convert
interrupt = lambda: os.killpg(os.getpgid(0), signal.SIGINT)
if {when!r} == "start":  # the converter process was just started (or forked by the converter server)
    _real_init = convert._Worker.__init__
    def _init(self, *a, **k):
        _real_init(self, *a, **k)
        interrupt()
    convert._Worker.__init__ = _init
else:  # the model is loaded: the converter is at work
    _real_event = convert._Worker.event
    def _event(self):
        event = _real_event(self)
        if event and event.get("event") == "loaded":
            interrupt()
        return event
    convert._Worker.event = _event
"""


@pytest.mark.slow
@pytest.mark.parametrize("when", ["start", "loaded"], ids=["as-the-converter-starts", "while-it-converts"])
@pytest.mark.parametrize("server", [True, False], ids=["converter-server", "own-converter"])
def test_interrupt_ctrl_c_during_the_tf_conversion(box, deployed, when, server):
    out = box.root / "out"
    shutil.copytree(deployed / ".cache", out / ".cache")
    env = None if server else {"EDGE_DEPLOY_CONVERTER_SERVER": ""}
    run = box.run("quantize", "--out", out, hook=_CONVERT_HOOK.format(when=when), timeout=600, env=env)
    assert not (out / "demo" / "model_int8.tflite").exists(), f"Ctrl-C was swallowed: the run went on\n  {run.describe()}"
    assert_clean_failure(run, (130,))
    assert not litter(out) and not box.tmp_litter(), f"litter: {litter(out)} {box.tmp_litter()}"


# =============================================================================================
# 12. Disk full and read-only folders
# =============================================================================================

@pytest.fixture
def disk(box):
    made = []

    def make(name: str, size: int = 256 * 1024, *, fsize: int | None = None):
        d = small_disk(box.root / name, size, fsize=fsize)
        made.append(d)
        return d

    yield make
    for d in made:
        d.release()


def _disk_litter(d) -> list[str]:
    return [p for p in litter(d.path) if p != "filler.bin"]


def test_diskfull_firmware_out(box, disk):
    d = disk("full")
    model = int8_model(box.root / "m")
    d.fill(16 * 1024)
    run = box.run("firmware", "--model", model, "--out", d.path / "fw", fsize=d.fsize)
    assert_clean_failure(run, (2,), str(d.path))
    assert not _disk_litter(d), _disk_litter(d)


def test_diskfull_tmpdir_fills_up_during_firmware(box, disk):
    """TMPDIR has room for Python's probe, not for the golden inputs (4 x 4 KB) handed to the
    TFLM worker. (A TMPDIR already full or read-only is skipped by Python's tempfile.)"""
    d = disk("tmpfull", 64 * 1024)
    model = write(box.root / "m" / "model_int8.tflite", relu_model((1, 64, 64, 1), pad_bytes=64 * 1024))
    d.fill(6 * 1024)
    run = box.run("firmware", "--model", model, "--out", box.root / "fw", "--vectors", "4",
                  env={"TMPDIR": str(d.path)}, fsize=d.fsize)
    assert_clean_failure(run, (2,), str(d.path))
    assert not _disk_litter(d)


@pytest.mark.parametrize("task", ["check", "verify", "hil"])
def test_diskfull_report_beside_the_model(box, disk, task):
    d = disk("full")
    folder = d.path / "m"
    model = int8_model(folder)
    our_report(folder)
    d.fill(256)
    device = FakeDevice(model.read_bytes(), on_run=_relu_device_reply) if task == "hil" else None
    try:
        args = {"check": ["check", "--model", model, "--no-interpreter"],
                "verify": ["verify", "--model", model, "--data", npy(box.root / "d.npy", samples())],
                "hil": ["hil", "--model", model, "--port", device.port if device else ""]}[task]
        run = box.run(*args, fsize=d.fsize, timeout=60)
    finally:
        if device:
            device.close()
    assert_ok_or_clean(run, (2,))
    assert json.loads((folder / "report.json").read_text())["generated_by"]
    assert not _disk_litter(d), _disk_litter(d)


def test_diskfull_compile_staging(box, disk, compiler):
    d = disk("full")
    model = int8_model(d.path / "m")
    c = compiler("chatty-failure")
    d.fill(8 * 1024)
    run = box.run("compile", "--model", model, "--compiler", c.path, fsize=d.fsize)
    assert_clean_failure(run, (2,))
    assert not _disk_litter(d), _disk_litter(d)


@pytest.mark.slow
def test_diskfull_tmpdir_during_the_savedmodel_export(box, deployed, disk):
    out = box.root / "out"
    shutil.copytree(deployed / ".cache", out / ".cache")
    d = disk("tmpfull", 512 * 1024)
    run = box.run("quantize", "--out", out, env={"TMPDIR": str(d.path)}, fsize=d.fsize, timeout=600)
    assert_clean_failure(run, (2,), str(d.path))
    assert not _disk_litter(d), _disk_litter(d)
    assert not (out / "demo" / "model_int8.tflite").exists()


@pytest.mark.slow
def test_diskfull_while_caching_the_trained_demo(box, disk):
    d = disk("full", 1024 * 1024)
    run = box.run("quantize", "--out", d.path, fsize=d.fsize, timeout=900)
    assert_clean_failure(run, (2,), str(d.path))
    assert not _disk_litter(d), f"temporary files left behind: {_disk_litter(d)}"


@pytest.mark.parametrize("task", ["firmware-out", "check", "verify", "compile"])
def test_readonly_folder(box, disk, compiler, task):
    d = disk("ro")
    folder = d.path / "m"
    model = int8_model(folder)
    our_report(folder)
    c = compiler("exit1")
    d.make_readonly()
    args = {"firmware-out": ["firmware", "--model", model],
            "check": ["check", "--model", model, "--no-interpreter"],
            "verify": ["verify", "--model", model, "--data", npy(box.root / "d.npy", samples())],
            "compile": ["compile", "--model", model, "--compiler", c.path]}[task]
    run = box.run(*args, timeout=60)
    if task in ("firmware-out", "compile"):
        assert_clean_failure(run, (2,), str(folder))
    else:
        assert_ok_or_clean(run, (2,))


def test_readonly_tmpdir_is_skipped_for_firmware(box, disk):
    d = disk("rotmp")
    d.make_readonly()
    run = box.run("firmware", "--model", int8_model(box.root / "m"), "--out", box.root / "fw",
                  env={"TMPDIR": str(d.path)})
    assert_ok_or_clean(run, (2,))


# =============================================================================================
# 13. Serial / HIL: a device on a pseudo-terminal that misbehaves
# =============================================================================================

@pytest.fixture
def device():
    made = []

    def make(model: bytes | None, **kw) -> FakeDevice:
        d = FakeDevice(model, **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


def test_serial_device_unplugged_mid_run(box, device):
    model = int8_model(box.root / "m")
    dev = device(model.read_bytes(), on_run=lambda frame: "unplug")
    run = box.run("hil", "--port", dev.port, "--model", model, "--timeout", "2", timeout=60)
    assert_clean_failure(run, (2,), "--port")


def test_serial_timeout_nan_with_a_silent_device(hang_runs):
    run, _ = hang_runs["hil-timeout-nan"]
    assert_clean_failure(run, (2,), "--timeout")


@pytest.mark.parametrize("option, value", [
    ("--timeout", "-1"), ("--timeout", "0"), ("--retries", "-1"),
    ("--baud", "-1"), ("--baud", "0"), ("--baud", "100000000000"),
    ("--vectors", "0"), ("--vectors", "-1"), ("--tolerance", "-1"),
])
def test_serial_option_out_of_range(box, device, option, value):
    model = int8_model(box.root / "m")
    dev = device(model.read_bytes(), on_run=_relu_device_reply)
    run = box.run("hil", "--port", dev.port, "--model", model, option, value, timeout=30)
    assert_clean_failure(run, (2,), option)


def _int16_model() -> bytes:
    return reshape_model(dtype="int16", scale=0.01)


@pytest.mark.parametrize("reply", ["odd-length-for-int16", "extra-trailing-bytes"])
def test_serial_reply_payload_does_not_fit_the_outputs(box, device, reply):
    if reply == "odd-length-for-int16":
        model = write(box.root / "m" / "model_int16.tflite", _int16_model())
        on_run = lambda frame: run_ok_reply(frame, b"\x01\x02\x03")
    else:
        model = int8_model(box.root / "m")
        on_run = lambda frame: run_ok_reply(frame, np.maximum(np.frombuffer(frame.payload, np.int8), 0)
                                            .astype(np.int8).tobytes() + b"\x00" * 16)
    dev = device(model.read_bytes(), on_run=on_run)
    run = box.run("hil", "--port", dev.port, "--model", model, "--timeout", "2", timeout=60)
    assert_clean_failure(run, (2,), "--port")


def test_serial_port_is_a_users_file(box):
    notes = write(box.root / "notes.txt", "precious\n")
    run = box.run("hil", "--port", notes, "--model", int8_model(box.root / "m"))
    assert notes.read_text() == "precious\n"
    assert_clean_failure(run, (2,), "--port")


def test_serial_deploy_validates_baud_before_any_stage(box, deployed):
    build = copy_build(deployed, box)
    run = box.run("deploy", "--out", build, "--port", "/dev/null", "--baud", "-1", timeout=120)
    assert_clean_failure(run, (2,), "--baud")
    assert _stage_status(run, "quantize") is None, "stages ran before --baud was validated"


# =============================================================================================
# 14. Properties: mutated models, names, report.json and stage records
# =============================================================================================


# Deterministic examples (the same cases every run), few of them, not shrunk: each example is
# a subprocess of a second or more, and the falsifying example is printed as drawn.
PROPERTY = settings(deadline=None, derandomize=True, database=None, phases=(Phase.generate,),
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class _Quiet(dict):
    """A fixture value hypothesis prints in a falsifying example: keep it to one line."""

    def __repr__(self) -> str:
        return f"<{len(self)} keys>"


def _example_box(tmp_path: Path) -> Sandbox:
    import tempfile

    return Sandbox(Path(tempfile.mkdtemp(dir=tmp_path)))


def _base_models() -> dict[str, bytes]:
    from reliability_support import fully_connected_model

    return {"relu": relu_model(), "reshape": reshape_model(), "fully_connected": fully_connected_model()}


_WORDS = (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFF, 1 << 20)


@st.composite
def mutated_models(draw):
    """A valid flatbuffer, then: bit flips, a truncation, a slice repeated many times (tables and
    vectors seen again and again), or a 32-bit word (offset, length) set to an extreme value."""
    base = draw(st.sampled_from(sorted(_base_models())))
    data = bytearray(_base_models()[base])
    kind = draw(st.sampled_from(["bit-flips", "truncate", "repeat-slice", "extreme-word"]))
    if kind == "bit-flips":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif kind == "repeat-slice":
        start = draw(st.integers(0, len(data) - 2))
        end = draw(st.integers(start + 1, min(len(data), start + 64)))
        at = draw(st.integers(0, len(data)))
        data = data[:at] + data[start:end] * draw(st.integers(2, 400)) + data[at:]
    else:
        pos = draw(st.integers(0, len(data) // 4 - 1)) * 4
        struct.pack_into("<I", data, pos, draw(st.sampled_from(_WORDS + (len(data), len(data) - 4))))
    return f"{base}/{kind}", bytes(data)


@settings(PROPERTY, max_examples=20)
@given(mutated_models())
def test_property_check_on_mutated_models(tmp_path, case):
    name, data = case
    box = _example_box(tmp_path)
    model = write(box.root / "m" / "model.tflite", data)
    before = box.snap()
    run = box.run("check", "--model", model, "--json", timeout=90)
    assert_ok_or_clean(run)
    if run.returncode == 0:
        assert isinstance(json.loads(run.stdout), dict), f"{name}: --json printed more than one object"
    assert changes(before, box.snap()) == {"added": [], "removed": [], "changed": []}, name
    assert not box.tmp_litter(), name


@settings(PROPERTY, max_examples=10)
@given(mutated_models())
def test_property_firmware_on_mutated_models(tmp_path, case):
    name, data = case
    box = _example_box(tmp_path)
    model = write(box.root / "m" / "model.tflite", data)
    before = box.snap()
    run = box.run("firmware", "--model", model, "--out", box.root / "fw", timeout=90)
    assert_ok_or_clean(run)
    assert not changed_outside(before, box.snap(), allowed=("fw",)), name
    if run.returncode == 0:
        errors = syntax_check(box.root / "fw")
        assert errors is None, f"{name}: the generated sources do not compile:\n{errors}"


# Names: what a file system, a converter or a Keras user can put in a file, folder or tensor name.
_HOSTILE = list("\n\r\t\"'\\*#${}<>&|`;()[]?=!%@~ ") + ["*/", "/*", "??/", "\u00e9", "\u6a21", "\u2028",
                                                        "\u202e", "x", "_", "0", "-"]
hostile_names = st.lists(st.sampled_from(_HOSTILE), min_size=1, max_size=12).map("".join)
hostile_file_names = hostile_names.map(lambda s: s.replace("/", "") or "x").filter(lambda s: s not in (".", ".."))


def _cmake_commands(text: str, project_line: str = "project(") -> list[str]:
    """CMake's view of the file: the non-comment lines, split on "\\n" as CMake splits them."""
    lines = [l for l in text.split("\n") if l.strip() and not l.lstrip().startswith("#")]
    return ["project(...)" if l.startswith(project_line) else l for l in lines]


@pytest.fixture(scope="module")
def reference_firmware(tmp_path_factory) -> dict[str, str]:
    """The firmware project and report.md for plain names: what the names must not change."""
    box = Sandbox(tmp_path_factory.mktemp("reference"))
    folder = box.root / "ref"
    model = int8_model(folder, "model.tflite")
    our_report(folder)
    assert_ok(box.run("firmware", "--model", model, "--out", box.root / "fw"))
    assert_ok(box.run("check", "--model", model, "--no-interpreter"))
    return _Quiet({"CMakeLists.txt": (box.root / "fw" / "CMakeLists.txt").read_text(),
                   "report.md": (folder / "report.md").read_text()})


@settings(PROPERTY, max_examples=12)
@given(file_name=hostile_file_names, folder_name=hostile_file_names, in_name=hostile_names,
       out_name=hostile_names)
def test_property_names_reach_generated_files_escaped(tmp_path, reference_firmware, file_name, folder_name,
                                                      in_name, out_name):
    box = _example_box(tmp_path)
    folder = box.root / folder_name
    model = write(folder / (file_name + ".tflite"), relu_model(in_name=in_name, out_name=out_name))
    our_report(folder)
    before = box.snap()
    run = box.run("firmware", "--model", model, "--out", box.root / "fw", timeout=90)
    assert_ok_or_clean(run)
    if run.returncode == 0:
        errors = syntax_check(box.root / "fw")
        assert errors is None, f"the generated sources do not compile:\n{errors}"
        cmake = (box.root / "fw" / "CMakeLists.txt").read_text()
        assert _cmake_commands(cmake) == _cmake_commands(reference_firmware["CMakeLists.txt"]), \
            "a name changed what CMake executes"
    checked = box.run("check", "--model", model, "--no-interpreter", timeout=60)
    assert_ok_or_clean(checked)
    if checked.returncode == 0:
        md = (folder / "report.md").read_text()
        assert len(md.split("\n")) == len(reference_firmware["report.md"].split("\n")), \
            "a name added lines (headings, HTML blocks) to report.md"
    assert not changed_outside(before, box.snap(), allowed=("fw", str(folder.relative_to(box.root))))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 63, 2 ** 63) | st.floats(allow_nan=False)
    | st.sampled_from(["\n# INJECTED\n<script>x</script>", '"\n#error INJECTED\n"', "|`*_[x](y)", ""])
    | hostile_names,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6)


def _json_paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _json_paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _json_paths(v, prefix + (i,))


def _replace_at(node, path, value):
    if not path:
        return value
    node[path[0]] = _replace_at(node[path[0]], path[1:], value)
    return node


@st.composite
def report_mutations(draw, report: dict, under: tuple = ()):
    paths = [p for p in _json_paths(report) if p[:len(under)] == under]
    path = draw(st.sampled_from(paths))
    return path, _replace_at(json.loads(json.dumps(report)), path, draw(json_values))


@pytest.fixture(scope="module")
def deployed_report(deployed) -> dict:
    return _Quiet(json.loads((deployed / "demo" / "report.json").read_text()))


@settings(PROPERTY, max_examples=15)
@given(data=st.data())
def test_property_hand_edited_report_json(tmp_path, deployed, deployed_report, data):
    path, report = data.draw(report_mutations(dict(deployed_report)))
    box = _example_box(tmp_path)
    model = small_model_with_demo_report(deployed, box)
    write(model.parent / "report.json", json_text(report))
    before = box.snap()
    run = box.run("check", "--model", model, "--no-interpreter", timeout=60)
    assert_ok_or_clean(run)
    assert not changed_outside(before, box.snap(), allowed=("build/m",)), path
    # The folder (no .edge-deploy marker) is the tool's only while its report.json says so
    # (README, "What --out may point at"): an edit of the whole file or of `generated_by` makes
    # it a user's folder, where check writes nothing. Otherwise report.md must be written.
    ours = isinstance(report, dict) and str(report.get("generated_by", "")).startswith("edge-deploy")
    if run.returncode == 0 and not ours:
        assert changes(before, box.snap()) == {"added": [], "removed": [], "changed": []}, \
            f"report.json{list(path)} no longer marks the folder as the tool's, yet check wrote into it"
    elif run.returncode == 0:
        bad = _report_md_injected((model.parent / "report.md").read_text())
        assert not bad, f"report.json{list(path)} rendered as Markdown/HTML: {bad}"


@settings(PROPERTY, max_examples=10)
@given(data=st.data())
def test_property_hand_edited_report_json_reaches_firmware(tmp_path, deployed, deployed_report, data):
    path, report = data.draw(report_mutations(dict(deployed_report), under=("quantize",)))
    box = _example_box(tmp_path)
    model = small_model_with_demo_report(deployed, box)
    write(model.parent / "report.json", json_text(report))
    run = box.run("firmware", "--model", model, timeout=90)
    assert_ok_or_clean(run)
    if run.returncode == 0:
        errors = syntax_check(model.parent / "firmware")
        assert errors is None, f"report.json{list(path)}: the generated sources do not compile:\n{errors}"


@settings(PROPERTY, max_examples=10)
@given(data=st.data())
def test_property_corrupt_stage_records(tmp_path, deployed, data):
    """Any content in a record of the cheap stages (firmware, verify): deploy succeeds
    (rerunning what it cannot trust) or stops with one line; it never writes outside --out."""
    stage = data.draw(st.sampled_from(["firmware", "verify"]))
    box = _example_box(tmp_path)
    build = copy_build(deployed, box)
    record_path = build / "demo" / ".stages" / f"{stage}.json"
    record = json.loads(record_path.read_text())
    how = data.draw(st.sampled_from(["replace-a-value", "random-json", "random-bytes"]))
    if how == "replace-a-value":
        path = data.draw(st.sampled_from(list(_json_paths(record))))
        write(record_path, json_text(_replace_at(record, path, data.draw(json_values))))
    elif how == "random-json":
        write(record_path, json.dumps(data.draw(json_values)))
    else:
        write(record_path, data.draw(st.binary(max_size=200)))
    before = box.snap()
    run = box.run("deploy", "--out", build, timeout=120)
    assert_ok_or_clean(run)
    assert not changed_outside(before, box.snap(), allowed=("build",)), f"{stage}: {how}"
