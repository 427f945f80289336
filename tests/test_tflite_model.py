"""The flatbuffer reader: real models read right, damaged files rejected cleanly (fuzzed)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import coral_model
from pipeline.errors import ModelFormatError
from pipeline.tflite_model import builtin_op_name, parse_model, read_model


@pytest.fixture(scope="module")
def demo_bytes(demo_int8):
    return demo_int8.quantized_model.read_bytes()


def test_demo_model_structure(demo_bytes):
    m = parse_model(demo_bytes)
    assert [op.op for op in m.main.operators] == [
        "CONV_2D", "MAX_POOL_2D", "CONV_2D", "RESHAPE", "FULLY_CONNECTED", "FULLY_CONNECTED", "SOFTMAX"]
    conv = m.main.tensors[m.main.operators[0].inputs[1]]
    assert conv.is_constant and conv.dtype == "int8" and conv.quantization.per_channel
    assert conv.quantization.axis == 0 and len(conv.quantization.scales) == 16
    assert m.min_runtime_version and m.schema_version == 3
    assert m.input_names() == ["image"] and m.output_names() == ["output_0"]


def test_coral_model_with_custom_op_and_uint8():
    m = read_model(coral_model("posenet_mobilenet_v1_075_353_481_16_quant_decoder.tflite"))
    assert m.main.operators[-1].op == "CUSTOM:PosenetDecoderOp"
    assert m.main.operators[-1].custom_code == "PosenetDecoderOp"
    assert m.main.input_tensors()[0].dtype == "uint8"


def test_coral_mobilenet_counts():
    m = read_model(coral_model("mobilenet_v2_1.0_224_quant.tflite"))
    assert len(m.main.operators) == 66  # the count the Coral README gives
    assert m.main.input_tensors()[0].shape == (1, 224, 224, 3)


def test_unknown_builtin_code_is_named_by_number():
    assert builtin_op_name(9999) == "BUILTIN_9999"
    assert builtin_op_name(3) == "CONV_2D"


@pytest.mark.parametrize("data,match", [
    (b"", "too short"),
    (b"\x00" * 8, "too short"),
    (b"\x10\x00\x00\x00XXXX" + b"\x00" * 32, "identifier"),
    (b"\xff\xff\xff\x7fTFL3" + b"\x00" * 32, "outside the file"),
])
def test_rejects_bad_headers(data, match):
    with pytest.raises(ModelFormatError, match=match):
        parse_model(data, source="bad.tflite")


def test_rejects_truncated_model(demo_bytes):
    for cut in (100, len(demo_bytes) // 2, len(demo_bytes) - 1000):
        try:
            m = parse_model(demo_bytes[:cut], source="cut.tflite")
        except ModelFormatError as exc:
            assert "cut.tflite" in str(exc)
        else:  # a cut inside trailing weight data can leave the tables intact
            assert m.main.operators


def test_read_model_file_errors(tmp_path):
    with pytest.raises(ModelFormatError, match="no such file"):
        read_model(tmp_path / "missing.tflite")
    with pytest.raises(ModelFormatError, match="is a directory"):
        read_model(tmp_path)


def test_absurd_vector_length_is_rejected(demo_bytes):
    """Point the root's subgraphs vector at a length of 2**31: must fail fast, not loop."""
    data = bytearray(demo_bytes)
    root = struct.unpack_from("<I", data, 0)[0]
    vtable = root - struct.unpack_from("<i", data, root)[0]
    field_offset = struct.unpack_from("<H", data, vtable + 4 + 2 * 2)[0]  # field 2: subgraphs
    vec = root + field_offset + struct.unpack_from("<I", data, root + field_offset)[0]
    struct.pack_into("<I", data, vec, 2 ** 31)
    with pytest.raises(ModelFormatError, match="claims 2147483648 entries"):
        parse_model(bytes(data))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzz_mutated_models_never_crash(demo_bytes, data):
    """Random byte edits, truncations and garbage: either a model or a ModelFormatError."""
    buf = bytearray(demo_bytes[:4096] if data.draw(st.booleans()) else demo_bytes)
    for _ in range(data.draw(st.integers(1, 20))):
        pos = data.draw(st.integers(0, len(buf) - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    try:
        parse_model(bytes(buf))
    except ModelFormatError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=512))
def test_fuzz_random_bytes(blob):
    try:
        parse_model(b"\x0c\x00\x00\x00TFL3" + blob)
    except ModelFormatError:
        pass
