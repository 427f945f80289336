"""Run samples through the TFLM Python interpreter in a separate process.

The interpreter can abort() the whole process, so it never runs inside the pipeline. Used for
the firmware's golden outputs (the same library the device runs) and by verification. A
stateful model (variable tensors: a fused LSTM's h and c, SVDF's state) is reset before every
sample (`Interpreter.reset()`): each sample is computed as a device computes it after a reset,
never from the state the previous sample left.

Worker protocol: `python -m pipeline.runtime.tflm_runner MODEL IN.npz OUT.npz ARENA OUTPUTS`; IN holds
`input_<i>` arrays (N, ...) in the model's input dtypes, OUT gets `output_<i>` arrays.

A long-lived worker (`InterpreterProcess`, `... tflm_runner --serve MODEL ARENA`) backs the device
emulator: one interpreter kept across requests, called method by method over a pipe.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .. import PROJECT_DIR
from ..errors import PipelineError
from ..fileio import scratch_dir

if TYPE_CHECKING:
    import numpy as np

_TIMEOUT_S = 600
_ARENA_ALIGNMENT = 16


def host_arena_bytes(model, model_bytes: int) -> int:
    """A tensor arena the host interpreter certainly fits in, from the model alone: every
    non-constant tensor at once, twice (TFLM's planner overlaps them, so they never need more;
    the second copy covers kernels' scratch buffers), plus the TFLM Python interpreter's own
    default (10 x the file, for the per-tensor and per-op bookkeeping), at least 64 KiB. Its
    default alone fails a small model with large activations (500 bytes of file, 8 KB of
    tensors). The host has the memory; the board's arena is the measured one (firmware)."""
    import numpy as np

    activations = 0
    for sg in model.subgraphs:
        for t in sg.tensors:
            if t.is_constant:
                continue
            try:
                itemsize = np.dtype(t.dtype).itemsize
            except TypeError:  # string, resource, variant: TFLM keeps these out of int8 models
                itemsize = 8
            elements = int(np.prod([max(int(d), 1) for d in t.shape])) if t.shape else 1
            activations += -(-elements * itemsize // _ARENA_ALIGNMENT) * _ARENA_ALIGNMENT
    return max(10 * model_bytes, 1 << 16) + 2 * activations


def run_tflm(model_path: Path, inputs: list[np.ndarray], arena_bytes: int | None = None) -> list[np.ndarray]:
    """Outputs per model output, each (N, ...), for N samples given per model input. The arena
    is `arena_bytes` (a measured one) or `host_arena_bytes`, whichever is larger."""
    return run_tflm_timed(model_path, inputs, arena_bytes)[0]


def run_tflm_timed(model_path: Path, inputs: list[np.ndarray],
                   arena_bytes: int | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Outputs as `run_tflm`, and the seconds each invoke took."""
    import numpy as np

    from ..tflite_model import read_model

    model = read_model(model_path)
    outputs = len(model.main.outputs)
    arena_bytes = max(arena_bytes or 0, host_arena_bytes(model, model_path.stat().st_size))
    with scratch_dir("tflm-run-") as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(src, **{f"input_{i}": a for i, a in enumerate(inputs)})
        cmd = [sys.executable, "-m", "pipeline.runtime.tflm_runner", str(model_path), str(src), str(dst),
               str(arena_bytes), str(outputs)]
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


_CALL = struct.Struct("<I")  # length of one pickled message on the worker's pipes


class InterpreterProcess:
    """The TFLM Python interpreter in a worker process, with the methods the emulator calls on
    it (`set_input`, `invoke`, `get_output`, `reset`). TFLM can abort() or segfault on a model
    or an input: that ends the worker, never the caller. The call then raises RuntimeError
    (the emulator answers an error frame) and the next call starts a fresh worker, as a board
    reboots. Messages are pickles between this package and its own child, never other input."""

    def __init__(self, model_path: Path, arena_bytes: int | None = None, *, preserve_all_tensors: bool = False):
        self.model_path = Path(model_path)
        self.arena_bytes = arena_bytes
        self.preserve_all_tensors = preserve_all_tensors  # TFLM's kPreserveAllTensors: get_tensor works
        self.proc = None
        self._start()

    def _start(self) -> None:
        self.close()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (open while the worker lives)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.runtime.tflm_runner", "--serve", str(self.model_path),
             str(self.arena_bytes or 0), "preserve" if self.preserve_all_tensors else "plan"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            cwd=PROJECT_DIR)
        status, value = self._receive()
        if status != "ok":
            if status == "error":  # TFLM printed the reason (the missing op, the failed check)
                self.proc.wait()
                value = self._printed() or value
            self.close()
            raise PipelineError(f"the TFLM interpreter cannot load the model: {value}", path=self.model_path,
                                field="--model", fix="run `invoke check --target tflm` on the model")

    def _printed(self) -> str | None:
        """The known TFLM error lines the worker printed so far, or None."""
        self._stderr.seek(0)
        text = self._stderr.read(1 << 16).decode("utf-8", "replace")
        self._stderr.seek(0, os.SEEK_END)
        return explain_tflm_error(text) if text.strip() else None

    def _died(self) -> str:
        """Why the worker ended: its exit (or signal) and what TFLM printed."""
        from .process import signal_name

        code = self.proc.wait()
        return f"the TFLM interpreter crashed ({signal_name(code)}): {self._printed() or 'no message'}"

    def _receive(self, timeout: float = _TIMEOUT_S):
        import pickle
        import select
        import time

        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        data = b""
        need = _CALL.size
        while len(data) < need:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.proc.kill()
                self.proc.wait()
                return "crashed", f"the TFLM interpreter did not answer within {timeout:g} s"
            chunk = os.read(fd, need - len(data))
            if not chunk:
                return "crashed", self._died()
            data += chunk
            if need == _CALL.size and len(data) == need:
                need += _CALL.unpack(data)[0]
        return pickle.loads(data[_CALL.size:])

    def _call(self, name: str, *args):
        import pickle

        if self.proc is None or self.proc.poll() is not None:
            try:
                self._start()  # the previous worker crashed: a fresh interpreter, as after a reset
            except PipelineError as exc:
                raise RuntimeError(exc.problem) from None
        message = pickle.dumps((name, args))
        try:
            self.proc.stdin.write(_CALL.pack(len(message)) + message)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise RuntimeError(self._died()) from None
        status, value = self._receive()
        if status != "ok":
            raise RuntimeError(value)
        return value

    def set_input(self, array, index: int) -> None:
        self._call("set_input", array, index)

    def invoke(self) -> None:
        self._call("invoke")

    def get_output(self, index: int):
        return self._call("get_output", index)

    def reset(self) -> None:
        self._call("reset")

    def get_tensor(self, index: int) -> dict:
        """Tensor `index` after the last invoke (needs preserve_all_tensors): tensor_data, dtype, shape."""
        return self._call("get_tensor", index)

    def close(self) -> None:
        """End the worker (closing its stdin ends its loop; a stuck one is killed)."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        try:
            proc.stdin.close()
            proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        proc.stdout.close()
        self._stderr.close()


def _serve(model: str, arena: int, planning: str = "plan") -> int:
    """The worker side of `InterpreterProcess`: load, say so, then answer calls until stdin ends.
    Its stdout becomes a private pipe: whatever the C++ side prints goes to stderr."""
    import pickle

    import numpy as np
    from tflite_micro.python.tflite_micro import runtime

    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = sys.stdin.buffer

    def send(status: str, value=None) -> None:
        message = pickle.dumps((status, value))
        replies.write(_CALL.pack(len(message)) + message)
        replies.flush()

    try:
        config = (runtime.InterpreterConfig.kPreserveAllTensors if planning == "preserve"
                  else runtime.InterpreterConfig.kAllocationRecording)
        interp = runtime.Interpreter.from_bytes(Path(model).read_bytes(), arena_size=arena or None,
                                                intrepreter_config=config)
    except (RuntimeError, ValueError, OSError) as exc:
        send("error", explain_tflm_error(str(exc)))
        return 1
    send("ok")
    while True:
        header = requests.read(_CALL.size)
        if len(header) < _CALL.size:
            return 0  # the emulator closed the pipe
        name, args = pickle.loads(requests.read(_CALL.unpack(header)[0]))
        try:
            if name == "set_input":
                interp.set_input(*args)
                send("ok")
            elif name == "invoke":
                interp.invoke()
                send("ok")
            elif name == "get_output":
                send("ok", np.array(interp.get_output(*args)))
            elif name == "reset":
                interp.reset()
                send("ok")
            elif name == "get_tensor":
                t = interp.GetTensor(*args, 0)
                send("ok", {"tensor_data": np.array(t["tensor_data"]), "dtype": np.dtype(t["dtype"]).name,
                            "shape": [int(d) for d in t["shape"]]})
            else:
                send("error", f"unknown call {name!r}")
        except (RuntimeError, ValueError) as exc:
            send("error", explain_tflm_error(str(exc)))


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


if __name__ == "__main__" and sys.argv[1:2] == ["--serve"]:
    sys.exit(_serve(sys.argv[2], int(sys.argv[3]), *sys.argv[4:5]))
elif __name__ == "__main__":
    sys.exit(_main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
