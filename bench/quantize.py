"""Time `invoke quantize --model demo` against the bare TF converter call on the same model.

Both run as fresh processes (each pays the TensorFlow import), on the same cached demo model
and the same 200 calibration samples, in the same run. The ratio is the pipeline's own
overhead: SavedModel export with a fixed batch, the float conversion, data validation, reading
the model back, the LiteRT evaluation and the report. Goal: at most 1.3x.

    python bench/quantize.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from common import timed  # noqa: E402
sys.path.insert(0, str(ROOT))

BARE = """
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
import numpy as np, tensorflow as tf, keras
model = keras.models.load_model(sys.argv[1], compile=False)
cal = np.load(sys.argv[2])
def representative_dataset():
    for s in cal:
        yield [s[None]]
c = tf.lite.TFLiteConverter.from_keras_model(model)
c.optimizations = [tf.lite.Optimize.DEFAULT]
c.representative_dataset = representative_dataset
c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
c.inference_input_type = c.inference_output_type = tf.int8
open(sys.argv[3], "wb").write(c.convert())
"""



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    import numpy as np

    from pipeline import demo

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        out = tmp / "build"
        # warm-up: trains and caches the demo model, so neither side pays for training
        subprocess.run([sys.executable, "-m", "invoke", "quantize", "--out", str(out)],
                       cwd=ROOT, check=True, capture_output=True)
        model = demo.cached_model_path(out / ".cache")
        np.save(tmp / "cal.npy", demo.digits_split().x_calibration)
        bare = [sys.executable, "-c", BARE, str(model), str(tmp / "cal.npy"), str(tmp / "bare.tflite")]
        ours = [sys.executable, "-m", "invoke", "quantize", "--out", str(out)]
        bare_t, ours_t = [], []
        for _ in range(args.repeat):
            bare_t.append(timed(bare))
            ours_t.append(timed(ours))
    b, o = statistics.median(bare_t), statistics.median(ours_t)
    print(f"bare TF converter (process) : {b:6.2f} s  (median of {args.repeat})")
    print(f"invoke quantize --model demo: {o:6.2f} s  (median of {args.repeat})")
    print(f"ratio                       : {o / b:6.2f}x  (goal <= 1.30x)")


if __name__ == "__main__":
    main()
