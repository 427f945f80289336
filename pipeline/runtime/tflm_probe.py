"""Worker run in a subprocess: load and invoke a model in the TFLM Python interpreter and find
the smallest tensor arena that works. Run apart from the pipeline because TFLM can abort() or
segfault the whole process (tiny arenas, some unrepresentable quantizations).

Prints one JSON object per line: {"probe": n, "ok": bool} for each try, then {"result": ...}.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

SAFE_FLOOR = 256  # below ~100 bytes the allocator's own bookkeeping segfaults


def emit(obj) -> None:
    print(json.dumps(obj), flush=True)


def runs(runtime, data: bytes, arena: int, inputs: int) -> bool:
    try:
        interp = runtime.Interpreter.from_bytes(data, arena_size=arena)
        for i in range(inputs):
            d = interp.get_input_details(i)
            interp.set_input(np.zeros(d["shape"], dtype=d["dtype"]), i)
        interp.invoke()
        return True
    except RuntimeError:
        return False


def runs_apart(runtime, data: bytes, arena: int, inputs: int) -> bool:
    """`runs` in a forked child: an arena too small can segfault the allocator, and the child's
    crash then answers "too small" without a new interpreter process (a Python start and the
    TFLM import, about 0.6 s each, once per crash before). Where there is no fork, in-process:
    the caller restarts a crashed worker from the lines it printed."""
    if not hasattr(os, "fork"):
        return runs(runtime, data, arena, inputs)
    pid = os.fork()
    if pid == 0:  # the child: its exit status is the answer; nothing of the parent's is flushed
        try:
            code = 0 if runs(runtime, data, arena, inputs) else 1
        except BaseException:
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def main(path: str, inputs: int, lo: int, hi: int | None, generous: int | None = None) -> int:
    """Search (lo, hi]; without hi, first prove a generous arena works (`generous`, the caller's
    bound from the model's tensors, else 10 x the file, at least 64 KiB)."""
    from tflite_micro.python.tflite_micro import runtime

    data = open(path, "rb").read()
    if hi is None:
        hi = generous or max(10 * len(data), 1 << 16)
        emit({"probe": hi, "ok": None})
        ok = runs(runtime, data, hi, inputs)
        emit({"probe": hi, "ok": ok})
        if not ok:
            emit({"result": {"runs": False, "arena_bytes": None}})
            return 0
    lo = max(lo, SAFE_FLOOR)
    while lo < hi:  # hi always runs
        mid = (lo + hi) // 2
        emit({"probe": mid, "ok": None})  # a crash leaves this line last: mid is too small
        ok = runs_apart(runtime, data, mid, inputs)
        emit({"probe": mid, "ok": ok})
        if ok:
            hi = mid
        else:
            lo = mid + 1
    emit({"result": {"runs": True, "arena_bytes": hi}})
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    # PATH INPUTS LO [HI|none [GENEROUS]]
    hi_arg = args[3] if len(args) > 3 and args[3] != "none" else None
    sys.exit(main(args[0], int(args[1]), int(args[2]), int(hi_arg) if hi_arg else None,
                  int(args[4]) if len(args) > 4 else None))
