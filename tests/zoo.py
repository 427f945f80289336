"""A model zoo for end-to-end tests: the architectures embedded engineers deploy, built in Keras 3
from seeded code with synthetic data that a few epochs can learn (nothing is downloaded).

The four MLPerf Tiny reference architectures (DS-CNN keyword spotting, MobileNetV1-0.25 visual
wake words, ResNet-8 image classification, the FC autoencoder for anomaly detection), written
after the layer lists in mlcommons/tiny `benchmark/training/*/keras_model.py` (v0.5 reference
widths), plus MobileNetV2-0.35 from `keras.applications`, a two-input / two-output model, LSTM
and GRU sequence classifiers, and small models with GELU, LayerNormalization, Resizing and a
SIN Lambda: the layers users bring that quantize badly or map to no integer kernel.

Each builder returns a `ZooEntry`: the model, calibration samples keyed by input name, and
labelled evaluation samples (`y`; for the two-output model also `y_<output>` per output).
Untrained nets are degenerate in ways real ones are not (all logits equal: TFLM's softmax
aborts on the tiny scale), so classifiers train for a few epochs; `EPOCHS` says how many.
`HEAVY` marks the members that take more than a few seconds to build or to convert.

    entry = build("ds_cnn_kws"); paths = save(entry, Path("scratch"))
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

SEED = 0
CALIBRATION_SAMPLES = 200
EVAL_SAMPLES = 200
TRAIN_SAMPLES = 600


@dataclass
class ZooEntry:
    name: str
    model: object  # keras.Model
    calibration: dict[str, np.ndarray]  # per Keras input name, (N, *shape) float32
    evaluation: dict[str, np.ndarray]  # inputs as above plus "y" (and "y_<output>" per output)
    task: tuple[str, ...]  # per Keras output: classification | regression | reconstruction
    heavy: bool = False
    epochs: int = 0
    seconds: float = 0.0
    notes: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    def calibration_tuples(self):
        """The calibration samples as `module:function` users yield them: tuples in the Keras
        model's input order."""
        names = [t.name for t in self.model.inputs]
        for i in range(len(self.calibration[names[0]])):
            yield tuple(self.calibration[n][i] for n in names)


def _keras():
    import keras

    keras.utils.set_random_seed(SEED)
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    return keras


