"""Time generating model_data.cc for a 20 MB model against `xxd -i` on the same file.

    python bench/header.py [--mb 20] [--repeat 3]

Both write their C array to a file; ours renders the real template (banner, alignas(16),
static_assert) through the same code `invoke firmware` uses. The output is parsed back and
compared with the input bytes, so speed never comes at the cost of a wrong array.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse_array(text: str) -> bytes:
    body = text[text.index("{") + 1:text.index("};")]
    return bytes(int(tok, 16) for tok in re.findall(r"0x[0-9a-fA-F]{2}", body))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not shutil.which("xxd"):
        sys.exit("xxd is not installed (Debian: apt-get install xxd)")
    from pipeline.stages.firmware import write_model_data_cc
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model.tflite"
        model.write_bytes(os.urandom(args.mb * 1024 * 1024))
        ours_out, xxd_out = Path(tmp) / "model_data.cc", Path(tmp) / "xxd.cc"

        def ours():
            data = model.read_bytes()
            write_model_data_cc(ours_out, {"generator": "bench", "model_file": model.name,
                                           "sha256": "-", "size": len(data)}, data)

        def xxd():
            with xxd_out.open("w") as f:
                subprocess.run(["xxd", "-i", str(model)], stdout=f, check=True)

        timings = {}
        for label, fn in (("xxd -i", xxd), ("edge-deploy model_data.cc", ours)):
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            timings[label] = statistics.median(times)
        assert parse_array(ours_out.read_text()) == model.read_bytes(), "our array differs from the model"
        assert parse_array(xxd_out.read_text()) == model.read_bytes()
    x, o = timings["xxd -i"], timings["edge-deploy model_data.cc"]
    print(f"{args.mb} MB model, median of {args.repeat}")
    print(f"xxd -i                    : {x:6.3f} s")
    print(f"edge-deploy model_data.cc : {o:6.3f} s")
    print(f"speed-up                  : {x / o:6.2f}x  (goal >= 2x; both outputs parse back to the model bytes)")


if __name__ == "__main__":
    main()
