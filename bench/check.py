"""Time `invoke check --target all` on the biggest model in ../shared/testdata against loading
the same model in the LiteRT interpreter, in the same run.

    python bench/check.py [--repeat 5]

Two comparisons, both measured in this run:
- whole tasks as fresh processes: `invoke check --target all` (reader, both rule sets, the TFLM
  interpreter run in its subprocess) against a process that loads the model into LiteRT;
- in process: our flatbuffer reader against the LiteRT interpreter load, the part where the
  reader should be far faster.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from common import median_time  # noqa: E402
MODELS = ROOT.parent / "shared" / "testdata" / "edgetpu-models"
LOAD_LITERT = ("import sys\nfrom ai_edge_litert.interpreter import Interpreter\n"
               "Interpreter(model_path=sys.argv[1]).allocate_tensors()\n")




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
    ours = median_time(invoke + ["check", "--model", str(biggest), "--target", "all"], args.repeat)
    print(f"model: {biggest.name} ({biggest.stat().st_size} bytes)")
    print(f"process  LiteRT load + allocate_tensors : {litert:7.3f} s")
    print(f"process  invoke check --target all      : {ours:7.3f} s   ratio {ours / litert:5.2f}x")

    sys.path.insert(0, str(ROOT))
    from ai_edge_litert.interpreter import Interpreter

    from pipeline.tflite_model import read_model

    read_model(biggest)  # imports the schema once, as any second use would find it

    def in_process(fn) -> float:
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    reader = in_process(lambda: read_model(biggest))
    load = in_process(lambda: Interpreter(model_path=str(biggest)).allocate_tensors())
    print(f"in-proc  LiteRT load + allocate_tensors : {load:7.4f} s")
    print(f"in-proc  read_model (flatbuffer reader) : {reader:7.4f} s   ratio {reader / load:5.2f}x")


if __name__ == "__main__":
    main()
