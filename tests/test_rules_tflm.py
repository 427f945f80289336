"""TFLM rules and the crash-isolated interpreter run, on small models built with the schema."""

from __future__ import annotations

import numpy as np

from pipeline.rules.tflm import check_tflm, round_arena, table
from pipeline.tflite_model import parse_model
from tflite_builder import ModelBuilder, chain


def run(tmp_path, data: bytes, **kw):
    path = tmp_path / "m.tflite"
    path.write_bytes(data)
    return check_tflm(parse_model(data, str(path)), path, **kw)


def softmax(in_scale: float, out_scale: float = 1 / 256, out_zero_point: int = -128) -> bytes:
    mb = ModelBuilder()
    x = mb.tensor("x", (1, 10), scale=in_scale)
    y = mb.tensor("y", (1, 10), scale=out_scale, zero_point=out_zero_point)
    mb.op("SOFTMAX", [x], [y], options=("SoftmaxOptions", {"Beta": 1.0}))
    return mb.build([x], [y])


def test_supported_int8_op_runs_and_gets_an_arena(tmp_path):
    r = run(tmp_path, softmax(0.1))
    assert r.compatible and r.interpreter_ran and r.arena_bytes > 0
    assert r.resolver_methods == ("AddSoftmax",)
    assert r.recommended_arena_bytes == r.arena_bytes + 16


def test_float_op_left_by_the_converter_is_supported_but_said(tmp_path):
    """SIN has no int8 kernel; the converter leaves it float between DEQUANTIZE/QUANTIZE."""
    mb = ModelBuilder()
    x = mb.tensor("x", (1, 10))
    f = mb.tensor("f", (1, 10), "float32")
    g = mb.tensor("g", (1, 10), "float32")
    y = mb.tensor("y", (1, 10))
    mb.op("DEQUANTIZE", [x], [f])
    mb.op("SIN", [f], [g])
    mb.op("QUANTIZE", [g], [y])
    r = run(tmp_path, mb.build([x], [y]))
    assert r.compatible and r.interpreter_ran
    sin = r.ops[1]
    assert sin.supported and sin.resolver_method == "AddSin" and "float32" in sin.reason
    assert r.resolver_methods == ("AddDequantize", "AddSin", "AddQuantize")


def test_int8_op_without_an_int8_kernel(tmp_path):
    """The converter emits int8 EXP; TFLM's EXP kernel only takes float32 (fails at Prepare)."""
    r = run(tmp_path, chain("EXP", (1, 10), (1, 10)))
    assert not r.compatible
    assert not r.ops[0].supported and "rejects int8" in r.ops[0].reason
    assert r.interpreter_ran is False and "EXP" in r.interpreter_error


def test_op_without_a_tflm_kernel(tmp_path):
    r = run(tmp_path, chain("GELU", (1, 10), (1, 10)), run_interpreter=False)
    assert "GELU" in table()["builtins_without_method"]
    assert not r.compatible and r.ops[0].resolver_method is None
    assert "no TFLM kernel" in r.ops[0].reason


def test_unknown_op_code(tmp_path):
    mb = ModelBuilder()
    x, y = mb.tensor("x", (1, 10)), mb.tensor("y", (1, 10))
    mb.op("UNKNOWN", [x], [y], code=250)
    r = run(tmp_path, mb.build([x], [y]), run_interpreter=False)
    assert r.ops[0].op == "BUILTIN_250" and not r.ops[0].supported


def test_a_dynamic_batch_signature_runs_in_tflm(tmp_path):
    """The standard converter leaves batch -1 in shape_signature; TFLM allocates from `shape` and
    runs it, so the verdict follows the interpreter run (the Edge TPU rule stays: its compiler
    refuses such a model)."""
    r = run(tmp_path, chain("RELU", (1, 10), (1, 10), in_signature=(-1, 10)))
    assert r.compatible and r.interpreter_ran and r.arena_bytes
    assert r.model_problem is None and "TFLM ignores it and runs the stored shape [1, 10]" in r.notes[0]


def test_uint8_compute(tmp_path):
    r = run(tmp_path, chain("RELU", (1, 10), (1, 10), dtype="uint8"), run_interpreter=False)
    assert not r.compatible and "no uint8 RELU kernel" in r.ops[0].reason
    ok = run(tmp_path, chain("RESHAPE", (1, 10), (1, 10), dtype="uint8"), run_interpreter=False)
    assert ok.compatible  # type-agnostic copy


def test_interpreter_abort_is_a_clear_error(tmp_path):
    """A softmax input scale of 1e-30 makes TFLM abort() the process while preparing."""
    r = run(tmp_path, softmax(1e-30))
    assert not r.compatible and r.interpreter_ran is False
    assert "crashed (SIGABRT)" in r.interpreter_error
    assert "SOFTMAX (op 0)" in r.interpreter_error and "1e-30" in r.interpreter_error
    assert not r.ops[0].supported and "aborts" in r.ops[0].reason  # said before anything runs


def test_softmax_abort_threshold_from_the_kernel_source(tmp_path):
    """beta x scale x 2^26 must exceed 1: 2e-8 runs, 1e-8 aborts (as the interpreter confirms)."""
    ok = run(tmp_path, softmax(2e-8))
    assert ok.compatible and ok.interpreter_ran
    bad = run(tmp_path, softmax(1e-8))
    assert not bad.compatible and bad.interpreter_ran is False and "SIGABRT" in bad.interpreter_error


def test_kernel_refusal_is_reported_with_the_node(tmp_path):
    r = run(tmp_path, softmax(0.1, out_scale=0.5, out_zero_point=0))  # int8 softmax needs 1/256, -128
    assert not r.compatible and "Node SOFTMAX (number 0) failed to prepare" in r.interpreter_error


def test_round_arena():
    assert [round_arena(n) for n in (1, 16, 17, 3424)] == [16, 16, 32, 3424]


def test_table_is_stamped_with_its_source():
    t = table()
    assert len(t["tflite_micro_commit"]) == 40 and t["tflite_micro_wheel"].startswith("0.dev")
    irregular = {op: t["ops"][op]["method"] for op in ("CUMSUM", "PADV2", "BATCH_MATMUL", "CONV_2D")}
    assert irregular == {"CUMSUM": "AddCumSum", "PADV2": "AddPadV2", "BATCH_MATMUL": "AddBatchMatMul",
                         "CONV_2D": "AddConv2D"}
    assert np.all([v["method"].startswith("Add") for v in t["ops"].values()])
