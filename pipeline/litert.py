"""Run a `.tflite` model on the host with the LiteRT interpreter (`ai-edge-litert`).

Inputs go in as real numbers and outputs come back as real numbers: quantized I/O is
quantized and dequantized here with the model's own scale and zero point, so a float model
and its int8 twin can be compared sample by sample.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import numpy as np

from .data import SampleSet
from .errors import PipelineError


def litert_version() -> str:
    try:
        return f"ai-edge-litert {version('ai-edge-litert')}"
    except PackageNotFoundError:
        return "ai-edge-litert (not installed)"


def quantize_array(x: np.ndarray, dtype, scale: float, zero_point: int) -> np.ndarray:
    info = np.iinfo(dtype)
    q = np.round(x / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize_array(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return (q.astype(np.float32) - zero_point) * scale


class LiteRTModel:
    def __init__(self, model_content: bytes, source: str = "model"):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise PipelineError("the LiteRT interpreter is not installed", field="ai-edge-litert",
                                fix="pip install ai-edge-litert") from None
        from .tf_runtime import captured_stderr

        try:
            with captured_stderr():  # "Created TensorFlow Lite XNNPACK delegate" and friends
                self.interpreter = Interpreter(model_content=model_content, num_threads=1)
                runner = self.interpreter.get_signature_runner()
        except (ValueError, RuntimeError) as exc:
            raise PipelineError(f"LiteRT cannot load the model: {exc}", path=source) from None
        self.runner = runner
        details = runner.get_input_details()
        self.input_details = details
        self.output_details = runner.get_output_details()

    def run(self, samples: SampleSet) -> list[np.ndarray]:
        """Outputs per signature output (in name order), each (N, ...) float32."""
        from .tf_runtime import captured_stderr

        with captured_stderr():  # XNNPACK announces itself on the first invoke
            return self._run(samples)

    def _run(self, samples: SampleSet) -> list[np.ndarray]:
        from .progress import Progress

        outputs: dict[str, list[np.ndarray]] = {name: [] for name in sorted(self.output_details)}
        with Progress(f"evaluating {samples.count} samples", samples.count) as progress:
            for i in range(samples.count):
                self._run_one(samples, i, outputs)
                progress.advance()
        return [np.stack(v) for v in outputs.values()]

    def _run_one(self, samples: SampleSet, i: int, outputs: dict[str, list[np.ndarray]]) -> None:
        feed = {}
        for name, arr in samples.batch(i).items():
            d = self.input_details[name]
            if np.issubdtype(d["dtype"], np.integer):
                scale, zp = d["quantization"]
                arr = quantize_array(arr, d["dtype"], scale, zp)
            feed[name] = arr.astype(d["dtype"], copy=False)
        result = self.runner(**feed)
        for name in outputs:
            y = result[name]
            d = self.output_details[name]
            if np.issubdtype(d["dtype"], np.integer):
                y = dequantize_array(y, *d["quantization"])
            outputs[name].append(np.asarray(y, dtype=np.float32)[0])
