"""The compile stage: the parser on every real compiler log (expectations read off each log by
hand), and the whole stage against stand-in compilers replaying those logs."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, invoke_cmd, as_task
from pipeline.stages.compile import (STATUS_FIXES, CompileOptions, compile_edgetpu, find_compiler,
                              parse_compiler_output, parse_size)
from pipeline.errors import NotDeployableError, PipelineError
from pipeline.tflite_model import read_model

LOGS = ROOT.parent / "shared" / "reference" / "edgetpu" / "logs"
FAKE = Path(__file__).with_name("fake_edgetpu_compiler.py")
MAPPED = "Mapped to Edge TPU"

V14, V15, V16 = "14.1.317412892", "15.0.340273435", "16.0.384591198"

# Per log: version, then per run (runs split at the pasted "$ " prompts): succeeded, failure kinds,
# and for the first compiled block: total ops, subgraphs, tpu ops, cpu ops, table rows, sum of
# row counts, sum of mapped row counts (None: not in the log, or the log is truncated there).
EXPECTED = {
    "v14_failed_model_not_quantized.txt": (V14, [(False, ["not_quantized"], None)]),
    "v14_internal_compiler_error_no_blank_line.txt": (V14, [(False, ["internal_error"], None)]),
    "v14_internal_compiler_error_nondeterministic.txt": (V14, [
        (False, ["internal_error"], None), (False, ["internal_error"], None),
        (True, [], (108, 1, 102, 6, 0, 0, 0))]),
    "v14_logfile_tiny_yolo_multi_subgraph.log.txt": (V14, [(True, [], (None, None, None, None, 8, 25, 19))]),
    "v14_min_runtime_10_zero_subgraphs.txt": (V14, [(True, [], (42, 0, 0, None, 0, 0, 0))]),
    "v14_partial_no_show_ops_then_internal_error.txt": (V14, [
        (True, [], (24, 1, 6, 18, 0, 0, 0)), (False, ["internal_error"], None)]),
    "v15_failed_model_not_quantized.txt": (V15, [(False, ["not_quantized"], None)]),
    "v15_failed_rsqrt_registration.txt": (V15, [(False, ["op_version", "registration"], None)]),
    "v15_full_enable_multiple_subgraphs_flag_a.txt": (V15, [(True, [], (68, 1, None, None, 5, 68, 68))]),
    "v15_full_show_ops_small_model.txt": (V15, [(True, [], (15, 1, None, None, 5, 15, 15))]),
    "v15_internal_compiler_error.txt": (V15, [(False, ["internal_error"], None)]),
    "v15_logfile_mnist_dequantize_unsupported_type.log.txt": (V15, [(True, [], (None, None, None, None, 7, 10, 8))]),
    "v15_logfile_mnist_full.log.txt": (V15, [(True, [], (None, None, None, None, 5, 8, 8))]),
    "v15_min_runtime_11_zero_subgraphs.txt": (V15, [(True, [], (69, 0, 0, None, 0, 0, 0))]),
    "v15_partial_yolov3tiny_leakyrelu_unsupported.txt": (V15, [(True, [], (36, 1, 2, 34, 9, 36, 2))]),
    "v15_partial_yolov5s_transpose_strided_slice.txt": (V15, [(True, [], (294, 1, 1, 293, 18, 294, 1))]),
    "v16_failed_dynamic_sized_tensors.txt": (V16, [(False, ["dynamic_tensors", "interpreter_failed"], None)]),
    "v16_failed_large_activation_tensors.txt": (V16, [(False, ["delegate_failed", "large_activations"], None)]),
    "v16_failed_large_activation_with_flag_a_exit1.txt": (V16, [(False, ["delegate_failed", "large_activations"], None)]),
    "v16_full_no_show_ops_mobilenetv3.txt": (V16, [(True, [], (50, 1, None, None, 0, 0, 0))]),
    "v16_logfile_spaghettinet_custom_op_partial.log.txt": (V16, [(True, [], (None, None, None, None, 10, 193, 192))]),
    "v16_num_segments_efficientdet_lite3.txt": (V16, [(False, ["delegate_failed"], (84, 1, None, None, 0, 0, 0))]),
    "v16_partial_no_show_ops_only_cpu_rows.txt": (None, [(True, [], (141, 1, 138, 3, 3, 3, 0))]),
    "v16_search_delegate_internal_error.txt": (V16, [(False, ["delegate_failed", "delegate_internal"], None)]),
    "v16_search_delegate_large_activation_steps.txt": (V16, [(False, ["delegate_failed", "large_activations"] * 2, None)]),
    "v16_zero_subgraphs_unsupported_type_and_rank.txt": (V16, [(True, [], (157, 0, 0, 157, 1, 10, 0))]),
    "v2.0_partial_retinaface_old_memory_lines.txt": ("2.0.291256449", [(True, [], (90, 1, 39, 51, 1, 6, 0))]),
    "v2.1_partial_deeplab_multi_subgraph.txt": ("2.1.302470888", [(True, [], (113, 1, 26, 87, 3, 12, 1))]),
    "v2.1_partial_show_ops_offchip_multi_subgraph.txt": ("2.1.302470888", [(True, [], (93, 1, 83, 10, 4, 15, 13))]),
    "v2.1_partial_show_ops_relu_model.txt": ("2.1.302470888", [(True, [], (23, 1, 6, None, 0, 0, 0))]),
}


def log_path(name: str) -> Path:
    path = LOGS / name
    if not path.is_file():
        pytest.skip(f"{path} is absent: ../shared/reference is not beside this checkout (CI has it)")
    return path


def runs_of(text: str) -> list[str]:
    """Pasted logs show several runs separated by the shell prompt line."""
    chunks, current = [], []
    for line in text.splitlines():
        if line.startswith("$ "):
            if current:
                chunks.append("\n".join(current))
            current = []
        else:
            current.append(line)
    chunks.append("\n".join(current))
    return [c for c in chunks if c.strip()]


def test_every_reference_log_has_an_expectation():
    if not LOGS.is_dir():
        pytest.skip("../shared/reference is absent")
    assert sorted(p.name for p in LOGS.iterdir()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parse_real_log(name):
    version, runs = EXPECTED[name]
    texts = runs_of(log_path(name).read_text())
    assert len(texts) == len(runs)
    for text, (succeeded, failures, first) in zip(texts, runs):
        out = parse_compiler_output(text)
        assert out.unknown_lines == [], "every line of a real log must be understood"
        assert out.version == version
        assert out.succeeded == succeeded
        assert [f.kind.key for f in out.failures] == failures
        if first is None:
            assert out.blocks == []
            continue
        b = out.blocks[0]
        total, subgraphs, tpu, cpu, rows, row_sum, mapped_sum = first
        assert (b.total_ops, b.subgraphs, b.tpu_ops, b.cpu_ops) == (total, subgraphs, tpu, cpu)
        assert len(b.ops) == rows
        assert sum(r.count for r in b.ops) == row_sum
        assert sum(r.count for r in b.ops if r.mapped) == mapped_sum
        assert all(r.status in STATUS_FIXES for r in b.ops), "every real status has a known fix"


def test_memory_lines_and_sizes():
    out = parse_compiler_output(log_path("v14_internal_compiler_error_nondeterministic.txt").read_text()
                                .split("$ edgetpu_compiler cam-ai_model_quant.tflite")[-1])
    b = out.blocks[0]
    assert b.on_chip_used == parse_size("5.99MiB") and b.on_chip_remaining == 74 * 1024
    assert b.off_chip_streamed == round(15.73 * 1024 ** 2)
    assert b.input_size == round(46.29 * 1024 ** 2) and b.compile_ms == 1626
    old = parse_compiler_output(log_path("v2.0_partial_retinaface_old_memory_lines.txt").read_text()).blocks[0]
    assert old.on_chip_available == round(7.69 * 1024 ** 2) and old.on_chip_remaining is None


def test_search_delegate_and_segments_details():
    out = parse_compiler_output(log_path("v16_search_delegate_internal_error.txt").read_text())
    assert out.search_step == 1 and out.search_attempts == [43, 42]
    assert out.intermediate_tensors == ["PartitionedCall:01", "PartitionedCall:1"]
    assert out.timeout_sec == 180
    seg = parse_compiler_output(log_path("v16_num_segments_efficientdet_lite3.txt").read_text())
    assert seg.blocks[0].input_model.endswith("_segment_0_of_2.tflite")
    assert not seg.succeeded  # the second segment failed after the first compiled


def test_only_unmapped_rows_and_wrapped_paragraph():
    out = parse_compiler_output(log_path("v16_partial_no_show_ops_only_cpu_rows.txt").read_text())
    assert out.blocks[0].only_unmapped_rows
    wrapped = parse_compiler_output(runs_of(log_path("v14_partial_no_show_ops_then_internal_error.txt")
                                            .read_text())[0])
    assert wrapped.unknown_lines == []


def test_unknown_lines_and_statuses_are_kept():
    out = parse_compiler_output("Edge TPU Compiler version 99.0\nModel compiled successfully in 3 ms.\n"
                                "Total number of operations: 2\nA brand new line\n\n"
                                "Operator                       Count      Status\n\n"
                                "CONV_2D                        2          Some future status\n")
    assert out.unknown_lines == ["A brand new line"]
    row = out.blocks[0].ops[0]
    assert row.to_json()["known_status"] is False and not row.mapped
    assert "unknown status" in row.to_json()["fix"]


# --- the stage with stand-in compilers ----------------------------------------------------

def make_compiler(tmp_path: Path, log: str, mode: str = "replay", folder: str = "bin") -> Path:
    """An executable named like the real one, with the real log to replay baked in."""
    d = tmp_path / folder
    d.mkdir(parents=True, exist_ok=True)
    exe = d / "edgetpu_compiler"
    exe.write_text(f"#!/bin/sh\nFAKE_EDGETPU_LOG='{log_path(log)}' FAKE_EDGETPU_MODE={mode} "
                   f"exec '{sys.executable}' '{FAKE}' \"$@\"\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return exe


@pytest.fixture
def model_dir(demo_int8, tmp_path):
    """A copy of the demo's build directory, so each test compiles into its own edgetpu/."""
    d = tmp_path / "build" / "demo"
    d.mkdir(parents=True)
    for f in ("model_int8.tflite", "report.json"):
        (d / f).write_bytes((demo_int8.output_dir / f).read_bytes())
    return d


