"""A real Edge TPU, through Coral's own pycoral (never the unrelated PyPI package of that name):
whether one is attached, and the same inputs through it and through the CPU int8 model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def edgetpu_device_status() -> dict[str, Any]:
    """A real Edge TPU through Coral's own pycoral (never the unrelated PyPI package)."""
    try:
        from pycoral.utils import edgetpu  # type: ignore[import-not-found]
    except ImportError:
        return {"present": False, "reason": "pycoral (Coral's package) is not installed"}
    if not hasattr(edgetpu, "list_edge_tpus") or not hasattr(edgetpu, "make_interpreter"):
        return {"present": False, "reason": "the installed 'pycoral' is not Coral's package"}
    devices = edgetpu.list_edge_tpus()
    if not devices:
        return {"present": False, "reason": "no Edge TPU present"}
    return {"present": True, "devices": [str(d) for d in devices]}


DEVICE_RUNS = 20


def run_on_device(compiled: Path, cpu_model: Path) -> dict[str, Any]:
    """Same seeded inputs through the Edge TPU (Coral's pycoral) and the CPU int8 model (LiteRT):
    median latency and the largest output difference in quantized steps (LSB)."""
    import time

    import numpy as np
    from pycoral.utils import edgetpu  # type: ignore[import-not-found]

    from .litert import LiteRTModel

    tpu = edgetpu.make_interpreter(str(compiled))
    tpu.allocate_tensors()
    cpu = LiteRTModel(cpu_model.read_bytes(), str(cpu_model)).interpreter
    cpu.allocate_tensors()
    rng = np.random.default_rng(0)
    worst, times = 0, []
    for _ in range(DEVICE_RUNS):
        feeds = []
        for d in tpu.get_input_details():
            info = np.iinfo(d["dtype"])
            feeds.append(rng.integers(info.min, info.max + 1, size=d["shape"], dtype=d["dtype"]))
        for d, x in zip(tpu.get_input_details(), feeds):
            tpu.set_tensor(d["index"], x)
        for d, x in zip(cpu.get_input_details(), feeds):
            cpu.set_tensor(d["index"], x)
        start = time.perf_counter()
        tpu.invoke()
        times.append(time.perf_counter() - start)
        cpu.invoke()
        for dt, dc in zip(tpu.get_output_details(), cpu.get_output_details()):
            diff = np.abs(tpu.get_tensor(dt["index"]).astype(np.int32) - cpu.get_tensor(dc["index"]).astype(np.int32))
            worst = max(worst, int(diff.max()))
    return {"runs": DEVICE_RUNS, "median_latency_ms": round(1000 * float(np.median(times)), 3),
            "max_output_difference_lsb": worst}

