"""Every op of a converted model names the Keras layer it came from."""

from __future__ import annotations

import json
import zipfile

import diagnosis_models
import pytest
from tflite_builder import ModelBuilder

from pipeline import demo
from pipeline.errors import PipelineError
from pipeline.layers import (
    MATCH_CONFIRMED,
    MATCH_NEIGHBOUR,
    MATCH_NOT_FOUND,
    MATCH_TENSOR_NAME,
    MATCH_WEIGHT_NAME,
    keras_layers_from_config,
    map_layers,
    name_scopes,
    read_keras_layers,
    unmapped_layers,
)
from pipeline.tflite_model import parse_model, read_model

# --- names and configs, no TensorFlow -----------------------------------------------------------

def test_name_scopes_split_fused_names_and_drop_output_ports():
    name = "m_1/conv1_relu_1/Relu6;m_1/conv1_1/convolution;;m_1/pad_1/Pad1"
    assert name_scopes(name) == [(("m_1", "conv1_relu_1"), "Relu6"), (("m_1", "conv1_1"), "convolution"),
                                 (("m_1", "pad_1"), "Pad1")]
    assert name_scopes("StatefulPartitionedCall_1:0") == []
    assert name_scopes("tfl.quantize") == []


def _layer(cls, name, inbound=(), **cfg):
    nodes = [{"args": [{"class_name": "__keras_tensor__",
                        "config": {"keras_history": [n, 0, 0]}} for n in inbound], "kwargs": {}}]
    return {"class_name": cls, "config": {"name": name, **cfg}, "inbound_nodes": nodes}


def _config():
    inner = {"class_name": "Sequential", "config": {"name": "block", "layers": [
        {"class_name": "InputLayer", "config": {"name": "block_in"}},
        {"class_name": "Conv2D", "config": {"name": "conv", "activation": "linear"}},
        {"class_name": "BatchNormalization", "config": {"name": "bn"}},
        {"class_name": "ReLU", "config": {"name": "relu"}}]}, "inbound_nodes": []}
    inner["inbound_nodes"] = _layer("x", "x", ["image"])["inbound_nodes"]
    return {"class_name": "Functional", "config": {"name": "net", "layers": [
        _layer("InputLayer", "image"), inner,
        _layer("Dense", "head", ["block"], activation="softmax")]}}


def test_keras_config_gives_nested_paths_classes_and_the_layer_graph():
    layers = keras_layers_from_config(_config())
    assert layers.name == "net"
    assert {p: l.class_name for p, l in layers.layers.items()} == {
        "image": "InputLayer", "block": "Sequential", "block/block_in": "InputLayer",
        "block/conv": "Conv2D", "block/bn": "BatchNormalization", "block/relu": "ReLU",
        "head": "Dense"}
    assert layers.layers["head"].inbound == ("block",)
    assert layers.layers["head"].activation == "softmax"
    assert layers.layers["block/bn"].inbound == ("block/conv",)  # Sequential: the previous layer
    assert layers.children("block") == {"block_in": "block/block_in", "conv": "block/conv",
                                        "bn": "block/bn", "relu": "block/relu"}


def _named_model() -> bytes:
    """conv (with the ReLU layer fused) -> softmax whose output lost its name, as the converter
    leaves a Keras 3 export; scopes carry the `_1` export suffix."""
    mb = ModelBuilder()
    x = mb.tensor("serving_default_image:0", (1, 4, 4, 1))
    w = mb.const("net_1/block_1/conv_1/convolution", [[[[1]]]], "int8", scale=0.1)
    y = mb.tensor("net_1/block_1/relu_1/Relu;net_1/block_1/conv_1/convolution1", (1, 4, 4, 1))
    mb.op("CONV_2D", [x, w, -1], [y], options=("Conv2DOptions", {"Padding": 1, "StrideW": 1,
                                                                 "StrideH": 1}))
    r = mb.tensor("net_1/head_1/Reshape", (1, 16))
    shape = mb.const("arith.constant", [1, 16])
    mb.op("RESHAPE", [y, shape], [r])
    z = mb.tensor("StatefulPartitionedCall_1:0", (1, 16))
    mb.op("SOFTMAX", [r], [z], options=("SoftmaxOptions", {"Beta": 1.0}))
    return mb.build([x], [z])


