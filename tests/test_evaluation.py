"""Every output evaluated by its task: detection per output, labels per output, the metrics, the
override, and outputs in Keras order (output_10 after output_9)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.evaluation import (OutputSpec, describe_outputs, natural_key, output_metrics,
                                 parse_task_overrides)
from pipeline.tflite_model import parse_model
from tflite_builder import ModelBuilder


def three_heads() -> bytes:
    """x (1, 8) -> SOFTMAX (a classifier), RELU (same shape as x: a reconstruction), RESHAPE to
    (1, 2, 4) (a regression output)."""
    mb = ModelBuilder()
    x = mb.tensor("x", (1, 8), scale=0.05)
    probs = mb.tensor("output_0", (1, 8), scale=1 / 256, zero_point=-128)
    recon = mb.tensor("output_1", (1, 8), scale=0.05)
    grid = mb.tensor("output_2", (1, 2, 4), scale=0.05)
    shape = mb.const("shape", [1, 2, 4])
    mb.op("SOFTMAX", [x], [probs], options=("SoftmaxOptions", {"Beta": 1.0}))
    mb.op("RELU", [x], [recon])
    mb.op("RESHAPE", [x, shape], [grid])
    return mb.build([x], [probs, recon, grid])


def test_task_detected_per_output_and_labels_assigned():
    model = parse_model(three_heads())
    y = np.array([0, 3, 7, 1])
    specs = describe_outputs(model, {"y": y, "y_output_2": np.zeros((4, 2, 4))})
    assert [(s.name, s.task, s.labels_key) for s in specs] == [
        ("output_0", "classification", "y"), ("output_1", "reconstruction", None),
        ("output_2", "regression", "y_output_2")]
    assert specs[0].task_reason == "SOFTMAX produces it"
    assert specs[1].input_name == "x" and specs[1].task_reason == "same shape as input 'x'"


def test_override_by_signature_or_keras_name_and_unknown_names():
    model = parse_model(three_heads())
    specs = describe_outputs(model, {}, keras_outputs=["probs", "decoder", "grid"],
                             overrides=parse_task_overrides(["decoder=regression", "output_2=classification"]))
    assert [(s.keras_name, s.task) for s in specs] == [("probs", "classification"), ("decoder", "regression"),
                                                       ("grid", "classification")]
    assert specs[1].task_reason == "given with --task"
    with pytest.raises(PipelineError, match="not an output of the model") as info:
        describe_outputs(model, {}, overrides={"nope": "regression"})
    assert info.value.field == "--task" and "output_0" in info.value.fix
    for bad in ("output_0", "output_0=ranking", "=regression"):
        with pytest.raises(PipelineError, match="is not OUTPUT=TASK"):
            parse_task_overrides([bad])


def test_labels_that_fit_a_classifier_by_width_without_softmax():
    """Logits (no SOFTMAX): integer labels below the width make it a classifier."""
    mb = ModelBuilder()
    x = mb.tensor("x", (1, 4), scale=0.05)
    logits = mb.tensor("logits", (1, 3), scale=0.05)
    w = mb.const("w", np.ones((3, 4)), "int8", scale=0.01)
    mb.op("FULLY_CONNECTED", [x, w, -1], [logits])
    model = parse_model(mb.build([x], [logits]))
    (spec,) = describe_outputs(model, {"y": np.array([0, 2, 1])})
    assert spec.task == "classification" and spec.labels_key == "y"
    (spec,) = describe_outputs(model, {"y": np.array([0.5, 2.5, 1.0])})
    assert spec.task == "regression" and spec.labels_key == "y"


def test_outputs_sort_by_keras_index_not_by_name():
    names = [f"output_{k}" for k in range(12)]
    assert sorted(names, key=natural_key) == names
    assert sorted(names) != names  # what sorting by name did: output_10 before output_2
    mb = ModelBuilder()
    x = mb.tensor("x", (1, 2), scale=0.05)
    outs = [mb.tensor(n, (1, 2), scale=0.05) for n in names]
    for o in outs:
        mb.op("RELU", [x], [o])
    data = mb.build([x], outs)
    from pipeline.runtime.litert import LiteRTModel

    assert LiteRTModel(data).output_names() == names
    assert [s.name for s in describe_outputs(parse_model(data), {})] == names


def _spec(task: str, **kw) -> OutputSpec:
    base = dict(name="out", keras_name=None, index=0, shape=(1, 4), dtype="int8", scale=0.1, zero_point=0,
                task=task, task_reason="", labels_key=None, input_name=None)
    return OutputSpec(**{**base, **kw})


def test_regression_error_relative_to_spread_snr_and_clipping():
    rng = np.random.default_rng(0)
    ref = rng.normal(scale=2.0, size=(500, 4))
    spec = _spec("regression")  # int8 scale 0.1: the range is [-12.8, 12.7]
    got = np.clip(np.round(ref / 0.1) * 0.1, -12.8, 12.7)
    m = output_metrics(spec, ref, got, None, {})
    assert m["error_vs_spread"] == pytest.approx(0.1 / np.sqrt(12) / 2.0, rel=0.1)  # rounding noise
    assert m["snr_db"] == pytest.approx(20 * np.log10(2.0 / (0.1 / np.sqrt(12))), abs=0.5)
    assert m["clipped_fraction"] == 0.0
    saturated = ref * 10  # a head calibrated on a tenth of its range
    m = output_metrics(spec, saturated, np.clip(saturated, -12.8, 12.7), None, {})
    assert m["clipped_fraction"] == pytest.approx(np.mean((saturated < -12.85) | (saturated > 12.75)), abs=1e-6)
    assert m["clipped_fraction"] > 0.3 and m["error_vs_spread"] > 0.1
    y = ref[:, 0] + 1.0
    m = output_metrics(_spec("regression", shape=(1, 1)), ref[:, :1], ref[:, :1], y, {})
    assert m["rmse_float_vs_labels"] == pytest.approx(1.0) and m["rmse_vs_labels"] == pytest.approx(1.0)


def test_reconstruction_error_and_auc_match_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 16))
    flags = (rng.random(300) < 0.3).astype(int)
    ref = x + rng.normal(scale=0.2, size=x.shape) * (1 + 2 * flags[:, None])
    got = ref + rng.normal(scale=0.05, size=x.shape)
    spec = _spec("reconstruction", shape=(1, 16), input_name="x", scale=0.05)
    m = output_metrics(spec, ref, got, flags, {"x": x})
    err_ref, err_got = ((ref - x) ** 2).mean(1), ((got - x) ** 2).mean(1)
    assert m["auc_float"] == pytest.approx(roc_auc_score(flags, err_ref), abs=1e-4)
    assert m["auc"] == pytest.approx(roc_auc_score(flags, err_got), abs=1e-4)
    assert m["reconstruction_error_float"] == pytest.approx(err_ref.mean(), rel=1e-5)
    assert m["auc_drop"] == pytest.approx(m["auc_float"] - m["auc"], abs=1e-4)


def test_classification_per_class_confusion_and_a_one_wide_sigmoid():
    ref = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    got = np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.3, 0.7]])
    y = np.array([0, 1, 0, 0])
    m = output_metrics(_spec("classification", shape=(1, 2)), ref, got, y, {})
    assert (m["accuracy_float"], m["accuracy"], m["top1_agreement"]) == (0.75, 0.5, 0.75)
    assert m["accuracy_drop_points"] == 25.0
    assert m["confusion"] == [[1, 2], [0, 1]]
    assert [(c["class"], c["samples"], c["accuracy"]) for c in m["per_class"]] == [("0", 3, 0.333333), ("1", 1, 1.0)]
    # one probability per sample (a sigmoid): a binary classifier, thresholded at 0.5
    m = output_metrics(_spec("classification", shape=(1, 1)), ref[:, 1:], got[:, 1:], y, {})
    assert m["accuracy"] == 0.5 and m["accuracy_float"] == 0.75
