"""Time a layer-level diagnosis of MobileNetV2-0.35 (96x96) against plain inference.

The diagnosis runs the int8 model in LiteRT's reference kernels and in TFLM, and the float
model, all three keeping every tensor, then computes per-op errors and the first divergence.
The baseline, in the same run and on the same samples, is what `verify` already does: the
int8 model through TFLM's interpreter for its outputs only (`pipeline.runtime.tflm_runner`). Both are
fresh processes, so both pay their imports. The ratio is the cost of looking inside.
Goal: seconds, at most 5x the baseline.

    python bench/diagnose.py [--samples 8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from common import timed

DIAGNOSE = """
import sys, numpy as np
from pathlib import Path
from pipeline.data import SampleSet
from pipeline.stages.diagnose import diagnose
from pipeline.tflite_model import read_model
d = Path(sys.argv[1]); x = np.load(sys.argv[2])
name = read_model(d / "model_float.tflite").input_names()[0]
r = diagnose(d / "model_int8.tflite", d / "model_float.tflite", SampleSet({name: x}, None, "bench"),
             keras=sys.argv[3])
assert len(r.layers) == 65
"""

BASELINE = """
import sys, numpy as np
from pathlib import Path
from pipeline.stages.diagnose import model_inputs
from pipeline.data import SampleSet
from pipeline.tflite_model import read_model
from pipeline.runtime.tflm_runner import run_tflm
d = Path(sys.argv[1]); x = np.load(sys.argv[2])
m = read_model(d / "model_int8.tflite")
run_tflm(d / "model_int8.tflite", model_inputs(m, SampleSet({m.input_names()[0]: x}, None, "bench")))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    import diagnosis_models
    import numpy as np

    from pipeline.stages.quantize import QuantizeRequest, quantize

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        keras_path = diagnosis_models.build_mobilenet_v2(tmp / "mobilenet_v2.keras")
        np.save(tmp / "calibration.npy", diagnosis_models.smooth_images(16, seed=5))
        np.save(tmp / "eval.npy", diagnosis_models.smooth_images(args.samples, seed=9))
        quantize(QuantizeRequest(model=str(keras_path), data=str(tmp / "calibration.npy"),
                                 samples=16, name="mobilenet_v2", out=tmp / "build"))
        model_dir = tmp / "build" / "mobilenet_v2"
        runs = {"diagnose": [], "tflm outputs": []}
        for _ in range(args.repeat):
            for label, script in (("diagnose", DIAGNOSE), ("tflm outputs", BASELINE)):
                runs[label].append(timed([sys.executable, "-c", script, str(model_dir),
                                          str(tmp / "eval.npy"), str(keras_path)]))
        diag, base = (statistics.median(runs[k]) for k in ("diagnose", "tflm outputs"))
        print(f"MobileNetV2-0.35 96x96, {args.samples} samples, median of {args.repeat}")
        print(f"  diagnose (3 runtimes, all tensors, per-op errors): {diag:.2f} s")
        print(f"  baseline (TFLM outputs only):                      {base:.2f} s")
        print(f"  ratio {diag / base:.2f}x")


if __name__ == "__main__":
    main()
