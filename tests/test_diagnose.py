"""Layer-level diagnosis on real converter output: numbers, worst layers, first divergence."""

from __future__ import annotations

import json
import math

import diagnosis_models
import numpy as np
import pytest

from pipeline import demo
from pipeline.data import SampleSet
from pipeline.stages.diagnose import (
    TWIN_BY_NAME,
    TWIN_BY_ORDER,
    TWIN_BY_VALUE,
    diagnose,
    first_divergence,
    match_float_twins,
    model_inputs,
)
from pipeline.errors import PipelineError
from pipeline.model import TensorSpec
from pipeline.recommend import TARGETS_INT16X8, diagnose_recommendations
from pipeline.runtime.tensor_capture import capture_tensors, op_outputs
from pipeline.tflite_model import parse_model, read_model

DEMO_SAMPLES = 24


def _specs(model):
    return [TensorSpec.from_tensor(t, n) for t, n in zip(model.main.input_tensors(), model.input_names())]


@pytest.fixture(scope="module")
def demo_case(demo_int8, out_root):
    float_model = read_model(demo_int8.float_model)
    samples = demo.split_samples("test", _specs(float_model), limit=DEMO_SAMPLES)
    return {"int8": demo_int8.quantized_model, "float": demo_int8.float_model, "samples": samples,
            "keras": demo.cached_model_path(out_root / ".cache"), "corrupt_op": 2, "layer": "conv2"}


@pytest.fixture(scope="module")
def mobilenet_case(out_root, run_quantize):
    result, keras_path, images = diagnosis_models.quantized_mobilenet(out_root, run_quantize)
    name = read_model(result.float_model).input_names()[0]
    return {"int8": result.quantized_model, "float": result.float_model,
            "samples": SampleSet({name: images}, None, "smooth images"), "keras": keras_path,
            "corrupt_op": 19, "layer": "block_5_project"}


@pytest.fixture(params=["demo", "mobilenet"])
def case(request):
    return request.getfixturevalue(f"{request.param}_case")


# --- the numbers, against numpy on tensors LiteRT preserved --------------------------------------

