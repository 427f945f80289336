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


_REFERENCE: dict[str, dict[int, dict]] = {}


def _numpy_reference(case) -> dict[int, dict]:
    """Per op index, the diagnosis's numbers computed here with numpy from the tensors LiteRT
    preserved (once per model: the task test reuses them)."""
    key = str(case["int8"])
    if key not in _REFERENCE:
        x = next(iter(case["samples"].inputs.values()))
        q_details, q = _preserved_by_name(case["int8"], x, "BUILTIN_REF")
        _, f = _preserved_by_name(case["float"], x, "BUILTIN_WITHOUT_DEFAULT_DELEGATES")
        model = read_model(case["int8"])
        out = {}
        for op in model.main.operators:
            name = model.main.tensors[op.outputs[0]].name
            params = q_details[name]["quantization_parameters"]
            scale, zp = float(params["scales"][0]), int(params["zero_points"][0])
            deq = (q[name].astype(np.float64) - zp) * scale
            ref = f[name].astype(np.float64)
            err = deq - ref
            lo, hi = scale * (-128 - zp), scale * (127 - zp)
            out[op.index] = {
                "rmse_over_scale": np.sqrt(np.mean(err ** 2)) / scale,
                "snr_db": 20 * np.log10(np.linalg.norm(ref) / np.linalg.norm(err)),
                "cosine": np.sum(ref * deq) / (np.linalg.norm(ref) * np.linalg.norm(deq)),
                "clipped_fraction": ((ref < lo - scale / 2) | (ref > hi + scale / 2)).mean(),
                "float_range": (ref.min(), ref.max()), "calibrated_range": (lo, hi)}
        _REFERENCE[key] = out
    return _REFERENCE[key]


def test_per_layer_numbers_match_numpy_on_preserved_tensors(case):
    result = diagnose(case["int8"], case["float"], case["samples"], runtimes=None)
    reference = _numpy_reference(case)
    for e in result.layers:
        want = reference[e.op_index]
        assert e.error.rmse_over_scale == pytest.approx(want["rmse_over_scale"], rel=1e-6)
        assert e.error.snr_db == pytest.approx(want["snr_db"], rel=1e-6)
        assert e.error.cosine == pytest.approx(want["cosine"], rel=1e-9)
        assert e.error.clipped_fraction == pytest.approx(want["clipped_fraction"], abs=1e-12)
        assert e.error.float_range == pytest.approx(want["float_range"])
        assert e.error.calibrated_range == pytest.approx(want["calibrated_range"])
        assert e.twin.rule == TWIN_BY_NAME
    assert len(result.layers) == len(reference) == len(read_model(case["int8"]).main.operators)


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

def test_recommendations_are_measured_and_ranked(demo_case, out_root):
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


# --- through the task, the stage and the report ------------------------------------------------

def _pipeline_copy(case, dest_root):
    """The model's output folder (both models, its report, the tool's marker) copied, so the
    task records into a report of its own and the session's folders stay as they are."""
    import shutil

    from pipeline.fileio import OUTPUT_MARKER

    src = case["int8"].parent
    dest = dest_root / src.name
    dest.mkdir()
    for name in (case["int8"].name, case["float"].name, "report.json", OUTPUT_MARKER):
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)
    return dest / case["int8"].name


def _samples_file(case, path):
    np.savez(path, **case["samples"].inputs)
    return path


