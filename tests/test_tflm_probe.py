"""The TFLM arena search worker (pipeline.runtime.tflm_probe): an arena too small can segfault
the TFLM Python interpreter; each probe below the known-good size runs in a forked child, so one
worker finishes the search instead of a new process per crash."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def _events(model, *args: str) -> tuple[list[dict], subprocess.CompletedProcess]:
    proc = subprocess.run([sys.executable, "-m", "pipeline.runtime.tflm_probe", str(model), "1", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")], proc


def test_one_worker_finishes_the_search_through_the_crashing_sizes(demo_int8):
    from pipeline.rules.tflm import probe_interpreter

    model = demo_int8.output_dir / "model_int8.tflite"
    events, proc = _events(model, "0", "none")
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = [e["result"] for e in events if "result" in e]
    assert len(results) == 1 and results[0]["runs"], events[-3:]
    # the demo's allocator segfaults on some of the sizes tried: they were answered "too small"
    tried = [e for e in events if "probe" in e and e["ok"] is not None]
    assert any(not e["ok"] for e in tried)
    smallest = results[0]["arena_bytes"]
    assert all(e["ok"] == (e["probe"] >= smallest) for e in tried), tried
    # the same figure as the caller's restart-on-crash search finds
    ran, arena, error = probe_interpreter(model, 1)
    assert ran and error is None and arena == smallest


def test_a_file_tflm_refuses_is_an_error_not_an_arena(tmp_path):
    """The first probe (the size the model surely fits) runs in the worker itself: when even
    that fails, the model is the problem and no arena is reported."""
    from pipeline.rules.tflm import probe_interpreter

    bad = tmp_path / "random.tflite"
    bad.write_bytes(b"TFL3" * 64)
    ran, arena, error = probe_interpreter(bad, 1)
    assert not ran and arena is None and error