def test_success_writes_outputs_and_compares_with_prediction(model_dir, tmp_path):
    exe = make_compiler(tmp_path, "v15_full_show_ops_small_model.txt")
    r = as_task("compile", model_dir / "model_int8.tflite", compiler=str(exe))
    assert r.compiled and r.compiler_version == V15
    out = model_dir / "edgetpu"
    assert sorted(p.name for p in out.iterdir()) == [
        ".edge-deploy-manifest.json", "compile.json", "compiler_stdout.txt", "model_int8_edgetpu.log", "model_int8_edgetpu.tflite"]
    compiled = read_model(out / "model_int8_edgetpu.tflite")
    assert [op.op for op in compiled.main.operators] == ["CUSTOM:edgetpu-custom-op"]
    doc = json.loads((out / "compile.json").read_text())
    assert doc["result"]["models"][0]["total_ops"] == 15
    assert doc["compiled_models"][0]["edgetpu_custom_ops"] == 1
    # the replayed model is not the demo: its disagreements with our prediction are shown
    ops = {d["op"] for d in doc["prediction_disagreements"]}
    assert {"ADD", "MUL", "MAX_POOL_2D"} <= ops
    report = json.loads((model_dir / "report.json").read_text())
    assert report["compile"]["compiled"] is True
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".edgetpu")], "no staging left"


