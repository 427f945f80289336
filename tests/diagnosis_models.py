"""Keras models for the diagnosis tests, built in seconds without downloads.

MobileNetV2-0.35 96x96 as keras.applications builds it (weights=None), with its
BatchNormalization statistics taken from one batch of the data: with the initial statistics
(mean 0, variance 1) the untrained network's activations shrink to ~1e-8 by the last block and
the int8 SOFTMAX that follows aborts LiteRT's reference kernel in Prepare. A model with
LayerNormalization, GELU and a Lambda inside a nested model shows how ops that are not a
layer's main kernel (the NEG that LayerNormalization leaves) map back to their layer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def smooth_images(count: int, size: int = 96, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Low-frequency random images in [-1, 1] (MobileNetV2's input range): upsampled noise,
    closer to photographs than white noise is."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1, 1, size=(count, size // 8, size // 8, channels)).astype(np.float32)
    return np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)


def build_mobilenet_v2(path: Path, seed: int = 0) -> Path:
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.applications.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), weights=None,
                                           classes=10)
    batch_norms = [layer for layer in model.layers
                   if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in batch_norms:
        layer.momentum = 0.0  # moving statistics := this batch's
    model(smooth_images(32, seed=seed + 1), training=True)
    for layer in batch_norms:
        layer.momentum = 0.999
    model.save(path)
    return path


def build_layer_norm_model(path: Path, seed: int = 0) -> Path:
    import keras

    keras.utils.set_random_seed(seed)
    layers = keras.layers
    encoder_in = keras.Input((16, 8))
    x = layers.Dense(32, name="proj")(encoder_in)
    x = layers.LayerNormalization(name="layer_norm_1")(x)
    x = layers.Activation("gelu", name="gelu_act")(x)
    x = layers.Lambda(lambda t: t * 0.5 + 1.0, name="scale_shift")(x)
    encoder = keras.Model(encoder_in, x, name="encoder")
    tokens = keras.Input((16, 8), name="tokens")
    y = layers.GlobalAveragePooling1D(name="pool")(encoder(tokens))
    y = layers.Dense(4, name="head")(y)
    keras.Model(tokens, y, name="functional_ln").save(path)
    return path


_BUILT: dict[tuple[str, str], object] = {}


def quantized_mobilenet(out_root: Path, run_quantize, samples: int = 16):
    """MobileNetV2-0.35 through the real `quantize` stage, once per test session (both test
    modules share it): (QuantizeResult, .keras path, held-out images)."""
    key = ("mobilenet", str(out_root))
    if key not in _BUILT:
        work = out_root / "diagnosis-models"
        work.mkdir(parents=True, exist_ok=True)
        keras_path = build_mobilenet_v2(work / "mobilenet_v2_035_96.keras")
        np.save(work / "calibration.npy", smooth_images(samples, seed=5))
        result = run_quantize(model=str(keras_path), data=str(work / "calibration.npy"),
                              samples=samples, name="mobilenet_v2")
        _BUILT[key] = (result, keras_path, smooth_images(8, seed=9))
    return _BUILT[key]


def converted_layer_norm(out_root: Path):
    """The LayerNormalization/GELU/Lambda model as float and int8 .tflite files. Converted here
    rather than by `quantize`: Keras refuses to load a Lambda with a Python lambda in safe mode,
    and the quantizer leaves NEG in float, which `quantize` rightly rejects."""
    key = ("layer_norm", str(out_root))
    if key not in _BUILT:
        from pipeline.data import SampleSet
        from pipeline.recommend import convert_variant
        from pipeline.runtime.tf import import_tensorflow

        tf = import_tensorflow()
        import keras

        work = out_root / "diagnosis-models"
        work.mkdir(parents=True, exist_ok=True)
        keras_path = build_layer_norm_model(work / "layer_norm.keras")
        model = keras.models.load_model(keras_path, safe_mode=False)
        saved = work / "layer_norm_saved_model"
        model.export(str(saved), format="tf_saved_model", verbose=False,
                     input_signature=[tf.TensorSpec((1, 16, 8), tf.float32, name="tokens")])
        x = np.random.default_rng(3).standard_normal((16, 16, 8)).astype(np.float32)
        calibration = SampleSet({"tokens": x}, None, "random tokens")
        paths = {}
        for mode in ("float", "int8"):
            paths[mode] = work / f"layer_norm_{mode}.tflite"
            paths[mode].write_bytes(convert_variant(tf, saved, mode, calibration=calibration))
        _BUILT[key] = (paths["float"], paths["int8"], keras_path, calibration)
    return _BUILT[key]


def corrupt_weights(model_path: Path, op_index: int, dest: Path) -> Path:
    """A copy of the model with output channel 0 of op `op_index`'s weights (input 1) negated,
    patched in place at the buffer's offset in the flatbuffer: a bit flip in flash, or a
    device running another image."""
    from pipeline.tflite_model import read_model

    model = read_model(model_path)
    weights = model.main.tensors[model.main.operators[op_index].inputs[1]]
    start, length = model.buffer_spans[weights.buffer]
    raw = bytearray(model.raw)
    values = np.frombuffer(bytes(raw[start:start + length]), np.int8).copy()
    per_channel = length // weights.shape[0]
    values[:per_channel] = -values[:per_channel]
    raw[start:start + length] = values.tobytes()
    dest.write_bytes(bytes(raw))
    return dest


def build_outlier_model(path: Path, *, gain: float = 200.0, seed: int = 0) -> Path:
    """A digits classifier whose hidden layer has one unit `gain` times larger than the rest,
    and the next layer that unit's weights `gain` times smaller: the same function in float
    (ReLU is positively homogeneous), but the hidden tensor's one int8 scale must cover the
    outlier, so the other units round to a few steps. The outlier channel that wrecks
    per-tensor activation quantization in real networks, made on purpose."""
    import keras

    from pipeline import demo

    keras.utils.set_random_seed(seed)
    split = demo.digits_split()
    layers = keras.layers
    model = keras.Sequential([keras.Input((8, 8, 1), name="image"), layers.Flatten(name="flatten"),
                              layers.Dense(32, activation="relu", name="hidden"),
                              layers.Dense(10, activation="softmax", name="probs")], name="outlier")
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(split.x_train, split.y_train, epochs=20, batch_size=32, verbose=0)
    hidden, probs = model.get_layer("hidden"), model.get_layer("probs")
    kernel, bias = hidden.get_weights()
    busiest = int(np.argmax(np.maximum(split.x_train.reshape(len(split.x_train), -1) @ kernel + bias, 0).mean(0)))
    kernel[:, busiest] *= gain
    bias[busiest] *= gain
    hidden.set_weights([kernel, bias])
    w, b = probs.get_weights()
    w[busiest] /= gain
    probs.set_weights([w, b])
    model.save(path)
    return path


def build_flat_softmax_model(path: Path, seed: int = 0) -> Path:
    """A classifier whose logits barely vary (last kernel ~1e-9): its softmax input scale is
    about 8e-9, on which the reference softmax of both TFLM and LiteRT aborts, as on an
    untrained MobileNetV2; LiteRT's optimized softmax runs it."""
    import keras

    keras.utils.set_random_seed(seed)
    layers = keras.layers
    model = keras.Sequential([keras.Input((8,), name="x"), layers.Dense(16, activation="relu", name="hidden"),
                              layers.Dense(3, activation="softmax", name="probs",
                                           kernel_initializer=keras.initializers.RandomNormal(stddev=1e-9))],
                             name="flat_softmax")
    model.save(path)
    return path
