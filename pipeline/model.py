"""The small typed records passed between stages; each serialises to its `report.json` keys here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .tflite_model import Tensor

# Quantization modes. Only the first two are deployable; the others exist so users can see what
# full-integer quantization costs against the float16 and dynamic-range alternatives.
MODES = ("int8", "int16x8", "dynamic", "float16")
DEPLOYABLE_MODES = {"int8": ("edgetpu", "tflm"), "int16x8": ("tflm",)}
IO_TYPES = ("int8", "uint8")


def quantized_file_name(mode: str) -> str:
    return f"model_{mode}.tflite"


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as a user sees it: the name they key data by, shape, dtype and
    the affine quantization `real = scale * (q - zero_point)` when it is quantized."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float | None = None
    zero_point: int | None = None

    @classmethod
    def from_tensor(cls, tensor: Tensor, name: str | None = None) -> TensorSpec:
        return cls(name=name or tensor.name, shape=tensor.shape, dtype=tensor.dtype,
                   scale=tensor.scale, zero_point=tensor.zero_point)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample: the model's shape without its batch dimension."""
        return self.shape[1:]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "scale": self.scale, "zero_point": self.zero_point}


@dataclass(frozen=True)
class WeightQuantization:
    tensor: str
    shape: tuple[int, ...]
    dtype: str
    granularity: str  # "per-channel" | "per-tensor"
    channels: int
    axis: int | None

    def to_json(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "shape": list(self.shape), "dtype": self.dtype,
                "granularity": self.granularity, "channels": self.channels, "axis": self.axis}


@dataclass(frozen=True)
class Evaluation:
    """Float vs quantized model on the same samples, both run in the LiteRT interpreter (float:
    default kernels; quantized: the built-in kernels without delegates, the Edge TPU's CPU
    model). `outputs` holds every output's task and metrics (`pipeline.evaluation`); the flat
    accuracy fields are those of the first classification output (None without one)."""

    samples: int
    source: str
    labelled: bool
    interpreter: str
    float_accuracy: float | None
    quantized_accuracy: float | None
    top1_agreement: float | None
    max_abs_error: float
    mean_abs_error: float
    outputs: tuple[dict[str, Any], ...] = ()

    @property
    def accuracy_drop_points(self) -> float | None:
        if self.float_accuracy is None or self.quantized_accuracy is None:
            return None
        return round(100 * (self.float_accuracy - self.quantized_accuracy), 3)

    def to_json(self) -> dict[str, Any]:
        return {"samples": self.samples, "source": self.source, "labelled": self.labelled,
                "interpreter": self.interpreter, "float_accuracy": self.float_accuracy,
                "quantized_accuracy": self.quantized_accuracy,
                "accuracy_drop_points": self.accuracy_drop_points,
                "top1_agreement": self.top1_agreement, "max_abs_error": self.max_abs_error,
                "mean_abs_error": self.mean_abs_error, "outputs": list(self.outputs)}


@dataclass(frozen=True)
class QuantizeResult:
    name: str
    mode: str
    io_type: str | None
    source_model: str
    output_dir: Path
    float_model: Path
    quantized_model: Path
    float_bytes: int
    quantized_bytes: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    weights: tuple[WeightQuantization, ...]
    calibration: dict[str, Any]
    evaluation: Evaluation | None
    tool_versions: dict[str, str] = field(default_factory=dict)
    labels: tuple[str, ...] | None = None
    keras_inputs: tuple[str, ...] | None = None  # Keras input order (tuples follow it); None: unknown
    keras_outputs: tuple[str, ...] | None = None  # Keras output names; signature output_k is output k
    float_ops: tuple[dict[str, Any], ...] = ()  # ops left in float: op, Keras layer, replacement
    layer_fixes: tuple[dict[str, Any], ...] = ()  # float ops and ops no target has a kernel for
    rewrites: tuple[dict[str, Any], ...] = ()  # changes made to the model before export (unroll)
    op_layers: tuple[dict[str, Any], ...] = ()  # per op of the quantized model: its Keras layer
    quantizer: dict[str, Any] | None = None  # which of TF's quantizers made the model, and why

    @property
    def deployable_to(self) -> tuple[str, ...]:
        return DEPLOYABLE_MODES.get(self.mode, ())

    @property
    def size_ratio(self) -> float:
        return round(self.quantized_bytes / self.float_bytes, 4)

    def to_json(self) -> dict[str, Any]:
        per_channel = sum(w.granularity == "per-channel" for w in self.weights)
        return {
            "mode": self.mode,
            "io_type": self.io_type,
            "deployable_to": list(self.deployable_to),
            "source_model": self.source_model,
            "files": {"float": {"path": self.float_model.name, "bytes": self.float_bytes},
                      "quantized": {"path": self.quantized_model.name, "bytes": self.quantized_bytes}},
            "size_ratio": self.size_ratio,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "weights": {"per_channel": per_channel, "per_tensor": len(self.weights) - per_channel,
                        "tensors": [w.to_json() for w in self.weights]},
            "calibration": self.calibration,
            "evaluation": self.evaluation.to_json() if self.evaluation else None,
            "labels": list(self.labels) if self.labels else None,
            "keras_inputs": list(self.keras_inputs) if self.keras_inputs is not None else None,
            "keras_outputs": list(self.keras_outputs) if self.keras_outputs is not None else None,
            "float_ops": list(self.float_ops),
            "layer_fixes": list(self.layer_fixes),
            "rewrites": list(self.rewrites),
            "op_layers": list(self.op_layers),
            "quantizer": self.quantizer,
            "fully_integer": not self.float_ops,
            "tool_versions": self.tool_versions,
        }


