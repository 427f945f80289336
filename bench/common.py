"""Shared by the benchmarks: every timing is a fresh process, medians over repeats."""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(cmd, cwd: Path = ROOT) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - start


def median_time(cmd, repeat: int, cwd: Path = ROOT) -> float:
    return statistics.median(timed(cmd, cwd) for _ in range(repeat))
