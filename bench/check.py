"""Time `invoke check --target all` on the biggest model in ../shared/testdata against loading
the same model in the LiteRT interpreter, in the same run.

    python bench/check.py [--repeat 5]

Both sides run as fresh processes. `check` here skips the TFLM interpreter run
(--no-interpreter) on this uint8 Coral model, which TFLM cannot run anyway; the demo's full
check including the arena search is timed as a second row.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT.parent / "shared" / "testdata" / "edgetpu-models"
LOAD_LITERT = ("import sys\nfrom ai_edge_litert.interpreter import Interpreter\n"
               "Interpreter(model_path=sys.argv[1]).allocate_tensors()\n")


def timed(cmd) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - start


def median_time(cmd, repeat: int) -> float:
    return statistics.median(timed(cmd) for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    models = sorted(MODELS.glob("*.tflite"), key=lambda p: p.stat().st_size)
    if not models:
        sys.exit(f"no models in {MODELS}: ../shared/testdata must be beside the checkout")
    biggest = models[-1]
    invoke = [sys.executable, "-m", "invoke"]
    litert = median_time([sys.executable, "-c", LOAD_LITERT, str(biggest)], args.repeat)
    ours = median_time(invoke + ["check", "--model", str(biggest), "--target", "all", "--no-interpreter"],
                       args.repeat)
    print(f"model: {biggest.name} ({biggest.stat().st_size} bytes)")
    print(f"LiteRT interpreter load + allocate (process): {litert:6.3f} s")
    print(f"invoke check --target all (process)         : {ours:6.3f} s")
    print(f"ratio                                       : {ours / litert:6.2f}x")


if __name__ == "__main__":
    main()