def _class_data(rng: np.random.Generator, shape: tuple[int, ...], classes: int, n: int, *,
                signal: float = 1.0, noise: float = 0.6, smooth: int = 1, low=None, high=None):
    """Labels uniform over classes; x = a fixed smooth template per class + noise: learnable in
    a few epochs, varied enough that calibration sees realistic activation ranges."""
    templates = rng.normal(size=(classes, *shape))
    if smooth > 1 and len(shape) >= 2:  # low-frequency images: average over smooth x smooth blocks
        h, w = shape[0], shape[1]
        coarse = rng.normal(size=(classes, -(-h // smooth), -(-w // smooth), *shape[2:]))
        templates = np.repeat(np.repeat(coarse, smooth, axis=1), smooth, axis=2)[:, :h, :w]
    y = rng.integers(0, classes, size=n)
    x = signal * templates[y] + noise * rng.normal(size=(n, *shape))
    if low is not None:
        x = low + (high - low) * (1 / (1 + np.exp(-x)))  # squash into the sensor's range
    return x.astype(np.float32), y.astype(np.int64)


def _split(x, y, *, train: int = TRAIN_SAMPLES):
    """train / calibration / evaluation parts of one synthetic set."""
    a, b = train, train + CALIBRATION_SAMPLES
    return (x[:a], y[:a]), (x[a:b], y[a:b]), (x[b:b + EVAL_SAMPLES], y[b:b + EVAL_SAMPLES])


def _fit_classifier(keras, model, x, y, epochs: int, batch: int = 32):
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=batch, verbose=0, shuffle=True)
    _settle_batchnorm(model, x, batch)


def _settle_batchnorm(model, x, batch: int = 32, passes: int = 3):
    """A short training gives BatchNormalization moving statistics that lag the weights (100%
    accuracy in training mode, chance in inference): a few forward passes in training mode
    (no gradient step) bring them to the trained weights, as a longer training would."""
    import keras

    xs = x if isinstance(x, list) else [x]
    norms = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [layer.momentum for layer in norms]
    for layer in norms:  # keras.applications use 0.999: far too slow to settle in a few passes
        layer.momentum = 0.8
    for _ in range(passes):
        for i in range(0, len(xs[0]), batch):
            part = [a[i:i + batch] for a in xs]
            model(part if len(part) > 1 else part[0], training=True)
    for layer, momentum in zip(norms, saved):
        layer.momentum = momentum


def _bn(L):
    """BatchNormalization with momentum 0.9 (Keras default 0.99): the moving statistics then
    settle within the few hundred steps of a zoo training; the architecture is unchanged."""
    return L.BatchNormalization(momentum=0.9)


def _total(n: int = 0) -> int:
    return TRAIN_SAMPLES + CALIBRATION_SAMPLES + EVAL_SAMPLES + n


# --- MLPerf Tiny reference architectures -----------------------------------------------------

def ds_cnn_kws(epochs: int = 5) -> ZooEntry:
    """Keyword spotting, DS-CNN: 49x10x1 MFCCs, 12 classes. Conv 64 (10x4, stride 2) then four
    depthwise-separable blocks (3x3 depthwise + 1x1 conv, BN, ReLU), average pool, softmax."""
    keras = _keras()
    L = keras.layers
    reg = keras.regularizers.l2(1e-4)
    inputs = keras.Input((49, 10, 1), name="mfcc")
    x = L.Conv2D(64, (10, 4), strides=(2, 2), padding="same", kernel_regularizer=reg)(inputs)
    x = L.Activation("relu")(_bn(L)(x))
    x = L.Dropout(0.2)(x)
    for _ in range(4):
        x = L.DepthwiseConv2D((3, 3), padding="same", depthwise_regularizer=reg)(x)
        x = L.Activation("relu")(_bn(L)(x))
        x = L.Conv2D(64, (1, 1), padding="same", kernel_regularizer=reg)(x)
        x = L.Activation("relu")(_bn(L)(x))
    x = L.Dropout(0.4)(x)
    x = L.AveragePooling2D(pool_size=(24, 5))(x)  # (int(49/2), int(10/2)) as in the reference
    x = L.Flatten()(x)
    outputs = L.Dense(12, activation="softmax", name="keyword")(x)
    model = keras.Model(inputs, outputs, name="ds_cnn_kws")
    rng = np.random.default_rng(SEED)
    # MFCC-like scale: coefficients of tens, as the MLPerf front end produces
    x_all, y_all = _class_data(rng, (49, 10, 1), 12, _total(), signal=8.0, noise=6.0)
    (xt, yt), (xc, _), (xe, ye) = _split(x_all, y_all)
    _fit_classifier(keras, model, xt, yt, epochs)
    return ZooEntry("ds_cnn_kws", model, {"mfcc": xc}, {"mfcc": xe, "y": ye}, ("classification",),
                    epochs=epochs)


def _mobilenet_v1_block(L, x, filters: int, stride: int):
    x = L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(x)
    x = L.Activation("relu")(_bn(L)(x))
    x = L.Conv2D(filters, 1, padding="same", use_bias=False)(x)
    return L.Activation("relu")(_bn(L)(x))


def _vww_data(rng, size: int, n: int):
    """'person' (1): a reddish blob at a random place on a noisy grey background."""
    x = rng.uniform(0.0, 0.7, size=(n, size, size, 3)).astype(np.float32)
    y = rng.integers(0, 2, size=n)
    s = size // 2
    for i in np.flatnonzero(y):
        r, c = rng.integers(0, size - s, size=2)
        x[i, r:r + s, c:c + s, 0] += 0.3
        x[i, r:r + s, c:c + s, 1:] *= 0.5
    return x, y.astype(np.int64)


def mobilenet_v1_vww(epochs: int = 5) -> ZooEntry:
    """Visual wake words, MobileNetV1 alpha 0.25: 96x96x3 in [0, 1], 2 classes; 13
    depthwise-separable blocks from 8 to 256 filters, average pool, softmax. Five epochs: the
    training is deterministic on one CPU, not across CPUs, and three left it at 86% float (and
    6 points lost in int8) on one of them, 96% with no loss after five."""
    keras = _keras()
    L = keras.layers
    inputs = keras.Input((96, 96, 3), name="image")
    x = L.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inputs)
    x = L.Activation("relu")(_bn(L)(x))
    for filters, stride in ((16, 1), (32, 2), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1), (128, 1),
                            (128, 1), (128, 1), (128, 1), (256, 2), (256, 1)):
        x = _mobilenet_v1_block(L, x, filters, stride)
    x = L.AveragePooling2D(pool_size=tuple(x.shape[1:3]))(x)
    x = L.Flatten()(x)
    outputs = L.Dense(2, activation="softmax", name="person")(x)
    model = keras.Model(inputs, outputs, name="mobilenet_v1_025_vww")
    rng = np.random.default_rng(SEED)
    x_all, y_all = _vww_data(rng, 96, _total())
    (xt, yt), (xc, _), (xe, ye) = _split(x_all, y_all)
    _fit_classifier(keras, model, xt, yt, epochs)
    return ZooEntry("mobilenet_v1_vww", model, {"image": xc}, {"image": xe, "y": ye}, ("classification",),
                    heavy=True, epochs=epochs)