@dataclass(frozen=True)
class CompileOptions:
    min_runtime_version: int | None = None
    num_segments: int | None = None
    intermediate_tensors: str | None = None
    enable_multiple_subgraphs: bool = False
    search_delegate: bool = False
    delegate_search_step: int | None = None
    timeout_sec: int | None = None  # the compiler's own timer (v16)

    def arguments(self, out_dir: Path) -> list[str]:
        args = ["--out_dir", str(out_dir), "--show_operations"]
        if self.min_runtime_version is not None:
            args += ["--min_runtime_version", str(self.min_runtime_version)]
        if self.num_segments is not None:
            args += ["--num_segments", str(self.num_segments)]
        if self.intermediate_tensors:
            args += ["--intermediate_tensors", self.intermediate_tensors]
        if self.enable_multiple_subgraphs:
            args.append("--enable_multiple_subgraphs")
        if self.search_delegate:
            args.append("--search_delegate")
        if self.delegate_search_step is not None:
            args += ["--delegate_search_step", str(self.delegate_search_step)]
        if self.timeout_sec is not None:
            args += ["--timeout_sec", str(self.timeout_sec)]
        return args


@dataclass(frozen=True)
class Thresholds:
    """What `verify` requires, per output and per target (each measured on the target's own
    runtime against the float model; README "Verification" has the evidence for the defaults):
    - LiteRT's reference kernels and TFLM may differ by `max_lsb_litert_vs_tflm` steps at 8 bits
      (scaled by 2^(bits-8) for 16-bit outputs): measured on the zoo, every difference starts at
      a FULLY_CONNECTED that rounds 1 LSB apart in the two; feed-forward nets grow it to at most
      9 LSB at a softmax output, a 16-step GRU to 8, a 16-step int8 LSTM to 26; a corrupted
      kernel input differs by 100-200 at that op (32 is an eighth of the int8 range);
    - classification: top-1 agreement with float, and (with labels) the accuracy drop in points;
    - regression / reconstruction: RMSE relative to the float output's spread, the share of
      float values clipped at the quantized output's range, and (anomaly labels) the AUC drop."""

    max_lsb_litert_vs_tflm: int = 32
    min_top1_agreement: float = 0.95
    max_accuracy_drop_points: float = 1.0
    max_error_vs_spread: float = 0.1
    max_clipped_fraction: float = 0.01
    max_auc_drop: float = 0.01

    def to_json(self) -> dict[str, Any]:
        return {"max_lsb": self.max_lsb_litert_vs_tflm, "min_agreement": self.min_top1_agreement,
                "max_drop": self.max_accuracy_drop_points, "max_rel_error": self.max_error_vs_spread,
                "max_clipped": self.max_clipped_fraction, "max_auc_drop": self.max_auc_drop}


# Bits of an integer tensor type: LSB tolerances are given at 8 bits and scaled by 2^(bits-8).
DTYPE_BITS = {"int8": 8, "uint8": 8, "int16": 16, "int32": 32}


def quantization_scheme(model) -> str:
    """What a user calls the model: `int16x8` when most quantized activations are int16 (an int8
    LSTM's int16 cell state does not make it one), `int8` when they are 8-bit, `float` when
    nothing is quantized. Named once here: check, verify and the report use it."""
    counts = {"int8": 0, "int16": 0}
    for t in model.main.tensors:
        if t.is_constant or not t.quantization:
            continue
        if t.dtype in ("int8", "uint8"):
            counts["int8"] += 1
        elif t.dtype == "int16":
            counts["int16"] += 1
    if not counts["int8"] and not counts["int16"]:
        return "float"
    return "int16x8" if counts["int16"] > counts["int8"] else "int8"


def refuse_float_model(model, option: str = "--model") -> None:
    """Firmware, HIL and the emulator run a quantized model (the golden vectors, the C types of
    the I/O and the device's arithmetic are integer): a model in which nothing is quantized is
    refused with the fix, before any work, instead of failing somewhere inside."""
    from .errors import NotDeployableError

    if quantization_scheme(model) == "float":
        raise NotDeployableError("the model is not quantized (a float model: no int8/int16 activations)",
                                 path=model.source, field=option,
                                 fix="pass the int8 model `invoke quantize` writes (model_int8.tflite)")


def is_stateful(model) -> bool:
    """The model keeps state across invokes in variable tensors (a fused LSTM's h and c, SVDF's
    activation state): run sample by sample, each sample must start from the reset state, or
    every output after the first depends on the samples before it."""
    return any(t.is_variable for sg in model.subgraphs for t in sg.tensors)
