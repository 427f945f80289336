"""Each Edge TPU rule on small models built with the schema: one that passes, one that fails."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.rules.edgetpu import LIMITS, check_edgetpu, table
from pipeline.tflite_model import parse_model
from tflite_builder import ModelBuilder, chain

MAPPED = "Mapped to Edge TPU"
UNSPECIFIED = "Operation is otherwise supported, but not mapped due to some unspecified limitation"
NOT_SUPPORTED = "Operation not supported"
DATA_TYPE = "Operation is working on an unsupported data type"
AFTER_CUT = "More than one subgraph is not supported"


def verdict(data: bytes, **kw):
    return check_edgetpu(parse_model(data), **kw).ops[0]


def pool(act: int) -> bytes:
    return chain("MAX_POOL_2D", (1, 8, 8, 4), (1, 4, 4, 4), options=("Pool2DOptions", {
        "FilterWidth": 2, "FilterHeight": 2, "StrideW": 2, "StrideH": 2, "FusedActivationFunction": act}))


def conv(dh: int, dw: int, *, const_weights: bool = True, op="CONV_2D") -> bytes:
    mb = ModelBuilder()
    x = mb.tensor("x", (1, 8, 8, 4))
    if const_weights:
        w = mb.const("w", np.ones((4, 3, 3, 4)), "int8", scale=(0.1,) * 4, zero_point=0)
    else:
        w = mb.tensor("w", (4, 3, 3, 4))
    b = mb.const("b", np.zeros(4), "int32")
    y = mb.tensor("y", (1, 8, 8, 4))
    kind = "Conv2DOptions" if op == "CONV_2D" else "DepthwiseConv2DOptions"
    mb.op(op, [x, w, b], [y], options=(kind, {"DilationHFactor": dh, "DilationWFactor": dw}))
    return mb.build([x] + ([] if const_weights else [w]), [y])


def fully_connected(out_shape) -> bytes:
    mb = ModelBuilder()
    x = mb.tensor("x", (1, 16))
    w = mb.const("w", np.ones((out_shape[-1], 16)), "int8")
    y = mb.tensor("y", out_shape)
    mb.op("FULLY_CONNECTED", [x, w, -1], [y])
    return mb.build([x], [y])


def strided_slice(strides, masks=None) -> bytes:
    return chain("STRIDED_SLICE", (1, 8, 8, 4), (1, 8 // strides[1], 8 // strides[2], 4),
                 extra_inputs=[([0, 0, 0, 0], "int32"), ([1, 8, 8, 4], "int32"), (strides, "int32")],
                 options=("StridedSliceOptions", masks or {}))


def mean(axes, shape=(1, 8, 8, 4)) -> bytes:
    out = tuple(1 if i in [a % len(shape) for a in axes] else d for i, d in enumerate(shape))
    return chain("MEAN", shape, out, extra_inputs=[(axes, "int32")],
                 options=("ReducerOptions", {"KeepDims": True}))


def concat_with_constant(value: int) -> bytes:
    mb = ModelBuilder()
    x = mb.tensor("x", (1, 8, 8, 4))
    c = mb.const("pad", np.full((1, 8, 8, 4), value), "int8")
    y = mb.tensor("y", (1, 8, 8, 8))
    mb.op("CONCATENATION", [x, c], [y], options=("ConcatenationOptions", {"Axis": 3}))
    return mb.build([x], [y])


def prelu(alpha_shape) -> bytes:
    return chain("PRELU", (1, 8, 8, 4), (1, 8, 8, 4), extra_inputs=[(np.ones(alpha_shape), "int8")])


CASES = [
    # (rule, passing model, failing model, failing status)
    ("no_fused_activation", lambda: pool(0), lambda: pool(1), UNSPECIFIED),
    ("equal_dilation", lambda: conv(2, 2), lambda: conv(2, 1), UNSPECIFIED),
    ("constant_weights", lambda: conv(1, 1), lambda: conv(1, 1, const_weights=False),
     "Filter, bias, or other param is not constant at compile-time"),
    ("output_1d", lambda: fully_connected((1, 10)), lambda: fully_connected((2, 10)), UNSPECIFIED),
    ("softmax_1d", lambda: chain("SOFTMAX", (1, 10), (1, 10)),
     lambda: chain("SOFTMAX", (1, 4, 10), (1, 4, 10)), UNSPECIFIED),
    ("unit_strides", lambda: strided_slice([1, 1, 1, 1]), lambda: strided_slice([1, 2, 2, 1]),
     "Only Strided-Slice with unitary strides supported"),
    ("not_over_batch", lambda: mean([1, 2]), lambda: mean([0]), UNSPECIFIED),
    ("z_reduction_multiple_of_4", lambda: mean([3], (1, 8, 8, 8)), lambda: mean([3], (1, 8, 8, 6)),
     UNSPECIFIED),
    ("constant_concat_is_zero_padding", lambda: concat_with_constant(0), lambda: concat_with_constant(3),
     UNSPECIFIED),
    ("prelu_alpha_1d", lambda: prelu((1, 1, 4)), lambda: prelu((8, 8, 4)), UNSPECIFIED),
    ("resize_scale", lambda: chain("RESIZE_BILINEAR", (1, 6, 6, 4), (1, 12, 12, 4),
                                   extra_inputs=[([12, 12], "int32")]),
     lambda: chain("RESIZE_BILINEAR", (1, 1, 1, 4), (1, 33, 33, 4), extra_inputs=[([33, 33], "int32")]),
     UNSPECIFIED),
    ("eight_bit_input", lambda: chain("QUANTIZE", (1, 10), (1, 10), dtype="int8"), None, None),
]


@pytest.mark.parametrize("rule,good,bad,bad_status", CASES, ids=[c[0] for c in CASES])
def test_rule(rule, good, bad, bad_status):
    assert rule in LIMITS
    ok = verdict(good())
    assert (ok.mapped, ok.status) == (True, MAPPED), ok
    if bad is not None:
        v = verdict(bad())
        assert (v.mapped, v.status) == (False, bad_status)
        assert v.fix, "every refusal says what to change"


def test_every_limit_in_the_table_is_implemented_and_tested():
    used = {lim for entry in table()["ops"].values() for lim in entry.get("limits", ())}
    assert used <= set(LIMITS)
    assert used <= {c[0] for c in CASES}


def test_rank_rule():
    assert verdict(chain("RELU", (1, 1, 8, 8, 4), (1, 1, 8, 8, 4))).mapped  # outer dims of 1 are fine
    v = verdict(chain("RELU", (2, 8, 8, 4), (2, 8, 8, 4)))
    assert v.status == "Tensor has unsupported rank (up to 3 innermost dimensions mapped)"


def test_float_tensors_are_an_unsupported_data_type_and_float_model_is_not_quantized():
    mb = ModelBuilder()
    x = mb.tensor("x", (1, 10))
    y = mb.tensor("y", (1, 10), "float32")
    mb.op("DEQUANTIZE", [x], [y])
    assert verdict(mb.build([x], [y])).status == DATA_TYPE
    r = check_edgetpu(parse_model(chain("RELU", (1, 10), (1, 10), dtype="float32")))
    assert r.model_problem == "Model not quantized" and "invoke quantize" in r.ops[0].fix


def test_float_input_quantize_stays_in_front_without_cutting():
    """As in the compiler's mnist log: the float-input QUANTIZE runs on the CPU, the rest maps."""
    mb = ModelBuilder()
    x = mb.tensor("x", (1, 10), "float32")
    q = mb.tensor("q", (1, 10))
    y = mb.tensor("y", (1, 10))
    mb.op("QUANTIZE", [x], [q])
    mb.op("RELU", [q], [y])
    r = check_edgetpu(parse_model(mb.build([x], [y])))
    assert [(v.op, v.mapped) for v in r.ops] == [("QUANTIZE", False), ("RELU", True)]
    assert r.ops[0].status == UNSPECIFIED and "--io-type" in r.ops[0].fix


