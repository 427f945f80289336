"""Time `invoke firmware --build` (host + Cortex-M4 under QEMU) against a from-scratch build of
the same project that compiles all of TFLM, and a second model with the same flags, all in the
same run.

    python bench/firmware.py [--tflm-tree DIR]

1. baseline: the demo's project built for the host and the Cortex-M4 the way it was before:
   every source of the tree (-DTFLM_ALL_SOURCES=ON), no precompiled header, no unity units, no
   library cache.
2. first `invoke firmware --build` of the demo, with an empty TFLM library cache.
3. `invoke firmware --build` of a second model (other layers, so other kernels) with the same
   flags: the cached libraries gain only its new kernels.
Goals on 2 cores: the first under 90 s, the second under 15 s. Each timing is a fresh process.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from common import timed  # noqa: E402

SECOND_MODEL = """
import sys
import numpy as np
import keras
inputs = keras.Input((16, 16, 3))
x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(inputs)
y = keras.layers.Conv2D(3, 1, padding="same")(inputs)
x = keras.layers.Add()([x, y])
x = keras.layers.AveragePooling2D(2)(x)
x = keras.layers.Flatten()(x)
outputs = keras.layers.Dense(4, activation="softmax")(x)
keras.Model(inputs, outputs).save(sys.argv[1])
np.save(sys.argv[2], np.random.default_rng(0).random((64, 16, 16, 3), dtype=np.float32))
"""


def _build_all_of_tflm(project: Path, tree: Path, work: Path) -> float:
    """The same project, every TFLM source compiled, no precompiled header, no cache."""
    start = time.perf_counter()
    for name, extra in (("host", []), ("arm", ["-DCORTEX_M=ON"])):
        build = work / f"scratch-{name}"
        subprocess.run(["cmake", "-S", str(project), "-B", str(build), f"-DTFLM_TREE={tree}", "-DTFLM_ALL_SOURCES=ON",
                        "-DTFLM_PCH=OFF", "-DTFLM_UNITY=OFF", "-DTFLM_PAIR_KERNELS=OFF", *extra], check=True, capture_output=True)
        subprocess.run(["cmake", "--build", str(build), f"-j{os.cpu_count() or 2}"], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tflm-tree", default=os.environ.get("TFLM_TREE") or str(ROOT.parent / "shared" / "tflm-tree"))
    args = parser.parse_args()
    tree = Path(args.tflm_tree).resolve()
    invoke = [sys.executable, "-m", "invoke", "-r", str(ROOT)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env_cache = tmp / "cache"
        os.environ["EDGE_DEPLOY_CACHE"] = str(env_cache)
        os.environ["EDGE_DEPLOY_CCACHE"] = "0"  # measure the compiler, not a warm ccache
        subprocess.run(invoke + ["quantize", "--out", str(tmp / "build")], check=True, capture_output=True)
        subprocess.run([sys.executable, "-c", SECOND_MODEL, str(tmp / "second.keras"), str(tmp / "cal.npy")],
                       check=True, capture_output=True)
        subprocess.run(invoke + ["quantize", "--model", str(tmp / "second.keras"), "--data", str(tmp / "cal.npy"),
                                 "--out", str(tmp / "build")], check=True, capture_output=True)
        demo, second = tmp / "build" / "demo" / "model_int8.tflite", tmp / "build" / "second" / "model_int8.tflite"
        subprocess.run(invoke + ["firmware", "--model", str(demo), "--out", str(tmp / "scratch-project")],
                       check=True, capture_output=True)
        baseline = _build_all_of_tflm(tmp / "scratch-project", tree, tmp)
        first = timed(invoke + ["firmware", "--model", str(demo), "--build", "--tflm-tree", str(tree)])
        again = timed(invoke + ["firmware", "--model", str(second), "--build", "--tflm-tree", str(tree)])
        shutil.rmtree(env_cache, ignore_errors=True)
    print(f"from-scratch build of the demo's project, all of TFLM (host + M4, no cache): {baseline:7.1f} s")
    print(f"first invoke firmware --build (host + M4 + QEMU self-test + arena searches): {first:7.1f} s"
          f"  {first / baseline:5.2f}x of the from-scratch build (goal: under 90 s)")
    print(f"second model, same flags (its new kernels only)                           : {again:7.1f} s"
          f"  {again / baseline:5.2f}x of the from-scratch build, {again / first:5.2f}x of the first (goal: under 15 s)")
    print(f"on {os.cpu_count()} cores; load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