def test_ops_map_to_layers_by_tensor_name_and_neighbour_without_a_keras_model():
    result = map_layers(parse_model(_named_model()))
    assert [(r.keras_layer, r.match) for r in result] == [
        ("block/conv", MATCH_TENSOR_NAME), ("head", MATCH_TENSOR_NAME), ("head", MATCH_NEIGHBOUR)]
    assert result[0].fused_layers == ("block/relu",)  # the primary is the convolution, not the ReLU
    assert result[2].evidence == "op 1 RESHAPE (producer)"
    assert result[0].label() == "op 0 CONV_2D (layer `block/conv`)"


def test_keras_model_confirms_names_gives_classes_and_folded_layers():
    result = map_layers(parse_model(_named_model()), keras_layers_from_config(_config()))
    conv = result[0]
    assert (conv.keras_layer, conv.layer_class, conv.match) == ("block/conv", "Conv2D", MATCH_CONFIRMED)
    assert set(conv.fused_layers) == {"block/relu", "block/bn"}  # bn: folded, found by the graph
    assert conv.label() == "op 0 CONV_2D (layer `block/conv`, Conv2D)"


def test_a_layer_the_keras_model_does_not_have_is_not_confirmed():
    config = _config()
    config["config"]["layers"] = config["config"]["layers"][:2]  # no "head"
    result = map_layers(parse_model(_named_model()), keras_layers_from_config(config))
    assert (result[1].keras_layer, result[1].layer_class, result[1].match) == \
        ("head", None, MATCH_TENSOR_NAME)
    assert result[0].match == MATCH_CONFIRMED
    full = keras_layers_from_config(_config())
    assert unmapped_layers(map_layers(parse_model(_named_model()), full), full) == []
    assert [l.path for l in unmapped_layers(result[:1], full)] == ["head"]


def test_op_without_any_name_is_reported_not_found():
    mb = ModelBuilder()
    x = mb.tensor("x", (1, 10))
    y = mb.tensor("y", (1, 10), scale=1 / 256, zero_point=-128)
    mb.op("SOFTMAX", [x], [y], options=("SoftmaxOptions", {"Beta": 1.0}))
    (only,) = map_layers(parse_model(mb.build([x], [y])))
    assert (only.keras_layer, only.match) == (None, MATCH_NOT_FOUND)
    assert only.label() == "op 0 SOFTMAX (no Keras layer found)"


@pytest.mark.parametrize("content, problem", [
    (b"not a zip", "not a .keras archive"),
    (None, "has no config.json"),
])
def test_bad_keras_file_is_a_clear_error(tmp_path, content, problem):
    path = tmp_path / "model.keras"
    if content is None:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("metadata.json", json.dumps({}))
    else:
        path.write_bytes(content)
    with pytest.raises(PipelineError) as err:
        read_keras_layers(path)
    assert problem in err.value.problem and err.value.path == str(path)
    assert err.value.field == "--keras-model"


def test_keras_2_style_inbound_nodes_are_read():
    config = {"class_name": "Functional", "config": {"name": "net", "layers": [
        {"class_name": "InputLayer", "config": {"name": "image"}, "inbound_nodes": []},
        {"class_name": "Dense", "config": {"name": "fc"}, "inbound_nodes": [[["image", 0, 0, {}]]]}]}}
    assert keras_layers_from_config(config).layers["fc"].inbound == ("image",)


# --- real converter output ------------------------------------------------------------------

def _live_classes(keras_path, safe_mode=True) -> dict[str, str]:
    """Layer paths and classes from the loaded Keras model itself (independent of config.json)."""
    import keras

    model = keras.models.load_model(keras_path, compile=False, safe_mode=safe_mode)
    out = {}

    def walk(m, prefix):
        for layer in m.layers:
            path = f"{prefix}{layer.name}"
            out[path] = type(layer).__name__
            if hasattr(layer, "layers"):
                walk(layer, path + "/")

    walk(model, "")
    return out


def test_h5_model_gives_the_same_layers_as_keras(demo_int8, out_root, tmp_path):
    import keras

    keras_path = demo.cached_model_path(out_root / ".cache")
    h5 = tmp_path / "demo.h5"
    keras.models.load_model(keras_path, compile=False).save(h5)
    assert read_keras_layers(h5).layers == read_keras_layers(keras_path).layers
    (tmp_path / "weights.h5").write_bytes(b"not hdf5")
    with pytest.raises(PipelineError, match="not an HDF5 file"):
        read_keras_layers(tmp_path / "weights.h5")


