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
    """Float vs quantized model on the same samples, both run in the LiteRT interpreter."""

    samples: int
    source: str
    labelled: bool
    interpreter: str
    float_accuracy: float | None
    quantized_accuracy: float | None
    top1_agreement: float
    max_abs_error: float
    mean_abs_error: float

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
                "mean_abs_error": self.mean_abs_error}


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
    """Defaults: the int8 model must match across interpreters exactly, keep top-1 with the
    float model on 95% of samples, and lose at most 1 accuracy point."""

    max_lsb_litert_vs_tflm: int = 0
    min_top1_agreement: float = 0.95
    max_accuracy_drop_points: float = 1.0
