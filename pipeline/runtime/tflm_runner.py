"""Run samples through the TFLM Python interpreter in a separate process.

The interpreter can abort() the whole process, so it never runs inside the pipeline. Used for
the firmware's golden outputs (the same library the device runs) and by verification. A
stateful model (variable tensors: a fused LSTM's h and c, SVDF's state) is reset before every
sample (`Interpreter.reset()`): each sample is computed as a device computes it after a reset,
never from the state the previous sample left.

Worker protocol: `python -m pipeline.runtime.tflm_runner MODEL IN.npz OUT.npz ARENA OUTPUTS`; IN holds
`input_<i>` arrays (N, ...) in the model's input dtypes, OUT gets `output_<i>` arrays.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .. import PROJECT_DIR
from ..errors import PipelineError

if TYPE_CHECKING:
    import numpy as np

_TIMEOUT_S = 600


def run_tflm(model_path: Path, inputs: list[np.ndarray], arena_bytes: int | None = None) -> list[np.ndarray]:
    """Outputs per model output, each (N, ...), for N samples given per model input."""
    return run_tflm_timed(model_path, inputs, arena_bytes)[0]


def run_tflm_timed(model_path: Path, inputs: list[np.ndarray],
                   arena_bytes: int | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Outputs as `run_tflm`, and the seconds each invoke took."""
    import numpy as np

    from ..tflite_model import read_model

    outputs = len(read_model(model_path).main.outputs)
    with tempfile.TemporaryDirectory(prefix="tflm-run-") as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(src, **{f"input_{i}": a for i, a in enumerate(inputs)})
        cmd = [sys.executable, "-m", "pipeline.runtime.tflm_runner", str(model_path), str(src), str(dst),
               str(arena_bytes or 0), str(outputs)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S,
                                  cwd=PROJECT_DIR, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise PipelineError(f"the TFLM interpreter did not finish within {_TIMEOUT_S} s",
                                path=model_path, field="tflm") from None
        if proc.returncode != 0 or not dst.is_file():
            from .process import signal_name

            raise PipelineError(f"the TFLM interpreter failed ({signal_name(proc.returncode)}): "
                                f"{explain_tflm_error(proc.stderr)}", path=model_path, field="tflm",
                                fix="run `invoke check` on the model to see which op is the problem")
        with np.load(dst) as out:
            return [out[f"output_{i}"] for i in range(outputs)], out["seconds"]


_TFLM_ERROR_PATTERNS = (
    r"Didn't find op for builtin opcode '[^']+'",
    r"Node \S+ \(number \d+\) failed to (?:prepare|invoke)[^\n]*",
    r"\S+\.cc:\d+ [^\n]+ was not true\.?",
    r"Failed to get registration from op code \S+",
)


def explain_tflm_error(stderr: str) -> str:
    found = []
    for pat in _TFLM_ERROR_PATTERNS:
        found += [m.group(0).strip() for m in re.finditer(pat, stderr)]
    if found:
        return "; ".join(dict.fromkeys(found))
    lines = [l for l in stderr.strip().splitlines() if l.strip()]
    return lines[-1][:300] if lines else "no message"


def _main(model: str, src: str, dst: str, arena: int, count: int) -> int:
    import numpy as np
    from tflite_micro.python.tflite_micro import runtime

    from ..model import is_stateful
    from ..tflite_model import parse_model

    data = Path(model).read_bytes()
    stateful = is_stateful(parse_model(data, source=model))
    interp = runtime.Interpreter.from_bytes(data, arena_size=arena or None)
    with np.load(src) as f:
        inputs = [f[f"input_{i}"] for i in range(len(f.files))]
    import time

    outputs: list[list[np.ndarray]] = [[] for _ in range(count)]
    seconds = []
    for n in range(len(inputs[0])):
        if stateful:
            interp.reset()
        for i, arr in enumerate(inputs):
            interp.set_input(arr[n:n + 1], i)
        start = time.perf_counter()
        interp.invoke()
        seconds.append(time.perf_counter() - start)
        for k in range(count):
            outputs[k].append(np.array(interp.get_output(k))[0])
    np.savez(dst, seconds=np.array(seconds), **{f"output_{k}": np.stack(v) for k, v in enumerate(outputs)})
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