def test_every_demo_op_has_its_keras_layer(demo_int8, out_root):
    model = read_model(demo_int8.quantized_model)
    keras_path = demo.cached_model_path(out_root / ".cache")
    without = map_layers(model)
    confirmed = map_layers(model, keras_path)
    assert all(r.keras_layer for r in without)
    assert [r.keras_layer for r in without] == [r.keras_layer for r in confirmed] == [
        "conv1", "pool1", "conv2", "flatten", "fc1", "probs", "probs"]
    live = _live_classes(keras_path)
    assert all(r.layer_class == live[r.keras_layer] for r in confirmed)
    assert confirmed[6].op == "SOFTMAX" and confirmed[6].match == MATCH_NEIGHBOUR


def test_every_mobilenet_op_has_its_keras_layer(out_root, run_quantize):
    result, keras_path, _ = diagnosis_models.quantized_mobilenet(out_root, run_quantize)
    model = read_model(result.quantized_model)
    keras = read_keras_layers(keras_path)
    mapped = map_layers(model, keras)
    assert len(mapped) == len(model.main.operators) == 65
    assert all(r.keras_layer for r in mapped)
    live = _live_classes(keras_path)
    assert all(r.layer_class == live[r.keras_layer] for r in mapped)
    expected = {"CONV_2D": "Conv2D", "DEPTHWISE_CONV_2D": "DepthwiseConv2D", "ADD": "Add",
                "FULLY_CONNECTED": "Dense", "MEAN": "GlobalAveragePooling2D", "SOFTMAX": "Dense"}
    assert all(r.layer_class == expected[r.op] for r in mapped)
    assert mapped[0].keras_layer == "Conv1" and set(mapped[0].fused_layers) == {"Conv1_relu", "bn_Conv1"}
    # every layer of the Keras model is accounted for: named by an op or folded into one
    assert unmapped_layers(mapped, keras) == []
    # without the Keras model the tensor names alone give the same layers
    assert [r.keras_layer for r in map_layers(model)] == [r.keras_layer for r in mapped]


def test_layer_norm_gelu_and_lambda_ops_name_their_layers(out_root):
    _, int8, keras_path, _ = diagnosis_models.converted_layer_norm(out_root)
    model = read_model(int8)
    mapped = map_layers(model, keras_path)
    by_op = {}
    for r in mapped:
        by_op.setdefault(r.op, []).append(r)
    (neg,) = by_op["NEG"]
    assert neg.label().endswith("(layer `encoder/layer_norm_1`, LayerNormalization)")
    assert neg.match == MATCH_CONFIRMED
    (gelu,) = by_op["GELU"]
    assert (gelu.keras_layer, gelu.layer_class) == ("encoder/gelu_act", "Activation")
    lambda_ops = [r for r in mapped if r.layer_class == "Lambda"]
    assert [r.op for r in lambda_ops] == ["MUL", "ADD"]
    assert {r.keras_layer for r in lambda_ops} == {"encoder/scale_shift"}
    # the quantizer leaves NEG in float between a DEQUANTIZE and a QUANTIZE: both join its layer
    for r in by_op["DEQUANTIZE"] + by_op["QUANTIZE"]:
        assert (r.keras_layer, r.match) == ("encoder/layer_norm_1", MATCH_NEIGHBOUR)
    # the model output was renamed; its weights still carry the layer's name
    head = mapped[-1]
    assert (head.op, head.keras_layer, head.match) == ("FULLY_CONNECTED", "head", MATCH_CONFIRMED)
    assert map_layers(model)[-1].match == MATCH_WEIGHT_NAME
    live = _live_classes(keras_path, safe_mode=False)
    assert all(r.layer_class == live[r.keras_layer] for r in mapped)


def test_a_tf1_scope_beside_the_model_root_is_a_layer_of_its_own():
    """TF1 graphs (Coral's DeepLab): `aspp0/BatchNorm_Fold` sits beside `MobilenetV2/...`;
    `aspp0` is the layer, not the TF op scope under it."""
    mb = ModelBuilder()
    x = mb.tensor("input", (1, 4), scale=0.1)
    h = mb.tensor("MobilenetV2/Conv/Relu6;MobilenetV2/Conv/add_fold", (1, 4), scale=0.1)
    y = mb.tensor("aspp0/Relu;aspp0/BatchNorm_Fold/add", (1, 4), scale=0.1)
    z = mb.tensor("MobilenetV2/Logits/Relu", (1, 4), scale=0.1)
    mb.op("RELU", [x], [h])
    mb.op("RELU", [h], [y])
    mb.op("RELU", [y], [z])
    layers = map_layers(parse_model(mb.build(inputs=[x], outputs=[z])))
    assert [r.keras_layer for r in layers] == ["Conv", "aspp0", "Logits"]
