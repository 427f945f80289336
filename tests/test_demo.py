from __future__ import annotations

import subprocess
import sys

import numpy as np

from conftest import ROOT
from pipeline import demo


def test_split_is_fixed_disjoint_and_real():
    a, b = demo.digits_split(), demo.digits_split()
    assert np.array_equal(a.x_test, b.x_test) and np.array_equal(a.y_calibration, b.y_calibration)
    assert len(a.x_test) == demo.TEST_SAMPLES and len(a.x_calibration) == demo.CALIBRATION_SAMPLES
    assert len(a.x_train) + len(a.x_test) + len(a.x_calibration) == 1797  # all of sklearn's digits
    from sklearn.datasets import load_digits

    everything = np.concatenate([a.x_train, a.x_calibration, a.x_test])
    original = (load_digits().images / 16.0).astype(np.float32)[..., None]
    # every sample used exactly once: the three splits partition the data set
    assert sorted(r.tobytes() for r in everything) == sorted(r.tobytes() for r in original)
    assert a.x_train.dtype == np.float32 and 0 <= a.x_train.min() and a.x_train.max() <= 1
    assert set(a.y_test) == set(range(10))


def test_trained_model_is_cached(demo_int8, out_root):
    cached = demo.cached_model_path(out_root / ".cache")
    assert cached.is_file()
    before = cached.stat().st_mtime_ns
    assert demo.demo_model_path(out_root / ".cache") == cached
    assert cached.stat().st_mtime_ns == before  # not retrained


def test_another_output_folder_takes_the_demo_from_the_user_cache(demo_int8, shared_user_cache, tmp_path):
    """The per-user cache holds the trained demo: a new output folder copies it, never retrains
    (a retrained model would be another file: Keras stamps the save time in it)."""
    shared = shared_user_cache / "demo" / demo.cached_model_path(tmp_path).name
    assert shared.is_file()
    copied = demo.demo_model_path(tmp_path / "elsewhere" / ".cache")
    assert copied.parent == tmp_path / "elsewhere" / ".cache"
    assert copied.read_bytes() == shared.read_bytes()


def test_the_demo_data_is_read_without_importing_scikit_learn():
    """Its import costs seconds in every process that reads the demo's data."""
    code = "import sys; from pipeline import demo; demo.digits_split(); print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"