def _preserved_by_name(path, x_real, resolver):
    """Every tensor by name, from LiteRT run here in-process, with inputs quantized from
    LiteRT's own input details: nothing of the diagnosis code is used. The resolvers are the
    diagnosis's: reference kernels for the quantized model, the optimized built-in ones for
    the float model (float kernels differ in the 7th digit, which is not what is measured)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=getattr(OpResolverType, resolver))
    interp.allocate_tensors()
    (inp,) = interp.get_input_details()
    details = {d["name"]: d for d in interp.get_tensor_details()}
    values = {name: [] for name in details}
    for x in x_real:
        if inp["dtype"] != np.float32:
            scale, zp = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / scale) + zp, info.min, info.max)
        interp.set_tensor(inp["index"], x[None].astype(inp["dtype"]))
        interp.invoke()
        for name, d in details.items():
            try:
                values[name].append(np.array(interp.get_tensor(d["index"])))
            except ValueError:  # constant tensors without data in this interpreter
                pass
    return details, {k: np.stack(v) for k, v in values.items() if v}


def test_per_layer_numbers_match_numpy_on_preserved_tensors(case):
    result = diagnose(case["int8"], case["float"], case["samples"], runtimes=None)
    x = next(iter(case["samples"].inputs.values()))
    q_details, q = _preserved_by_name(case["int8"], x, "BUILTIN_REF")
    _, f = _preserved_by_name(case["float"], x, "BUILTIN_WITHOUT_DEFAULT_DELEGATES")
    model = read_model(case["int8"])
    checked = 0
    for e in result.layers:
        name = model.main.tensors[model.main.operators[e.op_index].outputs[0]].name
        params = q_details[name]["quantization_parameters"]
        scale, zp = float(params["scales"][0]), int(params["zero_points"][0])
        deq = (q[name].astype(np.float64) - zp) * scale
        ref = f[name].astype(np.float64)
        err = deq - ref
        assert e.error.rmse_over_scale == pytest.approx(np.sqrt(np.mean(err ** 2)) / scale, rel=1e-6)
        assert e.error.snr_db == pytest.approx(
            20 * np.log10(np.linalg.norm(ref) / np.linalg.norm(err)), rel=1e-6)
        assert e.error.cosine == pytest.approx(
            np.sum(ref * deq) / (np.linalg.norm(ref) * np.linalg.norm(deq)), rel=1e-9)
        lo, hi = scale * (-128 - zp), scale * (127 - zp)
        outside = (ref < lo - scale / 2) | (ref > hi + scale / 2)
        assert e.error.clipped_fraction == pytest.approx(outside.mean(), abs=1e-12)
        assert e.error.float_range == pytest.approx((ref.min(), ref.max()))
        assert e.error.calibrated_range == pytest.approx((lo, hi))
        assert e.twin.rule == TWIN_BY_NAME
        checked += 1
    assert checked == len(model.main.operators)


def test_report_section_has_the_contract_keys_and_is_strict_json(demo_case):
    result = diagnose(demo_case["int8"], demo_case["float"], demo_case["samples"],
                      keras=demo_case["keras"], runtimes=("litert-ref", "tflm"), tolerance_lsb=1)
    section = json.loads(json.dumps(result.to_json(), allow_nan=False))
    for row in section["layers"]:
        assert {"op_index", "op", "keras_layer", "rmse_over_scale", "snr_db", "cosine",
                "clipped_fraction"} <= set(row)
        assert row["keras_layer"]
    assert [w["op_index"] for w in section["worst_layers"]] and len(section["worst_layers"]) <= 3
    assert section["first_divergence"] is None and section["runtimes_compared"] == ["litert-ref", "tflm"]
    assert section["output_snr_db"] == section["layers"][-1]["snr_db"]


# --- a corrupted weight --------------------------------------------------------------------------

def test_corrupted_weight_becomes_the_worst_layer(case, tmp_path):
    bad = diagnosis_models.corrupt_weights(case["int8"], case["corrupt_op"], tmp_path / "bad.tflite")
    clean = diagnose(case["int8"], case["float"], case["samples"], runtimes=None)
    result = diagnose(bad, case["float"], case["samples"], keras=case["keras"], runtimes=None)
    worst = result.worst[0]
    assert (worst["op_index"], worst["keras_layer"]) == (case["corrupt_op"], case["layer"])
    assert worst["excess_db"] > (clean.worst[0]["excess_db"] if clean.worst else 0.0) + 10
    # the layers before it are untouched
    for a, b in zip(clean.layers[:case["corrupt_op"]], result.layers):
        assert a.error.snr_db == b.error.snr_db


def test_first_divergence_litert_vs_tflm_names_the_corrupted_op(case, tmp_path):
    """A corrupted file changes every runtime alike; TFLM gets the corrupted copy, as a device
    flashed with another image would, and LiteRT the real model."""
    model = read_model(case["int8"])
    bad = diagnosis_models.corrupt_weights(case["int8"], case["corrupt_op"], tmp_path / "bad.tflite")
    inputs = model_inputs(model, case["samples"])
    litert = op_outputs(model, capture_tensors(case["int8"], inputs, "litert-ref"))
    tflm = op_outputs(model, capture_tensors(bad, inputs, "tflm"))
    found = first_divergence(litert, tflm, model, tolerance=1, names=("litert-ref", "tflm"))
    assert found is not None
    assert (found.op_index, found.keras_layer) == (case["corrupt_op"], case["layer"])
    assert found.between == ("litert-ref", "tflm") and found.max_lsb > 1
    assert all(i["identical"] for i in found.inputs)
    assert found.kernel["op"] == "CONV_2D" and found.kernel["tflm_resolver_method"] == "AddConv2D"


def test_litert_reference_kernels_and_tflm_agree(case):
    """BUILTIN_REF is TFLM's twin to within one LSB. The demo's per-channel FULLY_CONNECTED
    `fc1` differs by exactly one LSB on a few outputs (tflite-micro 0.dev20261023 vs
    ai-edge-litert 2.3.0); MobileNetV2 is bit exact."""
    model = read_model(case["int8"])
    inputs = model_inputs(model, case["samples"])
    litert = op_outputs(model, capture_tensors(case["int8"], inputs, "litert-ref"))
    tflm = op_outputs(model, capture_tensors(case["int8"], inputs, "tflm"))
    assert first_divergence(litert, tflm, model, tolerance=1) is None
    exact = first_divergence(litert, tflm, model, tolerance=0)
    assert exact is None or (exact.max_lsb == 1 and all(i["identical"] for i in exact.inputs))


def test_every_runtime_returns_every_op_output(demo_case):
    model = read_model(demo_case["int8"])
    inputs = model_inputs(model, demo_case["samples"])
    outputs = {rt: op_outputs(model, capture_tensors(demo_case["int8"], inputs, rt))
               for rt in ("litert-ref", "litert", "litert-xnnpack", "tflm")}
    for rt, per_op in outputs.items():
        assert sorted(per_op) == [op.index for op in model.main.operators], rt
        for op in model.main.operators:
            shape = model.main.tensors[op.outputs[0]].shape
            assert per_op[op.index].shape == (DEMO_SAMPLES, *shape[1:]), (rt, op.index)
    # XNNPACK rounds differently: 1 LSB from conv1 on; only the SOFTMAX, whose inputs already
    # differ by that LSB, goes further (7 LSB on one of 240 values, near a saturated output)
    found = first_divergence(outputs["litert-ref"], outputs["litert-xnnpack"], model, tolerance=1)
    assert found is None or (found.op == "SOFTMAX" and found.inputs[0]["identical"] is False)


# --- first_divergence on its own ------------------------------------------------------------------

def test_first_divergence_skips_ops_one_side_lacks_and_reports_input_agreement(demo_int8):
    model = read_model(demo_int8.quantized_model)
    rng = np.random.default_rng(0)
    a = {op.index: rng.integers(-128, 127, size=(2, 3)).astype(np.int8) for op in model.main.operators}
    b = {k: v.copy() for k, v in a.items()}
    assert first_divergence(a, b, model) is None
    b[2] = b[2].copy()
    b[2][1, 2] = np.int8(b[2][1, 2] ^ 4)
    b[4] = b[4] + 0  # same values
    found = first_divergence(a, b, model, names=("host", "device"))
    assert (found.op_index, found.op, found.keras_layer) == (2, "CONV_2D", "conv2")
    assert found.first_difference["sample"] == 1 and found.first_difference["element"] == 2
    assert found.inputs[0]["from"] == "op 1 MAX_POOL_2D" and found.inputs[0]["identical"]
    del b[2]  # the device returned only some op outputs
    b[3] = b[3].copy()
    b[3][0, 0] = np.int8(b[3][0, 0] ^ 1)
    later = first_divergence(a, b, model, names=("host", "device"))
    assert later.op_index == 3 and later.inputs[0]["identical"] is None
    assert first_divergence(a, b, model, tolerance=1) is None


def test_first_divergence_refuses_outputs_of_another_shape(demo_int8):
    model = read_model(demo_int8.quantized_model)
    a = {0: np.zeros((1, 4), np.int8)}
    with pytest.raises(PipelineError, match="shape"):
        first_divergence(a, {0: np.zeros((1, 5), np.int8)}, model)


# --- converter corners --------------------------------------------------------------------------

def test_float_twins_follow_names_and_quantize_dequantize_keep_values(out_root):
    float_path, int8_path, _, _ = diagnosis_models.converted_layer_norm(out_root)
    quant, float_model = read_model(int8_path), read_model(float_path)
    op_twin, _ = match_float_twins(quant, float_model)
    rules = {quant.main.operators[k].op: t.rule for k, t in op_twin.items()}
    assert rules["QUANTIZE"] == rules["DEQUANTIZE"] == TWIN_BY_VALUE
    assert all(t.float_tensor is not None for t in op_twin.values())
    # by name and by op order agree on every op that is not QUANTIZE/DEQUANTIZE
    f_ops = [op for op in float_model.main.operators]
    q_ops = [op for op in quant.main.operators if op.op not in ("QUANTIZE", "DEQUANTIZE")]
    assert [op_twin[q.index].float_tensor for q in q_ops] == [f.outputs[0] for f in f_ops]


def test_runtime_that_cannot_run_the_model_leaves_the_quantization_part(out_root):
    float_path, int8_path, keras_path, calibration = diagnosis_models.converted_layer_norm(out_root)
    result = diagnose(int8_path, float_path, calibration, keras=keras_path)
    assert "GELU" in result.runtime_error and result.first_divergence is None
    assert len(result.layers) == len(read_model(int8_path).main.operators)
    neg = next(e for e in result.layers if e.op == "NEG")
    assert neg.layer.keras_layer == "encoder/layer_norm_1"
    assert neg.error.rmse_over_scale is None and math.isfinite(neg.error.snr_db)  # a float output


def test_int16x8_model_is_diagnosed_beside_int8(demo_case, run_quantize):
    int16 = run_quantize(name="demo_int16x8", mode="int16x8")
    result = diagnose(demo_case["int8"], demo_case["float"], demo_case["samples"],
                      int16_path=int16.quantized_model, runtimes=None)
    section = result.to_json()["int16x8"]
    assert len(section["layers"]) == len(read_model(int16.quantized_model).main.operators)
    assert all(row["float_twin"] == TWIN_BY_NAME for row in section["layers"])
    # 256 times finer activation steps with the same int8 weights: every op is closer to
    # float, though not by much (about 3 dB at the output: the weights' error dominates)
    int8_rows = result.to_json()["layers"]
    assert all(b["snr_db"] > a["snr_db"] for a, b in zip(int8_rows, section["layers"]))
    assert section["output_snr_db"] > result.to_json()["output_snr_db"]


def test_float_model_of_another_export_is_a_clear_error(demo_case, out_root):
    float_path, _, _, _ = diagnosis_models.converted_layer_norm(out_root)
    with pytest.raises(PipelineError) as err:
        diagnose(demo_case["int8"], float_path, demo_case["samples"], runtimes=None)
    assert "has a float twin" in err.value.problem and err.value.path == str(float_path)


# --- recommendations ---------------------------------------------------------------------------

def test_recommendations_are_measured_and_one_is_rechecked(demo_case, out_root, run_quantize):
    from pipeline.runtime.litert import LiteRTModel

    specs = _specs(read_model(demo_case["float"]))
    calibration = demo.split_samples("calibration", specs)
    evaluation = demo.split_samples("test", specs)
    used = 8
    diagnosis = diagnose(demo_case["int8"], demo_case["float"], demo_case["samples"],
                         keras=demo_case["keras"], runtimes=None)
    worst = diagnosis.worst[0]["keras_layer"]
    report, recs = diagnose_recommendations(diagnosis, "demo", calibration, evaluation,
                                            calibration_used=used, cache_dir=out_root / ".cache")
    names = [r.name for r in report.remedies]
    assert names == ["int16x8", "per-tensor weights", f"calibration: all {calibration.count} samples",
                     f"calibration: other {used} samples", f"float layer: {worst}"]
    assert all(r.measured is not None and r.error is None for r in report.remedies)
    # the float-layer variant really has the worst layer's op in float32, between
    # DEQUANTIZE and QUANTIZE
    fallback = parse_model(report.remedies[-1].model)
    ops = fallback.main.operators
    kept = next(op for op in ops if f"/{worst}_1/" in fallback.main.tensors[op.outputs[0]].name
                and op.op not in ("QUANTIZE", "DEQUANTIZE"))
    assert fallback.main.tensors[kept.outputs[0]].dtype == "float32"
    assert ops[kept.index - 1].op == "DEQUANTIZE" and ops[kept.index + 1].op == "QUANTIZE"
    assert report.remedies[-1].targets == ("tflm",)
    int16 = next(r for r in report.remedies if r.name == "int16x8")
    assert int16.targets == TARGETS_INT16X8
    # rerun the int16x8 option through the real quantize stage and measure it independently
    rerun = run_quantize(name="demo_int16x8_8", mode="int16x8", samples=used)
    f = LiteRTModel(demo_case["float"].read_bytes(), delegates=False).run(evaluation)[0]
    q = LiteRTModel(rerun.quantized_model.read_bytes(), delegates=False).run(evaluation)[0]
    snr = 10 * np.log10(np.sum(f.astype(np.float64) ** 2) / np.sum((q - f).astype(np.float64) ** 2))
    assert int16.measured.output_snr_db == pytest.approx(snr, abs=1e-6)
    assert int16.measured.accuracy == pytest.approx(float(np.mean(q.argmax(1) == evaluation.labels)))
    # more calibration samples than 8 measurably help this model
    all_samples = next(r for r in report.remedies if r.name.startswith("calibration: all"))
    assert all_samples.gain(report.baseline)["output_snr_db"] > 3
    measured = [r for r in recs if r["kind"] == "measured"]
    assert len(measured) == 5
    assert all(r["worst_layers"] == [w["keras_layer"] for w in diagnosis.worst] for r in measured)
    gains = [r["gain"]["accuracy_points"] for r in measured]
    assert gains == sorted(gains, reverse=True)


def test_uint8_io_model_matches_through_its_edge_quantize_ops(demo_case, run_quantize):
    """With uint8 I/O the converter adds a QUANTIZE at each end and renames the SOFTMAX output
    (`StatefulPartitionedCall_1:01`): the edges keep their input's twin, the SOFTMAX is matched
    by op order, and the int8 ops inside are the int8 model's, number for number."""
    uint8 = run_quantize(name="demo_uint8", io_type="uint8")
    model = read_model(uint8.quantized_model)
    assert model.main.input_tensors()[0].dtype == "uint8"
    result = diagnose(uint8.quantized_model, demo_case["float"], demo_case["samples"], runtimes=None)
    rules = [e.twin.rule for e in result.layers]
    assert rules[0] == rules[-1] == TWIN_BY_VALUE and rules[-2] == TWIN_BY_ORDER
    assert all(e.layer.keras_layer for e in result.layers)
    int8 = diagnose(demo_case["int8"], demo_case["float"], demo_case["samples"], runtimes=None)
    inner = result.layers[1:-1]
    assert [e.op for e in inner] == [e.op for e in int8.layers]
    for a, b in zip(inner, int8.layers):
        assert a.error.snr_db == pytest.approx(b.error.snr_db, abs=1e-9)
