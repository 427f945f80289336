"""Every op's output tensor, per sample, from LiteRT or the TFLM Python interpreter.

Both interpreters can keep every intermediate tensor alive instead of reusing its memory:
LiteRT with `experimental_preserve_all_tensors=True` (then `get_tensor(i)` for any tensor),
TFLM with `InterpreterConfig.kPreserveAllTensors` (then `GetTensor(i, subgraph)` returns
`{"dtype", "shape", "tensor_data"}`; in the default `kAllocationRecording` mode GetTensor is
refused). Tensor indices are the flatbuffer's, in both.

Each runtime runs in a worker process: TFLM aborts on bad models, and so does LiteRT's
reference resolver (its int8 SOFTMAX Prepare aborts when the input scale is below ~1.5e-8, as
on an untrained MobileNetV2), and an abort must not take the pipeline with it.

Worker protocol: `python -m pipeline.runtime.tensor_capture RUNTIME MODEL IN.npz OUT.npz ARENA`; IN holds
`input_<i>` arrays (N, ...) in the model's input dtypes, OUT gets `t<index>` arrays (N, ...) for
the graph inputs and every op output, and `seconds` (per invoke).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from .. import PROJECT_DIR
from ..errors import PipelineError
from ..fileio import scratch_dir
from ..tflite_model import TFLiteModel, read_model

# runtime name -> what it runs; LiteRT names map to its OpResolverType
RUNTIMES = {
    "litert-ref": "LiteRT, reference kernels (OpResolverType.BUILTIN_REF: the twin of TFLM's)",
    "litert": "LiteRT, optimized built-in kernels without XNNPACK "
              "(OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)",
    # With all tensors preserved, LiteRT hands XNNPACK one op at a time (129 nodes for
    # MobileNetV2's 65 ops), so every op output is real: 1-4 LSB from BUILTIN_REF there.
    "litert-xnnpack": "LiteRT with its default XNNPACK delegate (OpResolverType.BUILTIN), the "
                      "interpreter `LiteRTModel(delegates=True)` evaluates with",
    "tflm": "TFLite Micro Python interpreter, reference kernels (kPreserveAllTensors)",
}
_LITERT_RESOLVERS = {"litert-ref": "BUILTIN_REF", "litert": "BUILTIN_WITHOUT_DEFAULT_DELEGATES",
                     "litert-xnnpack": "BUILTIN"}
_TIMEOUT_S = 600
_ARENA_MARGIN_BYTES = 256 * 1024

TensorValues = dict[int, np.ndarray]  # tensor index -> (N, *shape) in the tensor's own dtype


def captured_tensor_indices(model: TFLiteModel) -> list[int]:
    """Graph inputs and every op output of the main subgraph, in execution order."""
    sg = model.main
    out = list(sg.inputs)
    for op in sg.operators:
        out += [t for t in op.outputs if t >= 0 and t not in out]
    return out


class RuntimeFailed(PipelineError):
    """The runtime could not run the model (it aborted, crashed or hung): another runtime may."""


def capture_tensors(model_path: Path, inputs: list[np.ndarray], runtime: str,
                    arena_bytes: int | None = None) -> TensorValues:
    """Run N samples (`inputs`: one (N, ...) array per model input, in the input dtypes) and
    return every captured tensor. Raises PipelineError when the runtime fails or aborts."""
    if runtime not in RUNTIMES:
        raise PipelineError(f"unknown runtime '{runtime}'", field="runtime",
                            fix=f"use one of {', '.join(RUNTIMES)}")
    model = read_model(model_path)
    wanted = captured_tensor_indices(model)
    arena = arena_bytes or preserve_all_arena_bytes(model)
    with scratch_dir("capture-") as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(src, **{f"input_{i}": a for i, a in enumerate(inputs)})
        cmd = [sys.executable, "-m", "pipeline.runtime.tensor_capture", runtime, str(model_path),
               str(src), str(dst), str(arena)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S,
                                  cwd=PROJECT_DIR, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise RuntimeFailed(f"{runtime} did not finish within {_TIMEOUT_S} s", path=model_path,
                                field=runtime) from None
        if proc.returncode != 0 or not dst.is_file():
            from .process import signal_name
            from .tflm_runner import explain_tflm_error

            raise RuntimeFailed(f"{RUNTIMES[runtime]} failed ({signal_name(proc.returncode)}): "
                                f"{explain_tflm_error(proc.stderr)}", path=model_path, field=runtime,
                                fix="run `invoke check` on the model: it names the ops this runtime "
                                    "lacks and the quantization scales its kernels cannot hold")
        with np.load(dst) as out:
            return {t: out[f"t{t}"] for t in wanted}


def preserve_all_arena_bytes(model: TFLiteModel) -> int:
    """An arena that holds every non-constant tensor at once (nothing is reused when all are
    preserved), plus a margin for TFLM's own bookkeeping and kernel scratch buffers."""
    sizes = {"int8": 1, "uint8": 1, "int16": 2, "float16": 2, "int32": 4, "float32": 4,
             "int64": 8, "bool": 1}
    total = 0
    for t in model.main.tensors:
        if not t.is_constant:
            total += int(np.prod(t.shape or (1,))) * sizes.get(t.dtype, 4) + 16
    return int(total * 1.25) + _ARENA_MARGIN_BYTES


