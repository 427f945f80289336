"""Time `invoke deploy` on the demo: the first run against the stages' bare library calls, and a
second run (every stage skipped) against the first, all measured in the same run.

    python bench/deploy.py [--repeat 3]

Every timing is a fresh process (each pays Python start-up and the TensorFlow import), on the
same trained demo model (trained once beforehand), into a fresh output directory each time.
Goals: first deploy <= 1.3x the bare calls; the second a small fraction of the first.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from common import timed  # noqa: E402

BARE = """
import sys
from pathlib import Path
from pipeline.stages.quantize import QuantizeRequest, quantize
from pipeline.stages.check import check
from pipeline.stages.compile import compile_edgetpu
from pipeline.stages.firmware import generate_firmware
from pipeline.stages.verify import verify
out = Path(sys.argv[1])
q = quantize(QuantizeRequest(out=out))
check(q.quantized_model)
compile_edgetpu(q.quantized_model)
generate_firmware(q.quantized_model)
verify(q.quantized_model)
"""



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        warm = tmp / "warm"
        subprocess.run([sys.executable, "-m", "invoke", "quantize", "--out", str(warm)], cwd=ROOT, check=True,
                       capture_output=True)  # trains and caches the demo model once
        bare_t, first_t, second_t = [], [], []
        for i in range(args.repeat):
            for label, times, argv in (("bare", bare_t, [sys.executable, "-c", BARE]),
                                       ("deploy", first_t, [sys.executable, "-m", "invoke", "deploy", "--out"])):
                out = tmp / f"{label}{i}"
                shutil.copytree(warm / ".cache", out / ".cache")
                times.append(timed(argv + [str(out)]))
            second_t.append(timed([sys.executable, "-m", "invoke", "deploy", "--out", str(tmp / f"deploy{i}")]))
    bare, first, second = (statistics.median(t) for t in (bare_t, first_t, second_t))
    print(f"bare library calls (quantize, check, compile, firmware, verify): {bare:6.2f} s")
    print(f"first invoke deploy                                          : {first:6.2f} s  ratio {first / bare:5.2f}x (goal <= 1.30x)")
    print(f"second invoke deploy (every stage skipped)                   : {second:6.2f} s  {100 * second / first:5.1f}% of the first")


if __name__ == "__main__":
    main()
