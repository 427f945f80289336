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
