"""Build small `.tflite` flatbuffers with the generated TFLite schema, for rule tests.

Exact control over what the TF converter would never emit on purpose (rank-5 tensors, strides
of 2, a fused activation on a pool, op codes newer than the schema, dynamic shapes), in
milliseconds. The models are real flatbuffers: the LiteRT and TFLM interpreters load them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import flatbuffers
import numpy as np
import tflite

_DTYPES = {"float32": tflite.TensorType.FLOAT32, "int8": tflite.TensorType.INT8,
           "uint8": tflite.TensorType.UINT8, "int16": tflite.TensorType.INT16,
           "int32": tflite.TensorType.INT32, "int64": tflite.TensorType.INT64}
_NP = {"float32": np.float32, "int8": np.int8, "uint8": np.uint8, "int16": np.int16,
       "int32": np.int32, "int64": np.int64}


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: tuple[float, ...] | None
    zero_point: tuple[int, ...] | None
    axis: int
    data: bytes | None
    shape_signature: tuple[int, ...] | None
    variable: bool = False  # state kept across invokes (SVDF, LSTM), reset by the interpreters


@dataclass
class _Op:
    code: int
    custom: str | None
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: tuple[str, dict] | None
    version: int


@dataclass
class ModelBuilder:
    tensors: list[_Tensor] = field(default_factory=list)
    ops: list[_Op] = field(default_factory=list)

    def tensor(self, name: str, shape, dtype: str = "int8", *, scale=0.05, zero_point=0, axis=0,
               data=None, shape_signature=None, variable: bool = False) -> int:
        if scale is not None and not isinstance(scale, (tuple, list)):
            scale = (float(scale),)
        if zero_point is not None and not isinstance(zero_point, (tuple, list)):
            zero_point = (int(zero_point),) * (len(scale) if scale else 1)
        raw = None if data is None else np.asarray(data, dtype=_NP[dtype]).tobytes()
        self.tensors.append(_Tensor(name, tuple(shape), dtype,
                                    tuple(scale) if scale and dtype != "float32" else None,
                                    tuple(zero_point) if scale and dtype != "float32" else None,
                                    axis, raw, tuple(shape_signature) if shape_signature else None, variable))
        return len(self.tensors) - 1

    def const(self, name: str, values, dtype: str = "int32", **kw) -> int:
        values = np.asarray(values, dtype=_NP[dtype])
        kw.setdefault("scale", None if dtype in ("int32", "int64") else 0.05)
        return self.tensor(name, values.shape, dtype, data=values, **kw)

    def op(self, name: str, inputs, outputs, options: tuple[str, dict] | None = None,
           custom: str | None = None, version: int = 1, code: int | None = None) -> None:
        if code is None:
            code = tflite.BuiltinOperator.CUSTOM if custom else getattr(tflite.BuiltinOperator, name)
        self.ops.append(_Op(code, custom, tuple(inputs), tuple(outputs), options, version))

    def build(self, inputs, outputs) -> bytes:
        b = flatbuffers.Builder(1024)
        buffers = [b""] + [t.data or b"" for t in self.tensors]

        def vec_i32(start, values):
            start(b, len(values))
            for v in reversed(values):
                b.PrependInt32(v)
            return b.EndVector()

        buf_offsets = []
        for data in buffers:
            data_off = b.CreateByteVector(data) if data else None
            tflite.BufferStart(b)
            if data_off is not None:
                tflite.BufferAddData(b, data_off)
            buf_offsets.append(tflite.BufferEnd(b))

        tensor_offsets = []
        for i, t in enumerate(self.tensors):
            name = b.CreateString(t.name)
            shape = vec_i32(tflite.TensorStartShapeVector, t.shape)
            sig = vec_i32(tflite.TensorStartShapeSignatureVector, t.shape_signature) if t.shape_signature else None
            quant = None
            if t.scale:
                tflite.QuantizationParametersStartScaleVector(b, len(t.scale))
                for v in reversed(t.scale):
                    b.PrependFloat32(v)
                scales = b.EndVector()
                tflite.QuantizationParametersStartZeroPointVector(b, len(t.zero_point))
                for v in reversed(t.zero_point):
                    b.PrependInt64(v)
                zps = b.EndVector()
                tflite.QuantizationParametersStart(b)
                tflite.QuantizationParametersAddScale(b, scales)
                tflite.QuantizationParametersAddZeroPoint(b, zps)
                tflite.QuantizationParametersAddQuantizedDimension(b, t.axis)
                quant = tflite.QuantizationParametersEnd(b)
            tflite.TensorStart(b)
            tflite.TensorAddShape(b, shape)
            if sig is not None:
                tflite.TensorAddShapeSignature(b, sig)
            tflite.TensorAddType(b, _DTYPES[t.dtype])
            tflite.TensorAddBuffer(b, i + 1 if t.data else 0)
            tflite.TensorAddName(b, name)
            if quant is not None:
                tflite.TensorAddQuantization(b, quant)
            if t.variable:
                tflite.TensorAddIsVariable(b, True)
            tensor_offsets.append(tflite.TensorEnd(b))

        codes: list[tuple[int, str | None, int]] = []
        for op in self.ops:
            key = (op.code, op.custom, op.version)
            if key not in codes:
                codes.append(key)
        code_offsets = []
        for code, custom, version in codes:
            custom_off = b.CreateString(custom) if custom else None
            tflite.OperatorCodeStart(b)
            tflite.OperatorCodeAddBuiltinCode(b, code)
            tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
            tflite.OperatorCodeAddVersion(b, version)
            if custom_off is not None:
                tflite.OperatorCodeAddCustomCode(b, custom_off)
            code_offsets.append(tflite.OperatorCodeEnd(b))

        op_offsets = []
        for op in self.ops:
            ins = vec_i32(tflite.OperatorStartInputsVector, op.inputs)
            outs = vec_i32(tflite.OperatorStartOutputsVector, op.outputs)
            opt_off = opt_type = None
            if op.options:
                kind, fields = op.options
                getattr(tflite, f"{kind}Start")(b)
                for k, v in fields.items():
                    getattr(tflite, f"{kind}Add{k}")(b, v)
                opt_off = getattr(tflite, f"{kind}End")(b)
                opt_type = getattr(tflite.BuiltinOptions, kind)
            tflite.OperatorStart(b)
            tflite.OperatorAddOpcodeIndex(b, codes.index((op.code, op.custom, op.version)))
            tflite.OperatorAddInputs(b, ins)
            tflite.OperatorAddOutputs(b, outs)
            if opt_off is not None:
                tflite.OperatorAddBuiltinOptionsType(b, opt_type)
                tflite.OperatorAddBuiltinOptions(b, opt_off)
            op_offsets.append(tflite.OperatorEnd(b))

        def table_vector(start, offsets):
            start(b, len(offsets))
            for o in reversed(offsets):
                b.PrependUOffsetTRelative(o)
            return b.EndVector()

        tensors_vec = table_vector(tflite.SubGraphStartTensorsVector, tensor_offsets)
        ops_vec = table_vector(tflite.SubGraphStartOperatorsVector, op_offsets)
        in_vec = vec_i32(tflite.SubGraphStartInputsVector, list(inputs))
        out_vec = vec_i32(tflite.SubGraphStartOutputsVector, list(outputs))
        sg_name = b.CreateString("main")
        tflite.SubGraphStart(b)
        tflite.SubGraphAddTensors(b, tensors_vec)
        tflite.SubGraphAddOperators(b, ops_vec)
        tflite.SubGraphAddInputs(b, in_vec)
        tflite.SubGraphAddOutputs(b, out_vec)
        tflite.SubGraphAddName(b, sg_name)
        subgraph = tflite.SubGraphEnd(b)

        subgraphs_vec = table_vector(tflite.ModelStartSubgraphsVector, [subgraph])
        codes_vec = table_vector(tflite.ModelStartOperatorCodesVector, code_offsets)
        buffers_vec = table_vector(tflite.ModelStartBuffersVector, buf_offsets)
        desc = b.CreateString("built by tests/tflite_builder.py")
        tflite.ModelStart(b)
        tflite.ModelAddVersion(b, 3)
        tflite.ModelAddOperatorCodes(b, codes_vec)
        tflite.ModelAddSubgraphs(b, subgraphs_vec)
        tflite.ModelAddDescription(b, desc)
        tflite.ModelAddBuffers(b, buffers_vec)
        b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
        return bytes(b.Output())


def chain(op: str, in_shape, out_shape, *, dtype="int8", options=None, extra_inputs=(),
          in_signature=None) -> bytes:
    """One-op model: input -> op -> output, with optional constant extra inputs."""
    mb = ModelBuilder()
    x = mb.tensor("input", in_shape, dtype, shape_signature=in_signature)
    extras = [mb.const(f"c{i}", v, d) if not isinstance(v, int) else v for i, (v, d) in enumerate(extra_inputs)]
    y = mb.tensor("output", out_shape, dtype)
    mb.op(op, [x, *extras], [y], options=options)
    return mb.build([x], [y])