def test_partition_follows_data_flow():
    """After the cut, an op reading only Edge TPU tensors still maps; one reading a CPU tensor
    does not."""
    mb = ModelBuilder()
    x = mb.tensor("x", (1, 16))
    a, b, c, d = (mb.tensor(n, (1, 16)) for n in "abcd")
    mb.op("ADD", [x, x], [a])
    mb.op("LEAKY_RELU", [a], [b])
    mb.op("ADD", [a, a], [c])
    mb.op("ADD", [b, c], [d])
    r = check_edgetpu(parse_model(mb.build([x], [d])))
    assert [(v.op, v.status) for v in r.ops] == [
        ("ADD", MAPPED), ("LEAKY_RELU", NOT_SUPPORTED), ("ADD", MAPPED), ("ADD", AFTER_CUT)]
    assert (r.cut_at, r.mapped_ops, r.compatible) == (1, 2, False)


def test_min_runtime_version():
    model = parse_model(chain("REDUCE_MAX", (1, 8, 8, 4), (1, 1, 1, 4), extra_inputs=[([1, 2], "int32")],
                              options=("ReducerOptions", {"KeepDims": True})))
    assert check_edgetpu(model).ops[0].mapped  # default target: runtime 14 (compiler 16)
    old = check_edgetpu(model, runtime=13).ops[0]
    assert not old.mapped and "runtime 14" in old.fix