def test_partial_mapping_is_explained(model_dir, tmp_path):
    exe = make_compiler(tmp_path, "v15_partial_yolov3tiny_leakyrelu_unsupported.txt")
    r = compile_edgetpu(model_dir / "model_int8.tflite", compiler=str(exe))
    cpu = r.compiled_models[0]["cpu_ops"]
    assert len(cpu) == 34 and cpu.count("LEAKY_RELU") == 11
    assert r.compiled_models[0]["mapped_ops"] == 2
    assert any(line.startswith("11 x LEAKY_RELU: Operation not supported") for line in r.explanations)
    assert any("the graph is cut at op" in line or "cuts the graph" in line for line in r.explanations)


def test_options_reach_the_compiler_and_segments_are_written(model_dir, tmp_path):
    exe = make_compiler(tmp_path, "v16_full_no_show_ops_mobilenetv3.txt")
    opts = CompileOptions(min_runtime_version=13, num_segments=None, search_delegate=True,
                          delegate_search_step=2, timeout_sec=60, enable_multiple_subgraphs=True)
    args = opts.arguments(Path("/o"))
    assert args[:3] == ["--out_dir", "/o", "--show_operations"]
    assert ["--min_runtime_version", "13"] == args[3:5] and "--search_delegate" in args
    r = compile_edgetpu(model_dir / "model_int8.tflite", compiler=str(exe), options=opts)
    assert r.compiled and r.parsed.timeout_sec == 180


@pytest.mark.parametrize("log,error,kind", [
    ("v15_failed_model_not_quantized.txt", NotDeployableError, "Model not quantized"),
    ("v16_failed_dynamic_sized_tensors.txt", NotDeployableError, "Model failed in Tflite interpreter"),
    ("v16_failed_large_activation_tensors.txt", NotDeployableError, "large activation tensors"),
    ("v15_failed_rsqrt_registration.txt", NotDeployableError, "Registration failed"),
    ("v15_internal_compiler_error.txt", PipelineError, "Internal compiler error"),
    ("v16_search_delegate_internal_error.txt", PipelineError, "Internal error"),
    ("v16_num_segments_efficientdet_lite3.txt", PipelineError, "Restored original execution plan"),
])
def test_failures_leave_previous_outputs_intact(model_dir, tmp_path, log, error, kind):
    good = make_compiler(tmp_path, "v15_full_show_ops_small_model.txt", folder="good")
    compile_edgetpu(model_dir / "model_int8.tflite", compiler=str(good))
    before = {p.name: p.read_bytes() for p in (model_dir / "edgetpu").iterdir()}
    bad = make_compiler(tmp_path, log, folder="bad")
    with pytest.raises(error, match=kind) as info:
        compile_edgetpu(model_dir / "model_int8.tflite", compiler=str(bad))
    assert info.value.exit_code == (1 if error is NotDeployableError else 2)
    assert info.value.fix
    after = {p.name: p.read_bytes() for p in (model_dir / "edgetpu").iterdir()}
    assert after == before, "a failed run must not touch the previous good outputs"
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".edgetpu")]


