"""`invoke hil`: the golden vectors on a device over serial, compared with the host TFLM.

The link itself (frames, retries, the emulator) is `pipeline.runtime.device`; the vectors are
the firmware's own (`pipeline.golden`), so a board flashed with the generated project and this
stage agree on what to run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NotDeployableError
from ..runtime.device import DeviceError, HilClient
from .base import Job, Stage


@dataclass
class HilResult:
    port: str
    device: dict[str, str]
    vectors: list[dict[str, Any]] = field(default_factory=list)
    retries: int = 0

    @property
    def passed(self) -> bool:
        return bool(self.vectors) and all(v["passed"] for v in self.vectors)

    def to_json(self) -> dict[str, Any]:
        return {"port": self.port, "device": self.device, "passed": self.passed, "retries": self.retries,
                "vectors": self.vectors}


def run_hil(model_path: Path, port: str, *, baud: int = 115200, data: str | None = None, count: int = 4,
            tolerance: int = 0, timeout: float = 5.0, retries: int = 2) -> HilResult:
    """INFO (same model?), then every golden vector through RUN, compared with the host TFLM."""
    from ..golden import golden_vectors
    from ..model import refuse_float_model
    from ..tflite_model import read_model

    model = read_model(model_path)
    refuse_float_model(model)
    golden = golden_vectors(model, model_path, count, data)
    golden_in, names, expected = golden.inputs, golden.names, golden.expected
    sha = hashlib.sha256(model_path.read_bytes()).hexdigest()
    client = HilClient(port, baud, timeout, retries)
    try:
        device = client.info()
        if device.get("model_sha256") != sha:
            raise NotDeployableError(
                f"the device runs another model (sha256 {device.get('model_sha256', '?')[:16]}..., "
                f"expected {sha[:16]}...)", path=port, field="--port",
                fix="flash the firmware generated from this model (`invoke firmware`)")
        result = HilResult(port=port, device=device)
        for v, name in enumerate(names):
            payload = b"".join(np.ascontiguousarray(x[v]).tobytes() for x in golden_in)
            raw, cycles, micros = client.run(payload)
            want_bytes = sum(e[v].nbytes for e in expected)
            if len(raw) != want_bytes:  # checked before any parsing: 3 bytes are no int16 output
                raise DeviceError(f"RUN returned {len(raw)} output bytes, expected {want_bytes} "
                                  f"({', '.join(f'{e[v].size} x {e[v].dtype}' for e in expected)})",
                                  path=port, field="--port",
                                  fix="the firmware and the model disagree: flash the firmware generated "
                                      "from this model (`invoke firmware`)")
            offset, worst = 0, 0
            for want in (e[v] for e in expected):  # outputs back to back, in output order
                arr = np.frombuffer(raw[offset:offset + want.nbytes], dtype=want.dtype)
                offset += want.nbytes
                worst = max(worst, int(np.abs(arr.astype(np.int64) - want.ravel().astype(np.int64)).max()))
            # 0 in either field: the device does not measure it (reported as null, never 0)
            result.vectors.append({"name": name, "passed": worst <= tolerance, "max_difference": worst,
                                   "device_us": micros or None, "device_cycles": cycles or None})
        result.retries = client.retried
        return result
    finally:
        client.close()




# --- registry entry ----------------------------------------------------------------------------

def _hil_job(job: Job) -> HilResult:
    r = job.request
    return run_hil(job.model, r.port, baud=r.baud, data=r.data, count=r.vectors, tolerance=r.tolerance,
                   timeout=r.hil_timeout_s, retries=r.hil_retries)


def _hil_problems(job: Job, result: dict[str, Any]) -> list[str]:
    return [] if result["passed"] else ["hil: the device's outputs differ from the host TFLM"]


# never cached: the device is not an input we can hash
STAGE = Stage("hil", run=_hil_job, applies=lambda job: bool(job.request.port),
              status=lambda job, result: ("ran", f"on {job.request.port}"), problems=_hil_problems,
              section=lambda result: {k: v for k, v in result.items() if k != "port"})