def resnet8_ic(epochs: int = 3) -> ZooEntry:
    """Image classification, ResNet-8 (the MLPerf Tiny v0.5 `resnet_v1_eembc`, 16/32/64 filters):
    32x32x3 in [0, 1], 10 classes; three residual stacks, 1x1 stride-2 shortcuts."""
    keras = _keras()
    L = keras.layers

    def conv(filters, kernel=3, stride=1):
        return L.Conv2D(filters, kernel, strides=stride, padding="same", kernel_initializer="he_normal",
                        kernel_regularizer=keras.regularizers.l2(1e-4))

    inputs = keras.Input((32, 32, 3), name="image")
    x = L.Activation("relu")(_bn(L)(conv(16)(inputs)))
    for filters, stride in ((16, 1), (32, 2), (64, 2)):
        y = L.Activation("relu")(_bn(L)(conv(filters, stride=stride)(x)))
        y = _bn(L)(conv(filters)(y))
        if stride != 1:
            x = conv(filters, kernel=1, stride=stride)(x)
        x = L.Activation("relu")(L.add([x, y]))
    x = L.AveragePooling2D(pool_size=8)(x)
    x = L.Flatten()(x)
    outputs = L.Dense(10, activation="softmax", kernel_initializer="he_normal", name="label")(x)
    model = keras.Model(inputs, outputs, name="resnet8_ic")
    rng = np.random.default_rng(SEED)
    x_all, y_all = _class_data(rng, (32, 32, 3), 10, _total(), signal=1.0, noise=0.8, smooth=8,
                               low=0.0, high=1.0)
    (xt, yt), (xc, _), (xe, ye) = _split(x_all, y_all)
    _fit_classifier(keras, model, xt, yt, epochs)
    return ZooEntry("resnet8_ic", model, {"image": xc}, {"image": xe, "y": ye}, ("classification",),
                    epochs=epochs)


