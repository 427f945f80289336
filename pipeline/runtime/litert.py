"""Run a `.tflite` model on the host with the LiteRT interpreter (`ai-edge-litert`).

Inputs go in as real numbers and outputs come back as real numbers: quantized I/O is
quantized and dequantized here with the model's own scale and zero point, so a float model
and its int8 twin can be compared sample by sample. A stateful model (variable tensors) is
reset before every sample: each is scored on its own, as the device runs it after a reset.

LiteRT's reference kernels (`OpResolverType.BUILTIN_REF`, the twins of TFLM's) run in a worker
process (`run_isolated`): their int8 SOFTMAX aborts in Prepare on tiny input scales (an
untrained MobileNetV2), and an abort must not end the pipeline.
Worker protocol: `python -m pipeline.runtime.litert RESOLVER MODEL IN.npz OUT.npz`; IN holds
`input_<i>` (N, ...) in the model's input dtypes (subgraph input order), OUT gets `output_<k>`
per subgraph output and `seconds` per invoke.
"""

from __future__ import annotations

import numpy as np

from ..data import SampleSet
from ..errors import PipelineError
from ..fileio import scratch_dir
from ..versions import package_version


def litert_version() -> str:
    return package_version("ai-edge-litert")


def quantize_array(x: np.ndarray, dtype, scale: float, zero_point: int) -> np.ndarray:
    info = np.iinfo(dtype)
    q = np.round(x / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize_array(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return (q.astype(np.float32) - zero_point) * scale


class LiteRTModel:
    """`delegates=False` runs TFLite's built-in kernels without the default XNNPACK delegate:
    those match TFLite Micro bit for bit, XNNPACK's int8 kernels can differ by a few LSB."""

    def __init__(self, model_content: bytes, source: str = "model", delegates: bool = True):
        from ..model import is_stateful
        from ..tflite_model import parse_model

        try:
            self.stateful = is_stateful(parse_model(model_content, source=str(source)))
        except PipelineError:
            self.stateful = False  # LiteRT's own load below says what is wrong
        try:
            from ai_edge_litert.interpreter import Interpreter, OpResolverType
        except ImportError:
            raise PipelineError("the LiteRT interpreter is not installed", field="ai-edge-litert",
                                fix="pip install ai-edge-litert") from None
        from .tf import captured_stderr

        try:
            with captured_stderr():  # "Created TensorFlow Lite XNNPACK delegate" and friends
                resolver = OpResolverType.AUTO if delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
                self.interpreter = Interpreter(model_content=model_content, num_threads=1,
                                               experimental_op_resolver_type=resolver)
                if self.interpreter.get_signature_list():
                    runner = self.interpreter.get_signature_runner()
                else:  # models without signatures: key I/O by tensor name, as the reader does
                    runner = _TensorNameRunner(self.interpreter)
        except (ValueError, RuntimeError) as exc:
            raise PipelineError(f"LiteRT cannot load the model: {exc}", path=source) from None
        self.runner = runner
        details = runner.get_input_details()
        self.input_details = details
        self.output_details = runner.get_output_details()

    def run(self, samples: SampleSet, raw: bool = False) -> list[np.ndarray]:
        """Outputs per signature output (in name order), each (N, ...): float32 real values, or
        with `raw` the tensors as the model produced them (quantized integers)."""
        from .tf import captured_stderr

        with captured_stderr():  # XNNPACK announces itself on the first invoke
            outputs = self._run(samples)
        return outputs if raw else self.real(outputs)

    def real(self, raw_outputs: list[np.ndarray]) -> list[np.ndarray]:
        """Raw outputs (in `output_names()` order) as real values, float32."""
        out = []
        for name, y in zip(self.output_names(), raw_outputs):
            d = self.output_details[name]
            if np.issubdtype(d["dtype"], np.integer):
                y = dequantize_array(y, *d["quantization"])
            out.append(np.asarray(y, dtype=np.float32))
        return out

    def output_names(self) -> list[str]:
        """In Keras output order: `output_k` is Keras output k, so names sort by their numbers
        (output_2 before output_10)."""
        from ..evaluation import natural_key

        return sorted(self.output_details, key=natural_key)

    def median_latency_ms(self, samples: SampleSet, runs: int = 20) -> float:
        """Median wall time of one inference on the first sample (after one warm-up)."""
        import time

        feed = self._feed(samples, 0)
        self.runner(**feed)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self.runner(**feed)
            times.append(time.perf_counter() - start)
        return round(1000 * float(np.median(times)), 4)

    def _feed(self, samples: SampleSet, i: int) -> dict[str, np.ndarray]:
        feed = {}
        for name, arr in samples.batch(i).items():
            d = self.input_details[name]
            if np.issubdtype(d["dtype"], np.integer):
                scale, zp = d["quantization"]
                arr = quantize_array(arr, d["dtype"], scale, zp)
            feed[name] = arr.astype(d["dtype"], copy=False)
        return feed

    def _run(self, samples: SampleSet) -> list[np.ndarray]:
        from ..console import Progress

        outputs: dict[str, list[np.ndarray]] = {name: [] for name in self.output_names()}
        with Progress(f"evaluating {samples.count} samples", samples.count) as progress:
            for i in range(samples.count):
                self._run_one(samples, i, outputs)
                progress.advance()
        return [np.stack(v) for v in outputs.values()]

    def _run_one(self, samples: SampleSet, i: int, outputs: dict[str, list[np.ndarray]]) -> None:
        if self.stateful:
            self.interpreter.reset_all_variables()
        result = self.runner(**self._feed(samples, i))
        for name in outputs:
            outputs[name].append(np.asarray(result[name])[0])


class _TensorNameRunner:
    """The signature-runner interface over plain tensor indices."""

    def __init__(self, interpreter):
        interpreter.allocate_tensors()
        self.interpreter = interpreter
        self.inputs = {d["name"]: d for d in interpreter.get_input_details()}
        self.outputs = {d["name"]: d for d in interpreter.get_output_details()}

    def get_input_details(self):
        return self.inputs

    def get_output_details(self):
        return self.outputs

    def __call__(self, **feed):
        for name, value in feed.items():
            self.interpreter.set_tensor(self.inputs[name]["index"], value)
        self.interpreter.invoke()
        return {name: self.interpreter.get_tensor(d["index"]) for name, d in self.outputs.items()}


# --- LiteRT in a worker process --------------------------------------------------------------------

_TIMEOUT_S = 600
RESOLVERS = ("BUILTIN_REF", "BUILTIN_WITHOUT_DEFAULT_DELEGATES", "BUILTIN")


def run_isolated(model_path, inputs: list[np.ndarray], resolver: str = "BUILTIN_REF") -> tuple[list[np.ndarray], np.ndarray]:
    """Raw outputs per subgraph output, each (N, ...), and the seconds of each invoke, from
    LiteRT with `resolver` in a worker process. Raises PipelineError when it fails or aborts."""
    import subprocess
    import sys
    from pathlib import Path

    from .. import PROJECT_DIR
    from .process import signal_name

    with scratch_dir("litert-run-") as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(src, **{f"input_{i}": a for i, a in enumerate(inputs)})
        cmd = [sys.executable, "-m", "pipeline.runtime.litert", resolver, str(model_path), str(src), str(dst)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S, cwd=PROJECT_DIR,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise PipelineError(f"LiteRT ({resolver}) did not finish within {_TIMEOUT_S} s", path=model_path,
                                field="litert") from None
        if proc.returncode != 0 or not dst.is_file():
            from .tflm_runner import explain_tflm_error

            raise PipelineError(f"LiteRT ({resolver}) failed ({signal_name(proc.returncode)}): "
                                f"{explain_tflm_error(proc.stderr)}", path=model_path, field="litert",
                                fix="run `invoke check` on the model: it names the ops and the quantization "
                                    "scales the kernels cannot hold")
        with np.load(dst) as out:
            count = len([k for k in out.files if k.startswith("output_")])
            return [out[f"output_{k}"] for k in range(count)], out["seconds"]


def _worker(resolver: str, model_path: str, src: str, dst: str) -> int:
    import time
    import warnings

    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from ..model import is_stateful
    from ..tflite_model import read_model

    warnings.simplefilter("ignore")
    stateful = is_stateful(read_model(model_path))
    interp = Interpreter(model_path=model_path, num_threads=1,
                         experimental_op_resolver_type=getattr(OpResolverType, resolver))
    interp.allocate_tensors()
    ins = interp.get_input_details()
    outs = interp.get_output_details()
    with np.load(src) as f:
        inputs = [f[f"input_{i}"] for i in range(len(ins))]
    results: list[list[np.ndarray]] = [[] for _ in outs]
    seconds = []
    for n in range(len(inputs[0])):
        if stateful:
            interp.reset_all_variables()
        for d, arr in zip(ins, inputs):
            interp.set_tensor(d["index"], arr[n:n + 1])
        start = time.perf_counter()
        interp.invoke()
        seconds.append(time.perf_counter() - start)
        for k, d in enumerate(outs):
            results[k].append(np.array(interp.get_tensor(d["index"]))[0])
    np.savez(dst, seconds=np.array(seconds), **{f"output_{k}": np.stack(v) for k, v in enumerate(results)})
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_worker(*sys.argv[1:5]))