def op_outputs(model: TFLiteModel, tensors: TensorValues) -> dict[int, np.ndarray]:
    """Per op index, its output as (N, *shape); ops with several outputs get them flattened
    and concatenated (N, total), which is what an element-wise comparison needs."""
    out = {}
    for op in model.main.operators:
        arrays = [tensors[t] for t in op.outputs if t >= 0 and t in tensors]
        if not arrays:
            continue
        out[op.index] = arrays[0] if len(arrays) == 1 else \
            np.concatenate([a.reshape(len(a), -1) for a in arrays], axis=1)
    return out


def _main(runtime: str, model_path: str, src: str, dst: str, arena: int) -> int:
    import time

    model = read_model(model_path)
    wanted = captured_tensor_indices(model)
    data = Path(model_path).read_bytes()
    with np.load(src) as f:
        inputs = [f[f"input_{i}"] for i in range(len(f.files))]
    if runtime == "tflm":
        run, get, reset = _tflm(data, model, arena)
    else:
        run, get, reset = _litert(data, model, _LITERT_RESOLVERS[runtime])
    values: dict[int, list[np.ndarray]] = {t: [] for t in wanted}
    seconds = []
    from ..model import is_stateful

    stateful = is_stateful(model)  # each sample from the reset state, as verify runs it
    for n in range(len(inputs[0])):
        if stateful:
            reset()
        start = time.perf_counter()
        run([arr[n:n + 1] for arr in inputs])
        seconds.append(time.perf_counter() - start)
        for t in wanted:
            values[t].append(get(t))
    np.savez(dst, seconds=np.array(seconds), **{f"t{t}": np.stack(v) for t, v in values.items()})
    return 0


def _litert(data: bytes, model: TFLiteModel, resolver: str):
    import warnings

    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    warnings.simplefilter("ignore")  # BUILTIN + preserve_all_tensors warns about memory
    interp = Interpreter(model_content=data, num_threads=1, experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=getattr(OpResolverType, resolver))
    interp.allocate_tensors()
    input_indices = list(model.main.inputs)

    def run(batch):
        for index, arr in zip(input_indices, batch):
            interp.set_tensor(index, arr)
        interp.invoke()

    def get(t):
        return np.array(interp.get_tensor(t))[0]

    return run, get, interp.reset_all_variables


def _tflm(data: bytes, model: TFLiteModel, arena: int):
    from tflite_micro.python.tflite_micro import runtime

    interp = runtime.Interpreter.from_bytes(
        data, arena_size=arena, intrepreter_config=runtime.InterpreterConfig.kPreserveAllTensors)

    def run(batch):
        for i, arr in enumerate(batch):
            interp.set_input(arr, i)
        interp.invoke()

    def get(t):
        # tensor_data is a view of the arena: copy before the next invoke overwrites it
        return np.array(interp.GetTensor(t, 0)["tensor_data"])[0]

    return run, get, interp.reset


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])))