def fc_autoencoder_ad(epochs: int = 30) -> ZooEntry:
    """Anomaly detection, the FC autoencoder: 640 log-mel features (5 frames x 128) -> 4 x Dense
    128 (BN, ReLU) -> Dense 8 bottleneck -> 4 x Dense 128 -> Dense 640 (linear). Normal data lies
    on an 8-dimensional manifold; anomalies (eval `y` = 1) leave it, so their reconstruction
    error is larger and AUC is the metric."""
    keras = _keras()
    L = keras.layers
    inputs = keras.Input((640,), name="features")
    x = inputs
    for units in (128, 128, 128, 128, 8, 128, 128, 128, 128):
        x = L.Activation("relu")(_bn(L)(L.Dense(units)(x)))
    outputs = L.Dense(640, name="reconstruction")(x)
    model = keras.Model(inputs, outputs, name="fc_autoencoder_ad")
    rng = np.random.default_rng(SEED)
    basis = rng.normal(size=(8, 640)) / np.sqrt(8)
    offset = rng.normal(size=640) * 2.0 - 5.0  # log-mel energies: a per-bin level

    def normal(n):
        return (offset + rng.normal(size=(n, 8)) @ basis * 3.0 + 0.3 * rng.normal(size=(n, 640))).astype(np.float32)

    xt, xc = normal(TRAIN_SAMPLES * 2), normal(CALIBRATION_SAMPLES)
    half = EVAL_SAMPLES // 2
    anomalies = normal(half) + (rng.normal(size=(half, 640)) * 1.5).astype(np.float32)
    xe = np.concatenate([normal(EVAL_SAMPLES - half), anomalies]).astype(np.float32)
    ye = np.concatenate([np.zeros(EVAL_SAMPLES - half), np.ones(half)]).astype(np.int64)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    model.fit(xt, xt, epochs=epochs, batch_size=64, verbose=0)
    _settle_batchnorm(model, xt, 64)
    return ZooEntry("fc_autoencoder_ad", model, {"features": xc}, {"features": xe, "y": ye},
                    ("reconstruction",), epochs=epochs,
                    notes="eval y marks anomalies (1), not classes")


# --- other usual user models -----------------------------------------------------------------

def mobilenet_v2_035(epochs: int = 0, classes: int = 2, softmax: bool = True) -> ZooEntry:
    """keras.applications.MobileNetV2 alpha 0.35 at 96x96x3 (weights=None), 2 classes on the
    visual-wake-words data. Untrained by default (its logits barely vary: TFLM's softmax aborts);
    with `epochs` it trains and is named `mobilenet_v2_035_trained`. `classes=1000` is the
    ImageNet head (labels stay 0/1); `softmax=False` ends at the logits (`_logits`), which TFLM
    runs untrained."""
    keras = _keras()
    model = keras.applications.MobileNetV2(input_tensor=keras.Input((96, 96, 3), name="image"), alpha=0.35,
                                           weights=None, classes=classes,
                                           classifier_activation="softmax" if softmax else None)
    rng = np.random.default_rng(SEED)
    x_all, y_all = _vww_data(rng, 96, _total())
    (xt, yt), (xc, _), (xe, ye) = _split(x_all, y_all)
    if epochs:
        _fit_classifier(keras, model, xt, yt, epochs)
    name = ("mobilenet_v2_035" + ("_trained" if epochs else "") + (f"_{classes}" if classes != 2 else "")
            + ("" if softmax else "_logits"))
    return ZooEntry(name, model, {"image": xc}, {"image": xe, "y": ye}, ("classification",),
                    heavy=True, epochs=epochs)