def test_invoke_diagnose_lists_every_op_with_its_layer_and_error(case, tmp_path):
    """As a user runs it: the table names every op's Keras layer, report.json holds numbers
    that numpy reproduces from LiteRT's preserved tensors, and the plot is written."""
    import subprocess
    import xml.dom.minidom

    from conftest import ROOT, invoke_cmd

    model = _pipeline_copy(case, tmp_path)
    data = _samples_file(case, tmp_path / "samples.npz")
    count = case["samples"].count
    proc = subprocess.run(invoke_cmd() + ["diagnose", "--model", str(model), "--data", str(data),
                                          "--samples", str(count), "--keras-model", str(case["keras"]),
                                          "--strict"],
                          cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    section = json.loads((model.parent / "report.json").read_text())["diagnose"]
    # --strict: exit 1 exactly when LiteRT and TFLM (the pair verify compares) part ways
    assert proc.returncode == (1 if section["first_divergence"] else 0), proc.stderr
    ops = read_model(model).main.operators
    assert section["samples"] == count and [r["op_index"] for r in section["layers"]] == [op.index for op in ops]
    reference = _numpy_reference(case)
    table = [line for line in proc.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert len(table) == len(ops)
    for row, line in zip(section["layers"], table):
        assert row["keras_layer"] and row["layer_class"]  # confirmed, or a confirmed layer's neighbour
        assert row["layer_match"] in ("confirmed by the Keras model", "graph neighbour")
        assert line.split()[:3] == [str(row["op_index"]), row["op"], row["keras_layer"]]
        want = reference[row["op_index"]]
        assert row["rmse_over_scale"] == pytest.approx(want["rmse_over_scale"], abs=1e-4, rel=1e-5)
        assert row["snr_db"] == pytest.approx(want["snr_db"], abs=1e-3)
        assert row["cosine"] == pytest.approx(want["cosine"], abs=1e-6)
        assert row["clipped_fraction"] == pytest.approx(want["clipped_fraction"], abs=1e-6)
    assert section["worst_layers"] and "worst 1" in proc.stdout
    assert all(w["label"] in proc.stdout for w in section["worst_layers"])
    svg = (model.parent / "diagnose_layers.svg").read_text()
    xml.dom.minidom.parseString(svg)
    assert svg.count("<rect") == len(ops)  # every op here has a float twin and a finite SNR
    assert "![Per-layer error" in (model.parent / "report.md").read_text()
    if case["layer"] == "block_5_project":
        # LiteRT's optimized kernels and TFLM's reference ones first differ at the first 1x1
        # projection, by one step, on identical inputs (ai-edge-litert 2.x, tflite-micro 2026)
        d = section["first_divergence"]
        assert d["between"] == ["litert", "tflm"]
        assert (d["op_index"], d["keras_layer"], d["max_lsb"]) == (2, "expanded_conv_project", 1.0)
        assert d["inputs_identical"] is True


def test_injected_fault_is_the_first_divergence_through_the_stage(case, tmp_path, monkeypatch):
    """TFLM is given a copy of the model with one layer's weights corrupted (a device flashed
    with another image), LiteRT the real one: the stage names exactly that op and layer, with
    identical inputs and its TFLM kernel, in report.json and report.md."""
    from pipeline.deploy import DeployRequest, job_for_model, run_stage
    from pipeline.stages import diagnose as stage
    from pipeline.stages.base import DiagnoseOptions

    model = _pipeline_copy(case, tmp_path)
    bad = diagnosis_models.corrupt_weights(model, case["corrupt_op"], tmp_path / "flashed.tflite")
    real_capture = stage.capture_tensors

    def capture(path, inputs, runtime, *args, **kwargs):
        return real_capture(bad if runtime == "tflm" else path, inputs, runtime, *args, **kwargs)

    monkeypatch.setattr(stage, "capture_tensors", capture)
    options = DiagnoseOptions(samples=case["samples"].count, runtimes=("litert-ref", "tflm"), tolerance_lsb=1)
    request = DeployRequest(data=str(_samples_file(case, tmp_path / "samples.npz")), diagnose=True,
                            keras_model=str(case["keras"]), diagnose_options=options)
    result = run_stage("diagnose", job_for_model(model, request))
    found = json.loads((model.parent / "report.json").read_text())["diagnose"]["first_divergence"]
    assert found == result.first_divergence.to_json()
    assert {"between", "op_index", "op", "keras_layer", "max_lsb"} <= set(found)
    assert (found["op_index"], found["op"], found["keras_layer"]) == (case["corrupt_op"], "CONV_2D", case["layer"])
    assert found["between"] == ["litert-ref", "tflm"] and found["max_lsb"] > 1
    assert found["inputs_identical"] is True and found["kernel"]["tflm_resolver_method"] == "AddConv2D"
    assert f"First divergence litert-ref vs tflm: op {case['corrupt_op']} CONV_2D (layer `{case['layer']}`, Conv2D)" \
        in (model.parent / "report.md").read_text()
    # the float-vs-int8 part measures the real model: the corrupted layer is not its worst
    assert all(w["op_index"] != case["corrupt_op"] or w["excess_db"] < 10 for w in result.worst)


def test_diagnose_task_refuses_bad_input_with_one_line(demo_int8, tmp_path):
    import shutil
    import subprocess

    from conftest import ROOT, invoke_cmd

    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy2(demo_int8.quantized_model, lone / "model_int8.tflite")
    runs = {
        "no float model": (["--model", str(lone / "model_int8.tflite"), "--data", "x.npz"], "model_float.tflite"),
        "runtimes": (["--model", str(demo_int8.quantized_model), "--runtimes", "litert,gpu"], "--runtimes"),
        "samples": (["--model", str(demo_int8.quantized_model), "--samples", "0"], "--samples"),
        "keras model": (["--model", str(demo_int8.quantized_model), "--keras-model", str(lone / "model_int8.tflite")],
                        "--keras-model"),
    }
    for what, (args, named) in runs.items():
        proc = subprocess.run(invoke_cmd() + ["diagnose", *args], cwd=ROOT, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=300, check=False)
        assert proc.returncode == 2, (what, proc.stderr)
        assert "Traceback" not in proc.stderr and named in proc.stderr, (what, proc.stderr)
    assert sorted(p.name for p in lone.iterdir()) == ["model_int8.tflite"]  # nothing written


def test_accuracy_loss_in_deploy_measures_remedies_and_one_is_rerun(out_root, run_quantize, tmp_path_factory):
    """A model that loses ~10 accuracy points in int8 (one hidden unit 200x the others): verify
    fails, deploy diagnoses on its own, measures the remedies into the report, and the int16x8
    one, rerun through the real quantize stage, gives the accuracy the report says."""
    from pipeline import demo
    from pipeline.deploy import DeployRequest, deploy
    from pipeline.runtime.litert import LiteRTModel

    work = tmp_path_factory.mktemp("outlier")
    keras_path = diagnosis_models.build_outlier_model(work / "outlier.keras")
    split = demo.digits_split()
    cal, ev = work / "cal.npz", work / "eval.npz"
    np.savez(cal, image=split.x_calibration, y=split.y_calibration)
    np.savez(ev, image=split.x_test, y=split.y_test)
    used = 50
    result = deploy(DeployRequest(model=str(keras_path), data=str(cal), eval_data=str(ev), samples=used,
                                  out=work, target="tflm"))
    run = result.stage("diagnose")
    assert run.status == "ran" and "verify check(s) failed" in run.note
    assert not result.deployable and all(r.startswith("verify: ") for r in result.reasons)
    report = json.loads((work / "outlier" / "report.json").read_text())
    g = report["diagnose"]
    assert any("accuracy drop" in reason for reason in g["ran_because"])
    assert {w["keras_layer"] for w in g["worst_layers"]} >= {"probs"}
    assert g["recommendations_measured"] is True
    measured = {r["option"]: r for r in g["recommendations"] if r["kind"] == "measured"}
    assert set(measured) == {"int16x8", "per-tensor weights", "calibration: all 200 samples",
                             "calibration: other 50 samples", "float layer: probs"}
    assert measured["int16x8"]["targets"] == ["tflm"] and measured["float layer: probs"]["targets"] == ["tflm"]
    assert measured["per-tensor weights"]["targets"] == ["edgetpu", "tflm"]
    int16 = measured["int16x8"]
    assert int16["gain"]["accuracy_points"] > 5  # the finer activation steps resolve the small units
    assert "| int16x8 | tflm | +" in (work / "outlier" / "report.md").read_text()
    # rerun: the real quantize stage in int16x8 on the same 50 calibration samples, measured here
    rerun = run_quantize(model=str(keras_path), data=str(cal), samples=used, mode="int16x8", name="outlier_int16x8",
                         out=work)
    evaluation = SampleSet({"image": split.x_test[:200]}, split.y_test[:200], "rerun")
    f = LiteRTModel((work / "outlier" / "model_float.tflite").read_bytes(), delegates=False).run(evaluation)[0]
    q = LiteRTModel(rerun.quantized_model.read_bytes(), delegates=False).run(evaluation)[0]
    snr = 10 * np.log10(np.sum(f.astype(np.float64) ** 2) / np.sum((q - f).astype(np.float64) ** 2))
    assert int16["measured"]["accuracy"] == pytest.approx(float(np.mean(q.argmax(1) == evaluation.labels)), abs=1e-4)
    assert int16["measured"]["output_snr_db"] == pytest.approx(snr, abs=1e-3)


def test_a_softmax_the_reference_kernels_abort_on_is_diagnosed_on_litert_in_deploy(tmp_path):
    """TFLM and LiteRT's reference kernels both abort on the model (a true TFLM refusal): the
    diagnosis measures the per-layer error on LiteRT's optimized kernels and says why; deploy
    ends with its verdict (not deployable, exit 1), not with the abort as an error."""
    from pipeline.deploy import DeployRequest, deploy

    keras_path = diagnosis_models.build_flat_softmax_model(tmp_path / "flat.keras")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cal.npz", x=rng.normal(size=(48, 8)).astype(np.float32), y=rng.integers(0, 3, 48))
    result = deploy(DeployRequest(model=str(keras_path), data=str(tmp_path / "cal.npz"), out=tmp_path / "build",
                                  target="tflm"))
    assert result.failure is None and not result.deployable
    # said once: check names the op; neither its interpreter crash ("likely cause: ...") nor
    # verify's "TFLM runs the model" repeats it
    assert len(result.reasons) == 1 and "TFLM's softmax aborts" in result.reasons[0], result.reasons
    assert "likely cause" not in result.reasons[0]
    assert result.stage("diagnose").status == "ran"
    g = json.loads((tmp_path / "build" / "flat" / "report.json").read_text())["diagnose"]
    assert g["runtime"] == "litert" and "SIGABRT" in g["runtime_fallback"]
    assert len(g["layers"]) == 3 and g["runtime_error"]  # measured; TFLM cannot be compared
    report_md = (tmp_path / "build" / "flat" / "report.md").read_text()
    assert "Measured on LiteRT's optimized kernels" in report_md
    assert "Tensor arena: not measured." in report_md  # TFLM aborts: no figure, and no "bytes measured"
    assert "`--mode int8` is for: edgetpu, tflm (whether this model deploys is the verdict above)" in report_md
