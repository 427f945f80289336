"""The built-in demo: a small CNN trained on scikit-learn's digits (8x8 grey images, 10 classes).

Real data that ships with scikit-learn (no download), a model that trains deterministically in
a few seconds, and a fixed split so every run and every machine quantizes and evaluates the
same samples. The trained model is cached by version so tasks after the first start at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .fileio import write_bytes_atomic

log = logging.getLogger(__name__)

DEMO_NAME = "demo"
# Bump when the architecture, the training or the split changes: it names the cached model.
DEMO_VERSION = 3
SPLIT_SEED = 0
TEST_SAMPLES = 360
CALIBRATION_SAMPLES = 200
EPOCHS = 15
LABELS = tuple(str(d) for d in range(10))
INPUT_NAME = "image"


@dataclass(frozen=True)
class DigitsSplit:
    """Images are float32 (N, 8, 8, 1) in [0, 1]; labels int64 (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_calibration: np.ndarray
    y_calibration: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's shipped digits (1797 8x8 images, values 0..16, and their labels), read
    from its data file without importing scikit-learn: that import takes seconds and sets
    OpenMP variables in the environment. load_digits() when the file is not where it was."""
    import gzip
    from importlib.util import find_spec

    spec = find_spec("sklearn")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is not None and path.is_file():
        with gzip.open(path) as f:
            table = np.loadtxt(f, delimiter=",")
        return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


def digits_split() -> DigitsSplit:
    images, target = _digits()
    x = (images / 16.0).astype(np.float32)[..., None]
    y = target.astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    x, y = x[order], y[order]
    test = slice(0, TEST_SAMPLES)
    cal = slice(TEST_SAMPLES, TEST_SAMPLES + CALIBRATION_SAMPLES)
    train = slice(TEST_SAMPLES + CALIBRATION_SAMPLES, None)
    return DigitsSplit(x[train], y[train], x[cal], y[cal], x[test], y[test])


def split_samples(part: str, inputs, *, limit: int | None = None, option: str = "--data"):
    """The "calibration" or "test" split as validated samples for the demo model's `inputs`
    (labelled, so accuracy can be measured)."""
    from .data import validated

    split = digits_split()
    x, y = {"calibration": (split.x_calibration, split.y_calibration),
            "test": (split.x_test, split.y_test)}[part]
    return validated({inputs[0].name: x}, y, inputs, source=f"demo {part} split", option=option, limit=limit)


def is_demo_model(model_path: Path, sample_shapes) -> bool:
    """A model from the demo's output directory with the demo's single 8x8x1 input."""
    return model_path.parent.name == DEMO_NAME and [tuple(s) for s in sample_shapes] == [(8, 8, 1)]


def build_model(keras):
    """Conv-pool-conv feature extractor and a dense head sized so weights dominate the file
    (the int8 file is then about a quarter of the float one), using only ops that both the
    Edge TPU and TFLite Micro run in int8."""
    layers = keras.layers
    return keras.Sequential([
        keras.Input((8, 8, 1), name=INPUT_NAME),
        layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
        layers.MaxPooling2D(2, name="pool1"),
        layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
        layers.Flatten(name="flatten"),
        layers.Dense(512, activation="relu", name="fc1"),
        layers.Dense(10, activation="softmax", name="probs"),
    ], name="digits_cnn")


def cached_model_path(cache_dir: Path) -> Path:
    from importlib.metadata import version

    return cache_dir / f"demo-v{DEMO_VERSION}-keras{version('keras')}.keras"


def demo_model_path(cache_dir: Path) -> Path:
    """Path of the trained demo model in `cache_dir` (the output folder's `.cache`), training it
    only if neither this folder nor the per-user cache has it: the same version trains once per
    machine, however many output folders (or parallel test workers) ask for it."""
    path = cached_model_path(cache_dir)
    if path.is_file():
        return path
    from .user_cache import cache_root, locked

    shared_root = cache_root()
    if shared_root is None:
        return _train(path)
    shared = shared_root / "demo" / path.name
    with locked(shared.with_name(shared.name + ".lock")):
        if not shared.is_file():
            _train(shared)
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, shared.read_bytes())
    return path


def _train(path: Path) -> Path:
    """Train the demo model and save it atomically at `path`."""
    cache_dir = path.parent
    log.info("training the demo model on scikit-learn digits (once; cached in %s)", cache_dir)
    from .runtime.tf import import_tensorflow

    tf = import_tensorflow()
    import keras

    from .runtime.tf import captured_stderr

    keras.utils.set_random_seed(SPLIT_SEED)
    tf.config.experimental.enable_op_determinism()
    split = digits_split()
    model = build_model(keras)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    with captured_stderr():
        model.fit(split.x_train, split.y_train, epochs=EPOCHS, batch_size=32, verbose=0)
        _, accuracy = model.evaluate(split.x_test, split.y_test, verbose=0)
    log.info("demo model trained: %.1f%% float accuracy on all %d held-out digits (verify scores the "
             "float and quantized models on fewer of them, --verify-samples in deploy: its float "
             "figure may differ)",
             100 * accuracy, len(split.y_test))
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.stem}.tmp.keras")  # Keras insists on the suffix
    model.save(staging)
    write_bytes_atomic(path, staging.read_bytes())
    staging.unlink()
    return path