def two_in_two_out(epochs: int = 40) -> ZooEntry:
    """Two equally shaped inputs with different ranges ('unit' in [0, 1], 'percent' in [0, 100];
    the converter orders them percent, unit) and two outputs in Keras order: a regression head
    first (`value`, one number) and a 3-class softmax second (`kind`)."""
    keras = _keras()
    L = keras.layers
    unit = keras.Input((16,), name="unit")
    percent = keras.Input((16,), name="percent")
    h = L.Concatenate()([unit, L.Rescaling(0.01)(percent)])
    h = L.Dense(32, activation="relu")(h)
    h = L.Dense(32, activation="relu")(h)
    value = L.Dense(1, name="value")(h)
    kind = L.Dense(3, activation="softmax", name="kind")(h)
    model = keras.Model([unit, percent], [value, kind], name="two_in_two_out")
    rng = np.random.default_rng(SEED)
    n = _total()
    u = rng.uniform(0, 1, size=(n, 16)).astype(np.float32)
    p = rng.uniform(0, 100, size=(n, 16)).astype(np.float32)
    target = (10 * u.mean(axis=1) + 0.1 * p.mean(axis=1)).astype(np.float32)  # about 5 + 5
    classes = np.digitize(p[:, 0] - 100 * u[:, 0], [-25, 25]).astype(np.int64)  # which is larger, or a tie
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=["mse", "sparse_categorical_crossentropy"],
                  loss_weights=[0.2, 1.0])
    a, b = TRAIN_SAMPLES, TRAIN_SAMPLES + CALIBRATION_SAMPLES
    model.fit([u[:a], p[:a]], [target[:a], classes[:a]], epochs=epochs, batch_size=32, verbose=0)
    ev = slice(b, b + EVAL_SAMPLES)
    return ZooEntry("two_in_two_out", model, {"unit": u[a:b], "percent": p[a:b]},
                    {"unit": u[ev], "percent": p[ev], "y": classes[ev], "y_value": target[ev],
                     "y_kind": classes[ev]},
                    ("regression", "classification"), epochs=epochs,
                    notes="y is the classifier's (second output's) labels; y_value the regression targets")


def _sequence_data(rng, steps: int, features: int, classes: int, n: int):
    """Class k: a sinusoid of frequency k+1 on every feature with a per-feature phase, + noise."""
    y = rng.integers(0, classes, size=n)
    t = np.arange(steps)[None, :, None]
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, features))
    x = np.sin(2 * np.pi * (y[:, None, None] + 1) * t / steps + phase) + 0.3 * rng.normal(size=(n, steps, features))
    return x.astype(np.float32), y.astype(np.int64)


def _recurrent(layer_name: str, epochs: int, unroll: bool) -> ZooEntry:
    keras = _keras()
    L = keras.layers
    inputs = keras.Input((16, 8), name="sequence")
    layer = {"lstm": L.LSTM, "gru": L.GRU}[layer_name](16, unroll=unroll, name=layer_name)
    outputs = L.Dense(4, activation="softmax", name="label")(layer(inputs))
    model = keras.Model(inputs, outputs, name=f"{layer_name}_classifier")
    rng = np.random.default_rng(SEED)
    x_all, y_all = _sequence_data(rng, 16, 8, 4, _total())
    (xt, yt), (xc, _), (xe, ye) = _split(x_all, y_all)
    _fit_classifier(keras, model, xt, yt, epochs)
    suffix = "_unrolled" if unroll else ""
    return ZooEntry(f"{layer_name}{suffix}", model, {"sequence": xc}, {"sequence": xe, "y": ye},
                    ("classification",), epochs=epochs)


def lstm(epochs: int = 15, unroll: bool = False) -> ZooEntry:
    """Keras LSTM(16) over 16 steps x 8 features, 4 classes."""
    return _recurrent("lstm", epochs, unroll)


def gru(epochs: int = 15, unroll: bool = False) -> ZooEntry:
    """Keras GRU(16) over 16 steps x 8 features, 4 classes."""
    return _recurrent("gru", epochs, unroll)


def _small_classifier(name: str, body: Callable, input_shape, epochs: int, **data) -> ZooEntry:
    keras = _keras()
    L = keras.layers
    inputs = keras.Input(input_shape, name="x")
    outputs = L.Dense(4, activation="softmax", name="label")(body(keras, L, inputs))
    model = keras.Model(inputs, outputs, name=name)
    rng = np.random.default_rng(SEED)
    x_all, y_all = _class_data(rng, input_shape, 4, _total(), **data)
    (xt, yt), (xc, _), (xe, ye) = _split(x_all, y_all)
    _fit_classifier(keras, model, xt, yt, epochs)
    return ZooEntry(name, model, {"x": xc}, {"x": xe, "y": ye}, ("classification",), epochs=epochs)


def gelu(epochs: int = 5) -> ZooEntry:
    """Dense 32 with GELU (as in transformer-style heads), then softmax."""
    return _small_classifier("gelu", lambda k, L, x: L.Dense(32, activation="gelu")(L.Dense(32)(x)),
                             (32,), epochs)


