"""`invoke check`: predictions against what the real compiler did to the Coral models, the
TFLM interpreter run and arena, board fit, the JSON contract, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, as_task, coral_model, invoke_cmd
from pipeline.rules.edgetpu import check_edgetpu
from pipeline.stages.check import check
from pipeline.rules.tflm import check_tflm
from pipeline.errors import PipelineError
from pipeline.tflite_model import read_model

# (file, total ops, ops the real edgetpu_compiler mapped): shared/testdata/edgetpu-models/README.md
CORAL_TRUTH = [
    ("split_concat.tflite", 3, 3),
    ("keras_lstm_mnist_ptq.tflite", 6, 6),
    ("mobilenet_v1_0.25_128_quant.tflite", 31, 31),
    ("mobilenet_v1_1.0_224_quant_embedding_extractor.tflite", 28, 28),
    ("mobilenet_v2_1.0_224_quant.tflite", 66, 66),
    ("mobilenet_v2_1.0_224_inat_insect_quant.tflite", 66, 66),
    ("bodypix_mobilenet_v1_075_720_1280_16_per_tensor_quant.tflite", 43, 43),
    ("deeplabv3_mnv2_dm05_pascal_quant.tflite", 72, 64),
    ("deeplab_mobilenet_edgetpu_slim_cityscapes_quant.tflite", 84, 82),
    ("posenet_mobilenet_v1_075_353_481_16_quant_decoder.tflite", 38, 37),
    ("bodypix_mobilenet_v1_075_512_512_16_quant_decoder.tflite", 44, 43),
]


@pytest.mark.parametrize("name,total,mapped", CORAL_TRUTH, ids=[t[0] for t in CORAL_TRUTH])
def test_edgetpu_prediction_matches_the_real_compiler(name, total, mapped):
    r = check_edgetpu(read_model(coral_model(name)))
    assert (r.total_ops, r.mapped_ops) == (total, mapped)
    assert r.compatible == (total == mapped)
    assert (r.cut_at is None) == (total == mapped)


def test_custom_op_decoder_stays_on_cpu_without_cutting():
    r = check_edgetpu(read_model(coral_model("posenet_mobilenet_v1_075_353_481_16_quant_decoder.tflite")))
    last = r.ops[-1]
    assert last.op == "CUSTOM:PosenetDecoderOp" and not last.mapped
    assert last.status == "Operation is working on an unsupported data type"


def test_demo_maps_fully_and_runs_in_tflm(demo_int8):
    r = as_task("check", demo_int8.quantized_model)
    assert r.edgetpu.compatible and r.edgetpu.mapped_ops == r.edgetpu.total_ops == 7
    assert all(v.status == "Mapped to Edge TPU" for v in r.edgetpu.ops)
    assert r.tflm.compatible and r.tflm.interpreter_ran
    assert r.tflm.resolver_methods == ("AddConv2D", "AddMaxPool2D", "AddReshape",
                                       "AddFullyConnected", "AddSoftmax")
    assert r.tflm.arena_bytes % 16 == 0
    # the section lands in the stage's report
    report = json.loads((demo_int8.output_dir / "report.json").read_text())
    assert report["check"]["tflm"]["arena_bytes"] == r.tflm.arena_bytes


def test_arena_is_the_smallest_that_works(demo_int8):
    """Rounded up to 16: the arena runs, and 16 bytes less does not (checked by the real
    interpreter in fresh processes, independent of the search)."""
    arena = check_tflm(read_model(demo_int8.quantized_model), demo_int8.quantized_model).arena_bytes
    script = ("import sys, numpy as np\n"
              "from tflite_micro.python.tflite_micro import runtime\n"
              "try:\n"
              "    it = runtime.Interpreter.from_bytes(open(sys.argv[1], 'rb').read(), arena_size=int(sys.argv[2]))\n"
              "    d = it.get_input_details(0); it.set_input(np.zeros(d['shape'], d['dtype']), 0); it.invoke()\n"
              "except RuntimeError:\n"
              "    sys.exit(3)\n")

    def runs(size):
        return subprocess.run([sys.executable, "-c", script, str(demo_int8.quantized_model), str(size)],
                              capture_output=True).returncode == 0

    assert runs(arena)
    assert not runs(arena - 16)


def test_float_model_is_not_quantized_for_edgetpu(demo_int8):
    r = check_edgetpu(read_model(demo_int8.float_model))
    assert not r.compatible and r.mapped_ops == 0
    assert r.model_problem == "Model not quantized"
    assert "invoke quantize" in r.ops[0].fix


def test_unsupported_op_cuts_the_graph(run_quantize, tmp_path):
    """LEAKY_RELU is not an Edge TPU op: it and every op fed by it run on the CPU."""
    import keras

    from pipeline.runtime.tf import import_tensorflow

    import_tensorflow()
    keras.utils.set_random_seed(4)
    model = keras.Sequential([
        keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, padding="same"), keras.layers.LeakyReLU(0.1),
        keras.layers.Conv2D(4, 3, padding="same", activation="relu"), keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax")])
    model.save(tmp_path / "leaky.keras")
    np.save(tmp_path / "cal.npy", np.random.default_rng(0).random((30, 8, 8, 1), dtype=np.float32))
    q = run_quantize(model=str(tmp_path / "leaky.keras"), data=str(tmp_path / "cal.npy"))
    r = check_edgetpu(read_model(q.quantized_model))
    ops = [(v.op, v.mapped, v.status) for v in r.ops]
    assert ops[0] == ("CONV_2D", True, "Mapped to Edge TPU")
    assert ops[1] == ("LEAKY_RELU", False, "Operation not supported")
    assert all(status == "More than one subgraph is not supported" for _, _, status in ops[2:])
    assert r.cut_at == 1 and r.mapped_ops == 1
    tflm = check_tflm(read_model(q.quantized_model), q.quantized_model)
    assert tflm.compatible and "AddLeakyRelu" in tflm.resolver_methods


def test_custom_op_is_a_clear_tflm_incompatibility():
    path = coral_model("posenet_mobilenet_v1_075_353_481_16_quant_decoder.tflite")
    r = check_tflm(read_model(path), path)
    assert not r.compatible and r.interpreter_ran is False
    bad = [v for v in r.ops if not v.supported]
    assert [v.op for v in bad] == ["CUSTOM:PosenetDecoderOp"] and "AddCustom" in bad[0].reason


def test_uint8_compute_is_not_tflm():
    path = coral_model("mobilenet_v1_0.25_128_quant.tflite")
    r = check_tflm(read_model(path), path, run_interpreter=False)
    assert not r.compatible
    reason = next(v.reason for v in r.ops if v.op == "CONV_2D")
    # a TF1 model computes in uint8 inside: an I/O option cannot fix it, a new conversion can
    assert "no uint8 CONV_2D kernel" in reason and "computes in uint8" in reason
    assert "quantize the float model again" in reason and "--io-type int8" not in reason


def test_board_fit(demo_int8):
    r = check(str(demo_int8.quantized_model), target="tflm", board="arduino-nano-33-ble-sense")
    b = r.board
    assert b["flash"]["fits"] and b["ram"]["fits"]
    assert b["flash"]["model_bytes"] == demo_int8.quantized_model.stat().st_size
    assert b["ram"]["arena_bytes"] == r.tflm.recommended_arena_bytes
    assert 0 < b["ram"]["headroom_percent"] < 100


def test_model_too_big_for_board():
    r = check(str(coral_model("mobilenet_v2_1.0_224_quant.tflite")), target="edgetpu", board="rpi-pico",
              run_interpreter=False)
    assert not r.board["flash"]["fits"] and r.board["flash"]["headroom_bytes"] < 0
    assert not r.deployable


def test_unknown_board_lists_known_ones(demo_int8):
    with pytest.raises(PipelineError, match="unknown board 'uno'") as info:
        check(str(demo_int8.quantized_model), board="uno")
    assert "qemu-mps2-an386" in info.value.fix and info.value.exit_code == 2


def run_invoke(*args):
    return subprocess.run(invoke_cmd() + list(args), cwd=ROOT, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=300)


def test_json_contract_and_no_tensorflow(demo_int8):
    code = ("import sys, json, io, contextlib; sys.path.insert(0, '.')\n"
            "from invoke import Program, Collection\nimport tasks\n"
            f"Program(namespace=tasks.ns).run(['invoke', 'check', '--model', {str(demo_int8.quantized_model)!r}, '--json'], exit=False)\n"
            "assert 'tensorflow' not in sys.modules, 'check imported TensorFlow'\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # exactly one JSON object
    assert set(doc) >= {"model", "edgetpu", "tflm"}
    e, t = doc["edgetpu"], doc["tflm"]
    assert {"compatible", "total_ops", "mapped_ops", "cut_at", "ops"} <= set(e)
    assert {"index", "op", "mapped", "status"} <= set(e["ops"][0])
    assert {"compatible", "arena_bytes", "ops"} <= set(t)
    assert {"index", "op", "supported", "resolver_method", "reason"} <= set(t["ops"][0])
    assert e["ops"][0]["op"] == "CONV_2D" and t["ops"][0]["resolver_method"] == "AddConv2D"
    # every op names the Keras layer it came from, from the converter's tensor names alone
    layers = ["conv1", "pool1", "conv2", "flatten", "fc1", "probs", "probs"]
    assert [o["keras_layer"] for o in e["ops"]] == [o["keras_layer"] for o in t["ops"]] == layers
    assert doc["keras_model"] is None and all(o["layer_class"] is None for o in e["ops"] + t["ops"])


def test_a_keras_model_confirms_every_layer_of_a_zoo_model(run_quantize, out_root, tmp_path):
    """The zoo's Resizing model (a resize the Edge TPU leaves on the CPU, conv, pool, dense): every
    op names its layer, in the JSON (with the class, read from the .keras file without
    TensorFlow), in the table, and in the fix line of the op that does not map."""
    import io

    import zoo
    from pipeline.console import check_table, show
    from pipeline.layers import read_keras_layers

    paths = zoo.save(zoo.build("resizing", epochs=1), out_root / "zoo")
    quantized = run_quantize(model=str(paths["model"]), data=str(paths["data"]), samples=32, name="zoo_resizing")
    code = ("import sys, json; sys.path.insert(0, '.')\n"
            "from invoke import Program\nimport tasks\n"
            f"Program(namespace=tasks.ns).run(['invoke', 'check', '--model', {str(quantized.quantized_model)!r}, "
            f"'--keras-model', {str(paths['model'])!r}, '--json', '--no-interpreter'], exit=False)\n"
            "assert 'tensorflow' not in sys.modules, 'check imported TensorFlow'\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    keras = read_keras_layers(paths["model"])
    ops = read_model(quantized.quantized_model).main.operators
    for target in ("edgetpu", "tflm"):
        rows = doc[target]["ops"]
        assert len(rows) == len(ops)
        for row in rows:
            assert row["keras_layer"] in keras.layers, row
            assert row["layer_class"] == keras.layers[row["keras_layer"]].class_name
    by_op = {o["op"]: o["layer_class"] for o in doc["tflm"]["ops"]}
    assert by_op["RESIZE_BILINEAR"] == "Resizing" and by_op["CONV_2D"] == "Conv2D"
    assert by_op["FULLY_CONNECTED"] == "Dense"
    assert doc["keras_model"] == str(paths["model"])
    table = io.StringIO()
    show(check_table(check(quantized.quantized_model, keras_model=paths["model"], run_interpreter=False)), stream=table)
    rows = [line.split() for line in table.getvalue().splitlines() if line.strip()[:1].isdigit()]
    assert [(int(r[0]), r[1]) for r in rows] == [(op.index, op.op) for op in ops]
    assert all(r[2] == o["keras_layer"] and r[3] == f"({o['layer_class']})" for r, o in zip(rows, doc["tflm"]["ops"]))
    resize = next(o for o in doc["edgetpu"]["ops"] if o["op"] == "RESIZE_BILINEAR")
    assert not resize["mapped"]
    assert f"op {resize['index']} RESIZE_BILINEAR (layer `{resize['keras_layer']}`, Resizing): " in table.getvalue()


def test_strict_exit_codes(demo_int8, tmp_path):
    ok = run_invoke("check", "--model", str(demo_int8.quantized_model), "--strict", "--no-interpreter")
    assert ok.returncode == 0, ok.stderr
    bad = run_invoke("check", "--model", str(demo_int8.float_model), "--target", "edgetpu", "--strict")
    assert bad.returncode == 1 and "Model not quantized" in bad.stdout
    lax = run_invoke("check", "--model", str(demo_int8.float_model), "--target", "edgetpu")
    assert lax.returncode == 0


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, bytes(range(256)) * 4])
def test_bad_tflite_files_exit_2(tmp_path, content):
    f = tmp_path / "bad.tflite"
    f.write_bytes(content)
    proc = run_invoke("check", "--model", str(f))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(f) in proc.stderr and "fix:" in proc.stderr


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), 0.0, -0.5])
def test_an_unusable_quantization_scale_is_not_deployable(tmp_path, scale):
    """A corrupt scale would make every runtime compute garbage (or TFLM abort) and the generated
    model_settings.h would not compile; `check --strict` must say so and exit 1."""
    from tflite_builder import ModelBuilder

    mb = ModelBuilder()
    x = mb.tensor("x", (1, 4), scale=scale)
    y = mb.tensor("y", (1, 4))
    mb.op("RELU", [x], [y])
    path = tmp_path / "bad_scale.tflite"
    path.write_bytes(mb.build([x], [y]))
    r = check(str(path), target="all")
    assert not r.deployable and not r.edgetpu.compatible and not r.tflm.compatible
    assert "invalid quantization" in r.tflm.model_problem and "scale" in r.edgetpu.model_problem
    proc = subprocess.run(invoke_cmd() + ["check", "--model", str(path), "--strict"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "invalid quantization" in proc.stdout and "Traceback" not in proc.stderr
    from pipeline.errors import NotDeployableError
    from pipeline.stages.firmware import generate_firmware

    with pytest.raises(NotDeployableError, match="invalid quantization"):
        generate_firmware(path)
    assert not (tmp_path / "firmware").exists()


def test_check_never_overwrites_a_report_the_user_wrote(demo_int8, tmp_path):
    """A report.md beside a model in a pipeline folder stays the user's when it is not ours;
    a folder that is not a pipeline output gets no report at all."""
    ours = tmp_path / "ours"
    ours.mkdir()
    for f in ("model_int8.tflite", "report.json"):
        (ours / f).write_bytes((demo_int8.output_dir / f).read_bytes())
    (ours / "report.md").write_text("# my own notes\n")
    as_task("check", ours / "model_int8.tflite", target="edgetpu")
    assert (ours / "report.md").read_text() == "# my own notes\n"
    assert "check" in json.loads((ours / "report.json").read_text())
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "model_int8.tflite").write_bytes((demo_int8.output_dir / "model_int8.tflite").read_bytes())
    (theirs / "report.json").write_text('{"mine": true}\n')
    as_task("check", theirs / "model_int8.tflite", target="edgetpu")
    assert (theirs / "report.json").read_text() == '{"mine": true}\n'
    assert sorted(p.name for p in theirs.iterdir()) == ["model_int8.tflite", "report.json"]