def test_unknown_op_code_is_reported_by_number():
    mb = ModelBuilder()
    x, y = mb.tensor("x", (1, 10)), mb.tensor("y", (1, 10))
    mb.op("UNKNOWN", [x], [y], code=250)
    v = verdict(mb.build([x], [y]))
    assert (v.op, v.status) == ("BUILTIN_250", NOT_SUPPORTED)


def test_dynamic_batch_is_a_model_problem():
    r = check_edgetpu(parse_model(chain("RELU", (1, 10), (1, 10), in_signature=(-1, 10))))
    assert r.model_problem == "Model has dynamic-sized tensors" and not r.compatible
    assert "batch 1" in r.ops[0].fix


def test_parameters_beyond_the_on_chip_cache_stream_off_chip():
    mb = ModelBuilder()
    x = mb.tensor("x", (1, 3000))
    w = mb.const("w", np.zeros((3000, 3000)), "int8")  # 9 MB of weights
    y = mb.tensor("y", (1, 3000))
    mb.op("FULLY_CONNECTED", [x, w, -1], [y])
    r = check_edgetpu(parse_model(mb.build([x], [y])))
    assert r.parameter_bytes == 9_000_000
    assert r.off_chip_bytes == 9_000_000 - table()["on_chip_parameter_cache_bytes"] > 0


def test_an_int16x8_model_is_16_bit_activations_not_unquantized():
    """int16x8 is quantized: the Edge TPU refuses its 16-bit activations, and the fix is --mode int8."""
    r = check_edgetpu(parse_model(chain("RELU", (1, 8), (1, 8), dtype="int16")))
    assert r.model_problem == DATA_TYPE and not r.compatible
    assert "16-bit activations" in r.ops[0].fix and "--mode int8" in r.ops[0].fix


def test_an_int8_model_with_one_int16_tensor_stays_int8():
    """An int8 fused LSTM keeps its cell state in int16 and maps: most activations decide."""
    from pipeline.model import quantization_scheme

    mb = ModelBuilder()
    x = mb.tensor("x", (1, 8))
    h = mb.tensor("h", (1, 8))
    c = mb.tensor("c", (1, 8), "int16", scale=1 / 2048)
    y = mb.tensor("y", (1, 8))
    mb.op("RELU", [x], [h])
    mb.op("QUANTIZE", [h], [c])
    mb.op("QUANTIZE", [c], [y])
    model = parse_model(mb.build([x], [y]))
    assert quantization_scheme(model) == "int8" and check_edgetpu(model).model_problem is None
    assert quantization_scheme(parse_model(chain("RELU", (1, 8), (1, 8), dtype="int16"))) == "int16x8"
    assert quantization_scheme(parse_model(chain("RELU", (1, 8), (1, 8), dtype="float32"))) == "float"