def layer_norm(epochs: int = 5) -> ZooEntry:
    """Dense 32 -> LayerNormalization -> ReLU, then softmax."""
    return _small_classifier(
        "layer_norm", lambda k, L, x: L.Activation("relu")(L.LayerNormalization()(L.Dense(32)(x))),
        (32,), epochs)


def resizing(epochs: int = 3) -> ZooEntry:
    """A 24x24x3 image resized (bilinear) to 32x32 inside the model, conv, pool, softmax."""
    def body(k, L, x):
        x = L.Resizing(32, 32, interpolation="bilinear")(x)
        x = L.Conv2D(8, 3, strides=2, activation="relu")(x)
        return L.Flatten()(L.MaxPooling2D(3)(x))

    return _small_classifier("resizing", body, (24, 24, 3), epochs, smooth=6, low=0.0, high=1.0)


def lambda_sin(epochs: int = 5) -> ZooEntry:
    """Dense 32 -> Lambda(sin) (a periodic feature, as users write it), then softmax. Saved also
    as a SavedModel directory (`<name>_savedmodel`)."""
    def body(k, L, x):
        return L.Lambda(lambda t: k.ops.sin(t), name="sin")(L.Dense(32)(x))

    entry = _small_classifier("lambda_sin", body, (32,), epochs)
    # Keras' safe mode refuses to load a Python lambda from a .keras file: the SavedModel is the
    # form such a model reaches the converter in
    entry.extra["savedmodel"] = True
    return entry


BUILDERS: dict[str, Callable[[], ZooEntry]] = {
    "ds_cnn_kws": ds_cnn_kws,
    "mobilenet_v1_vww": mobilenet_v1_vww,
    "resnet8_ic": resnet8_ic,
    "fc_autoencoder_ad": fc_autoencoder_ad,
    "mobilenet_v2_035": mobilenet_v2_035,
    "mobilenet_v2_035_trained": lambda: mobilenet_v2_035(epochs=2),
    "mobilenet_v2_035_1000": lambda: mobilenet_v2_035(classes=1000),
    "mobilenet_v2_035_logits": lambda: mobilenet_v2_035(softmax=False),
    "two_in_two_out": two_in_two_out,
    "lstm": lstm,
    "gru": gru,
    "gelu": gelu,
    "layer_norm": layer_norm,
    "resizing": resizing,
    "lambda_sin": lambda_sin,
}
HEAVY = frozenset({"mobilenet_v1_vww", "mobilenet_v2_035", "mobilenet_v2_035_trained", "mobilenet_v2_035_1000",
                   "mobilenet_v2_035_logits"})
MLPERF_TINY = ("ds_cnn_kws", "mobilenet_v1_vww", "resnet8_ic", "fc_autoencoder_ad")


def build(name: str, **options) -> ZooEntry:
    """Build (and briefly train) one zoo member; `seconds` records how long it took."""
    start = time.perf_counter()
    from contextlib import redirect_stderr

    with open(os.devnull, "w") as quiet, redirect_stderr(quiet):
        entry = BUILDERS[name](**options)
    entry.seconds = round(time.perf_counter() - start, 2)
    entry.heavy = entry.heavy or name in HEAVY
    return entry


def save(entry: ZooEntry, folder: Path) -> dict[str, Path]:
    """`<name>.keras`, `<name>_cal.npz` (arrays per input name), `<name>_eval.npz` (plus `y`);
    `<name>_savedmodel/` too for members that Keras cannot reload safely."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"model": folder / f"{entry.name}.keras", "data": folder / f"{entry.name}_cal.npz",
             "eval_data": folder / f"{entry.name}_eval.npz"}
    entry.model.save(paths["model"])
    if entry.extra.get("savedmodel"):
        paths["savedmodel"] = folder / f"{entry.name}_savedmodel"
        entry.model.export(str(paths["savedmodel"]), format="tf_saved_model", verbose=False)
    np.savez(paths["data"], **entry.calibration)
    np.savez(paths["eval_data"], **entry.evaluation)
    return paths
