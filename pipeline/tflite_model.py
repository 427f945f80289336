"""Read a `.tflite` flatbuffer without TensorFlow.

Built on the `flatbuffers` runtime and the generated TFLite schema of the `tflite` package, so
that `invoke check` and the reports start in milliseconds instead of importing TensorFlow.
The flatbuffers runtime does no bounds checking of its own: every vector length is compared
with the file size before it is walked, and any read outside the buffer becomes a
`ModelFormatError` naming the file, never a crash or a hang.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from .errors import ModelFormatError

FILE_IDENTIFIER = b"TFL3"
SCHEMA_PACKAGE = "tflite"  # generated from TensorFlow's schema.fbs; version in `schema_version()`
_MIN_FILE = 16  # root offset + identifier + the smallest vtable
_INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "int4": (-8, 7)}


@cache
def _schema():
    import tflite  # deferred: ~200 generated modules

    return tflite


@cache
def _enum_names(enum_name: str) -> dict[int, str]:
    enum = getattr(_schema(), enum_name)
    return {value: name for name, value in vars(enum).items()
            if not name.startswith("_") and isinstance(value, int)}


@cache
def _scalar_getters(cls) -> tuple[str, ...]:
    """Zero-argument field getters of a generated options class (vector getters take an index)."""
    import inspect

    names = []
    for name, fn in vars(cls).items():
        if not name[:1].isupper() or name.startswith(("GetRootAs", "Init")) or \
                name.endswith(("AsNumpy", "Length", "IsNone", "BufferHasIdentifier")):
            continue
        if callable(fn) and len(inspect.signature(fn).parameters) == 1:
            names.append(name)
    return tuple(names)


def builtin_op_name(code: int) -> str:
    """Schema name of a builtin op code; codes newer than the schema are named by number."""
    return _enum_names("BuiltinOperator").get(code, f"BUILTIN_{code}")


def tensor_type_name(code: int) -> str:
    return _enum_names("TensorType").get(code, f"TYPE_{code}").lower()


def schema_version() -> str:
    from importlib.metadata import version

    return f"{SCHEMA_PACKAGE} {version(SCHEMA_PACKAGE)}"


@dataclass(frozen=True)
class Quantization:
    scales: tuple[float, ...]
    zero_points: tuple[int, ...]
    axis: int = 0

    @property
    def per_channel(self) -> bool:
        return len(self.scales) > 1


@dataclass(frozen=True)
class Tensor:
    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    shape_signature: tuple[int, ...] | None
    buffer: int
    data_bytes: int
    quantization: Quantization | None
    is_variable: bool = False

    @property
    def is_constant(self) -> bool:
        return self.data_bytes > 0

    @property
    def is_dynamic(self) -> bool:
        """A dimension unknown until run time (-1 in `shape_signature`)."""
        return self.shape_signature is not None and any(d < 0 for d in self.shape_signature)

    @property
    def scale(self) -> float | None:
        return self.quantization.scales[0] if self.quantization else None

    @property
    def zero_point(self) -> int | None:
        return self.quantization.zero_points[0] if self.quantization else None


@dataclass(frozen=True)
class Operator:
    index: int
    op: str  # schema builtin name, or CUSTOM:<name>
    builtin_code: int
    version: int
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    custom_code: str | None = None
    # scalar builtin options by schema field name, e.g. {"FusedActivationFunction": "RELU",
    # "DilationHFactor": 2}; activation functions and paddings by their enum names
    options: dict[str, object] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Subgraph:
    name: str
    tensors: tuple[Tensor, ...]
    operators: tuple[Operator, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    def input_tensors(self) -> list[Tensor]:
        return [self.tensors[i] for i in self.inputs]

    def output_tensors(self) -> list[Tensor]:
        return [self.tensors[i] for i in self.outputs]


@dataclass(frozen=True)
class Signature:
    key: str
    subgraph: int
    inputs: tuple[tuple[str, int], ...]  # (signature name, tensor index), in file order
    outputs: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class TFLiteModel:
    source: str
    size: int
    schema_version: int
    description: str
    subgraphs: tuple[Subgraph, ...]
    signatures: tuple[Signature, ...]
    metadata: dict[str, int] = field(default_factory=dict)  # name -> buffer index
    min_runtime_version: str | None = None
    raw: bytes = field(default=b"", repr=False, compare=False)
    buffer_spans: tuple[tuple[int, int], ...] = field(default=(), repr=False, compare=False)

    def tensor_values(self, tensor: Tensor):
        """A constant tensor's data as a numpy array (None for activations)."""
        import numpy as np

        if not tensor.is_constant or tensor.buffer >= len(self.buffer_spans):
            return None
        start, n = self.buffer_spans[tensor.buffer]
        dtype = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "int32": np.int32,
                 "int64": np.int64, "float32": np.float32, "float16": np.float16}.get(tensor.dtype)
        if dtype is None or n == 0:
            return None
        return np.frombuffer(self.raw, dtype=dtype, count=n // np.dtype(dtype).itemsize, offset=start)

    @property
    def main(self) -> Subgraph:
        return self.subgraphs[0]

    def input_names(self) -> list[str]:
        """Names users key data by: the serving signature's names, else the tensor names."""
        sig = self.serving_signature()
        by_tensor = {index: name for name, index in sig.inputs} if sig else {}
        return [by_tensor.get(t.index, t.name) for t in self.main.input_tensors()]

    def output_names(self) -> list[str]:
        sig = self.serving_signature()
        by_tensor = {index: name for name, index in sig.outputs} if sig else {}
        return [by_tensor.get(t.index, t.name) for t in self.main.output_tensors()]

    def serving_signature(self) -> Signature | None:
        for sig in self.signatures:
            if sig.key == "serving_default":
                return sig
        return self.signatures[0] if self.signatures else None

    def invalid_quantization(self) -> list[str]:
        """Tensors whose quantization no runtime can use: a scale that is NaN, infinite or not
        positive, or a zero point outside its type. Such a file is corrupt (or was calibrated on
        NaN data); every target would compute garbage or abort, and generated C would not compile."""
        import math

        found = []
        for t in self.main.tensors:
            q = t.quantization
            if q is None:
                continue
            bad = next((s for s in q.scales if not math.isfinite(s) or s <= 0), None)
            if bad is not None:
                found.append(f"tensor {t.index} '{t.name}' has quantization scale {bad!r}")
                continue
            lo, hi = _INT_RANGES.get(t.dtype, (None, None))
            if lo is not None and any(not lo <= z <= hi for z in q.zero_points):
                zp = next(z for z in q.zero_points if not lo <= z <= hi)
                found.append(f"tensor {t.index} '{t.name}' has zero point {zp} outside {t.dtype}")
        return found

    def op_names(self) -> list[str]:
        """Distinct op names over all subgraphs, in order of first use."""
        seen: dict[str, None] = {}
        for sg in self.subgraphs:
            for op in sg.operators:
                seen.setdefault(op.op, None)
        return list(seen)


# The largest model the pipeline reads: the flatbuffer format stops at 2 GiB, and the largest
# Edge TPU or MCU model is tens of MB; a bigger file is refused before it is read into memory.
MAX_MODEL_BYTES = 512 << 20


def read_model(path: str | Path, *, option: str = "--model") -> TFLiteModel:
    from .fileio import checked_input

    path = Path(path)
    fix = "check the path, or run `invoke quantize` to make it"
    checked_input(path, option=option, max_bytes=MAX_MODEL_BYTES, kind=".tflite model", error=ModelFormatError, fix=fix)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelFormatError(f"cannot read: {exc.strerror}", path=path, field=option) from None
    return parse_model(data, source=str(path))


def parse_model(data: bytes, source: str = "<bytes>") -> TFLiteModel:
    def bad(problem: str) -> ModelFormatError:
        return ModelFormatError(problem, path=source,
                                fix="pass a TensorFlow Lite flatbuffer (.tflite), e.g. from `invoke quantize`")

    if len(data) < _MIN_FILE:
        raise bad(f"only {len(data)} bytes: too short to be a TFLite model")
    if data[4:8] != FILE_IDENTIFIER:
        raise bad(f"file identifier is {data[4:8]!r}, expected {FILE_IDENTIFIER!r}: not a TFLite model")
    root = struct.unpack_from("<I", data, 0)[0]
    if root + 4 > len(data):
        raise bad("root table offset points outside the file: truncated or corrupt")
    try:
        return _Reader(bytes(data), source).model()
    except ModelFormatError:
        raise
    except (struct.error, IndexError, ValueError, TypeError, OverflowError, RecursionError,
            UnicodeDecodeError):
        raise bad(f"truncated or corrupt flatbuffer: a table or vector points outside the file's "
                  f"{len(data)} bytes") from None


class _Reader:
    def __init__(self, data: bytes, source: str):
        self.data = data
        self.source = source
        self.tfl = _schema()
        # Every element of every vector takes at least one byte of the file, unless tables are
        # shared: the converter never shares them, a hostile file repeats one table thousands of
        # times to make a reader walk billions of entries. The reader walks at most this many.
        self.budget = 2 * len(data) + 4096

    def _len(self, n: int, what: str) -> int:
        # Every element takes at least one byte, so a longer vector cannot be real.
        if n < 0 or n > len(self.data):
            raise ModelFormatError(f"{what} claims {n} entries in a {len(self.data)}-byte file: corrupt",
                                   path=self.source)
        self.budget -= n
        if self.budget < 0:
            raise ModelFormatError(f"its vectors claim more entries than the file has bytes ({what} among them): "
                                   "one table repeated many times: corrupt or hostile", path=self.source,
                                   fix="pass a TensorFlow Lite flatbuffer made by the TF converter")
        return n

    def _vector(self, obj, field_name: str, what: str) -> tuple:
        """A scalar vector through its numpy view: one call instead of one per element.
        The length is checked first; numpy refuses a view running past the buffer."""
        if not self._len(getattr(obj, f"{field_name}Length")(), what):
            return ()
        return tuple(getattr(obj, f"{field_name}AsNumpy")().tolist())

    def _str(self, raw: bytes | None) -> str:
        return raw.decode("utf-8", "replace") if raw else ""

    def model(self) -> TFLiteModel:
        m = self.tfl.Model.GetRootAs(self.data, 0)
        buffers = [m.Buffers(i) for i in range(self._len(m.BuffersLength(), "buffers"))]
        spans = tuple(self._buffer_span(b) for b in buffers)
        # data stored after the flatbuffer (models over 2 GB) has no inline span, only a size
        sizes = [n or int(b.Size() or 0) for (_, n), b in zip(spans, buffers)]
        codes = [self._opcode(m.OperatorCodes(i))
                 for i in range(self._len(m.OperatorCodesLength(), "operator_codes"))]
        subgraphs = tuple(self._subgraph(m.Subgraphs(i), codes, sizes)
                          for i in range(self._len(m.SubgraphsLength(), "subgraphs")))
        if not subgraphs:
            raise ModelFormatError("model has no subgraphs", path=self.source)
        metadata = {}
        for i in range(self._len(m.MetadataLength(), "metadata")):
            md = m.Metadata(i)
            metadata[self._str(md.Name())] = md.Buffer()
        min_runtime = None
        if "min_runtime_version" in metadata:
            idx = metadata["min_runtime_version"]
            if 0 <= idx < len(buffers):
                raw = bytes(self._buffer_bytes(buffers[idx]))
                min_runtime = raw.split(b"\0", 1)[0].decode("ascii", "replace") or None
        signatures = tuple(self._signature(m.SignatureDefs(i), subgraphs)
                           for i in range(self._len(m.SignatureDefsLength(), "signature_defs")))
        return TFLiteModel(source=self.source, size=len(self.data), schema_version=m.Version(),
                           description=self._str(m.Description()), subgraphs=subgraphs,
                           signatures=signatures, metadata=metadata, min_runtime_version=min_runtime,
                           raw=self.data, buffer_spans=spans)

    def _buffer_span(self, buf) -> tuple[int, int]:
        """(start, length) of inline buffer data; (0, 0) when empty or stored outside."""
        n = self._len(buf.DataLength(), "buffer data")
        if not n:
            return (0, 0)
        start = buf._tab.Vector(buf._tab.Offset(4))
        if start + n > len(self.data):
            raise ModelFormatError("buffer data runs past the end of the file: truncated",
                                   path=self.source)
        return (start, n)

    def _buffer_bytes(self, buf) -> bytes:
        start, n = self._buffer_span(buf)
        return self.data[start:start + n]

    def _opcode(self, oc) -> tuple[int, str | None, int]:
        # Old files only set the deprecated int8 field; new ones put codes >127 in builtin_code.
        code = max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode()))
        custom = self._str(oc.CustomCode()) or None
        return code, custom, int(oc.Version())

    def _subgraph(self, sg, codes, sizes) -> Subgraph:
        tensors = tuple(self._tensor(i, sg.Tensors(i), sizes)
                        for i in range(self._len(sg.TensorsLength(), "tensors")))
        ops = []
        for i in range(self._len(sg.OperatorsLength(), "operators")):
            op = sg.Operators(i)
            idx = op.OpcodeIndex()
            if not 0 <= idx < len(codes):
                raise ModelFormatError(f"operator {i} uses opcode index {idx}, but the model has "
                                       f"{len(codes)} operator codes: corrupt", path=self.source)
            code, custom, version = codes[idx]
            name = f"CUSTOM:{custom}" if code == self.tfl.BuiltinOperator.CUSTOM else builtin_op_name(code)
            inputs = self._vector(op, "Inputs", "operator inputs")
            outputs = self._vector(op, "Outputs", "operator outputs")
            for t in inputs + outputs:
                if t >= len(tensors) or t < -1:  # -1 marks an omitted optional input
                    raise ModelFormatError(f"operator {i} ({name}) refers to tensor {t}, but the "
                                           f"subgraph has {len(tensors)}: corrupt", path=self.source)
            ops.append(Operator(index=i, op=name, builtin_code=code, version=version,
                                inputs=inputs, outputs=outputs, custom_code=custom,
                                options=self._options(op)))
        io_in = self._vector(sg, "Inputs", "subgraph inputs")
        io_out = self._vector(sg, "Outputs", "subgraph outputs")
        for t in io_in + io_out:
            if not 0 <= t < len(tensors):
                raise ModelFormatError(f"subgraph input/output tensor {t} does not exist: corrupt",
                                       path=self.source)
        return Subgraph(name=self._str(sg.Name()), tensors=tensors, operators=tuple(ops),
                        inputs=io_in, outputs=io_out)

    def _options(self, op) -> dict[str, object]:
        kind = op.BuiltinOptionsType()
        name = _enum_names("BuiltinOptions").get(kind)
        table = op.BuiltinOptions() if kind else None
        if not name or table is None:
            return {}
        cls = getattr(self.tfl, name, None)
        if cls is None:
            return {}
        obj = cls()
        obj.Init(table.Bytes, table.Pos)
        out: dict[str, object] = {}
        for getter in _scalar_getters(cls):
            value = getattr(obj, getter)()
            if getter == "FusedActivationFunction":
                value = _enum_names("ActivationFunctionType").get(value, value)
            elif getter == "Padding":
                value = _enum_names("Padding").get(value, value)
            out[getter] = value
        return out

    def _tensor(self, index: int, t, sizes) -> Tensor:
        shape = self._vector(t, "Shape", "tensor shape")
        sig = None
        if not t.ShapeSignatureIsNone():
            sig = self._vector(t, "ShapeSignature", "tensor shape_signature")
        buf = int(t.Buffer())
        if not 0 <= buf < max(len(sizes), 1):
            raise ModelFormatError(f"tensor {index} uses buffer {buf}, but the model has {len(sizes)}",
                                   path=self.source)
        quant = None
        q = t.Quantization()
        if q is not None and q.ScaleLength():
            scales = self._vector(q, "Scale", "scales")
            zps = self._vector(q, "ZeroPoint", "zero points")
            quant = Quantization(scales=scales, zero_points=zps or (0,) * len(scales),
                                 axis=int(q.QuantizedDimension()))
        return Tensor(index=index, name=self._str(t.Name()), dtype=tensor_type_name(t.Type()),
                      shape=shape, shape_signature=sig, buffer=buf,
                      data_bytes=sizes[buf] if sizes else 0, quantization=quant,
                      is_variable=bool(t.IsVariable()))

    def _signature(self, s, subgraphs) -> Signature:
        def pairs(length, get):
            out = []
            for j in range(self._len(length, "signature tensors")):
                tm = get(j)
                out.append((self._str(tm.Name()), int(tm.TensorIndex())))
            return tuple(out)

        idx = int(s.SubgraphIndex())
        if not 0 <= idx < len(subgraphs):
            raise ModelFormatError(f"signature refers to subgraph {idx}, which does not exist",
                                   path=self.source)
        return Signature(key=self._str(s.SignatureKey()), subgraph=idx,
                         inputs=pairs(s.InputsLength(), s.Inputs),
                         outputs=pairs(s.OutputsLength(), s.Outputs))
