"""Golden vectors: the inputs a deployment is tested with and the outputs the TFLite Micro
interpreter (the library the MCU runs) computes for them. Made once here and used by every
consumer: the firmware embeds them, HIL runs them on a device, so both check the same thing.
For a stateful model each vector's expected output is computed from the reset state (the TFLM
worker resets before every sample): the firmware must reset before each vector too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .tflite_model import TFLiteModel

_NP = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "int32": np.int32, "float32": np.float32}


@dataclass(frozen=True)
class GoldenVectors:
    names: list[str]  # one per vector, for the people reading the self-test
    inputs: list[np.ndarray]  # per model input: (N, ...) in the input's own dtype
    expected: list[np.ndarray]  # per model output: (N, ...) as the TFLM interpreter computed it
    source: str  # where the inputs came from

    def __len__(self) -> int:
        return len(self.names)


def recorded_input_order(model_path: Path) -> list[str] | None:
    """The Keras input order quantize recorded for this model file: tuples from
    `module:function` follow it (a .tflite keeps no Keras order). Read from quantize's stage
    record when it made this very file (during `invoke deploy` the report is written at the
    end), else from the report's `quantize` section."""
    import json

    from .cache import STAGE_DIR, content_hash
    from .report import read_report

    sections = []
    try:
        record = json.loads((model_path.parent / STAGE_DIR / "quantize.json").read_text())
        if (record.get("outputs") or {}).get(model_path.name) == content_hash(model_path):
            sections.append(record.get("result") or {})
    except (OSError, ValueError, AttributeError):
        pass
    sections.append(read_report(model_path.parent).get("quantize") or {})
    for q in sections:
        order = q.get("keras_inputs") if isinstance(q, dict) else None
        if isinstance(order, list) and all(isinstance(n, str) for n in order):
            return order
    return None


def golden_inputs(model: TFLiteModel, model_path: Path, count: int, data: str | None,
                  input_order: list[str] | None = None) -> tuple[list[np.ndarray], list[str], str]:
    """Quantized inputs: `data` samples, the demo's test digits, or seeded random values.
    `input_order`: the Keras input order when the caller has it (deploy: from quantize's result),
    else the one recorded beside the model."""
    from . import demo
    from .data import load_samples
    from .model import TensorSpec
    from .runtime.litert import quantize_array

    tensors = model.main.input_tensors()
    specs = [TensorSpec(name, t.shape, "float32") for name, t in zip(model.input_names(), tensors)]
    real = None
    if data:
        samples = load_samples(data, specs, limit=count, option="--data",
                               tuple_order=input_order or recorded_input_order(model_path))
        real, source = [samples.inputs[s.name] for s in specs], data
        names = [f"{Path(data).name}[{i}]" for i in range(samples.count)]
    elif demo.is_demo_model(model_path, [s.sample_shape for s in specs]):
        samples = demo.split_samples("test", specs, limit=count)
        real, source = [samples.inputs[s.name] for s in specs], samples.source
        names = [f"test[{i}] digit {int(label)}" for i, label in enumerate(samples.labels)]
    if real is not None:
        quantized = [quantize_array(r, _NP[t.dtype], float(t.scale or 1.0), int(t.zero_point or 0))
                     if t.dtype != "float32" else r.astype(np.float32) for r, t in zip(real, tensors)]
        return quantized, names, source
    rng = np.random.default_rng(0)
    quantized = []
    for t in tensors:
        if np.issubdtype(_NP[t.dtype], np.floating):  # float I/O around a quantized model: values in [-1, 1)
            quantized.append(rng.uniform(-1.0, 1.0, size=(count, *t.shape[1:])).astype(_NP[t.dtype]))
            continue
        info = np.iinfo(_NP[t.dtype])
        quantized.append(rng.integers(info.min, info.max + 1, size=(count, *t.shape[1:]), dtype=_NP[t.dtype]))
    return quantized, [f"random[{i}] seed 0" for i in range(count)], "seeded random values (no --data given)"


def golden_vectors(model: TFLiteModel, model_path: Path, count: int, data: str | None, *,
                   input_order: list[str] | None = None) -> GoldenVectors:
    from .runtime.tflm_runner import run_tflm

    inputs, names, source = golden_inputs(model, model_path, count, data, input_order)
    return GoldenVectors(names=names, inputs=inputs, expected=run_tflm(model_path, inputs), source=source)