@pytest.mark.parametrize("mode,match", [("exit3", "exited 3 without a result"),
                                        ("segv", r"crashed \(SIGSEGV\)"),
                                        ("garbage", "corrupt|file identifier|too short")])
def test_broken_compilers(model_dir, tmp_path, mode, match):
    exe = make_compiler(tmp_path, "v15_full_show_ops_small_model.txt", mode=mode)
    with pytest.raises(PipelineError, match=match) as info:
        compile_edgetpu(model_dir / "model_int8.tflite", compiler=str(exe))
    assert info.value.exit_code == 2
    assert not (model_dir / "edgetpu").exists()
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".edgetpu")]


def test_hanging_compiler_is_stopped(model_dir, tmp_path):
    exe = make_compiler(tmp_path, "v15_full_show_ops_small_model.txt", mode="hang")
    with pytest.raises(PipelineError, match="did not finish within 2 s"):
        compile_edgetpu(model_dir / "model_int8.tflite", compiler=str(exe), wall_timeout_s=2)
    assert not (model_dir / "edgetpu").exists()


def test_path_with_spaces(demo_int8, tmp_path):
    d = tmp_path / "my builds" / "demo model"
    d.mkdir(parents=True)
    (d / "model_int8.tflite").write_bytes(demo_int8.quantized_model.read_bytes())
    exe = make_compiler(tmp_path, "v15_full_show_ops_small_model.txt", folder="tool dir")
    r = compile_edgetpu(d / "model_int8.tflite", compiler=str(exe))
    assert r.compiled and (d / "edgetpu" / "model_int8_edgetpu.tflite").is_file()


def test_discovery_order(tmp_path, monkeypatch):
    on_path = make_compiler(tmp_path, "v15_full_show_ops_small_model.txt", folder="onpath")
    from_env = make_compiler(tmp_path, "v15_full_show_ops_small_model.txt", folder="fromenv")
    monkeypatch.setenv("PATH", f"{on_path.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("EDGETPU_COMPILER", raising=False)
    assert find_compiler() == on_path
    monkeypatch.setenv("EDGETPU_COMPILER", str(from_env))
    assert find_compiler() == from_env
    assert find_compiler(str(on_path)) == on_path
    with pytest.raises(PipelineError, match="not an executable file"):
        find_compiler(str(tmp_path / "nope"))


def test_missing_compiler_is_a_skip(model_dir, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("EDGETPU_COMPILER", raising=False)
    r = compile_edgetpu(model_dir / "model_int8.tflite")
    assert not r.compiled and "not compiled" in r.message and "apt-get install edgetpu-compiler" in r.message
    assert r.device["present"] is False
    with pytest.raises(PipelineError, match="not found"):
        compile_edgetpu(model_dir / "model_int8.tflite", require=True)


def test_invoke_compile_end_to_end(model_dir, tmp_path):
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    env.pop("EDGETPU_COMPILER", None)
    skip = subprocess.run(invoke_cmd() + ["compile", "--model", str(model_dir / "model_int8.tflite")],
                          cwd=ROOT, capture_output=True, text=True, env=env)
    assert skip.returncode == 0 and "Edge TPU model not compiled" in skip.stdout
    req = subprocess.run(invoke_cmd() + ["compile", "--model", str(model_dir / "model_int8.tflite"), "--require"],
                         cwd=ROOT, capture_output=True, text=True, env=env)
    assert req.returncode == 2 and "Traceback" not in req.stderr
    exe = make_compiler(tmp_path, "v15_failed_model_not_quantized.txt")
    fail = subprocess.run(invoke_cmd() + ["compile", "--model", str(model_dir / "model_int8.tflite"),
                                          "--compiler", str(exe)], cwd=ROOT, capture_output=True, text=True)
    assert fail.returncode == 1 and "Model not quantized" in fail.stderr and "invoke quantize" in fail.stderr
    exe = make_compiler(tmp_path, "v15_partial_yolov3tiny_leakyrelu_unsupported.txt", folder="ok")
    ok = subprocess.run(invoke_cmd() + ["compile", "--model", str(model_dir / "model_int8.tflite"),
                                        "--compiler", str(exe)], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "LEAKY_RELU" in ok.stdout and "2/36 ops on the Edge TPU" in ok.stdout
