"""Every model output scored with the metrics of its task, float against quantized.

A model's outputs are not all classifiers: a regression head, a reconstruction (autoencoder) or
several heads at once are as common on MCUs. Each output gets a task, detected from the model and
the labels (or given with `--task NAME=TASK`):
  classification  a SOFTMAX or LOGISTIC produces it, or integer labels fit its width;
  reconstruction  its shape is one of the inputs' (an autoencoder reproduces its input);
  regression      anything else.
Labels: `y_<output>` (Keras output name or signature name) per output; `y` belongs to the only
output, or else to the first output it fits (class ids -> a classifier, 0/1 -> anomaly flags of
a reconstruction).

Metrics (quantized values are dequantized with the output's own scale):
  classification  top-1 agreement with float; with labels accuracy float/quantized, the drop in
                  points, per-class accuracy and the quantized confusion matrix (rows: label);
  regression      RMSE quantized vs float, that RMSE relative to the float output's spread
                  (its standard deviation over the samples, per element), SNR in dB, the share
                  of float values outside the quantized output's range (clipped there); with
                  labels, RMSE of each against them;
  reconstruction  reconstruction error (per-sample MSE against the input) float/quantized, the
                  regression numbers above, and with anomaly labels (1 = anomaly) the AUC of the
                  reconstruction error for each and its drop.
Outputs are ordered by Keras output index (the export names output k `output_k`; names are
sorted by their numbers, so output_10 follows output_9).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import PipelineError
from .tflite_model import Tensor, TFLiteModel

TASKS = ("classification", "regression", "reconstruction")
PROBABILITY_OPS = {"SOFTMAX", "LOGISTIC"}
_PASS_THROUGH = {"QUANTIZE", "DEQUANTIZE", "RESHAPE", "SQUEEZE"}
_MAX_CONFUSION_CLASSES = 32
_EPS = 1e-20


def natural_key(name: str) -> list:
    """`output_2` before `output_10`."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def parse_task_overrides(specs: Sequence[str] | str | None) -> dict[str, str]:
    """`--task output_0=regression` (repeatable, or comma-separated) -> {name: task}."""
    if not specs:
        return {}
    if isinstance(specs, str):
        specs = [specs]
    out = {}
    for spec in specs:
        for part in str(spec).split(","):
            name, sep, task = part.strip().partition("=")
            if not sep or not name or task not in TASKS:
                raise PipelineError(f"'{part.strip()}' is not OUTPUT=TASK", field="--task",
                                    fix=f"e.g. --task output_0=regression; tasks: {', '.join(TASKS)}")
            out[name.strip()] = task
    return out


@dataclass(frozen=True)
class OutputSpec:
    """One model output as it is evaluated."""

    name: str  # the signature name runtimes key it by
    keras_name: str | None  # the Keras output (layer) name, when the Keras model is known
    index: int  # position in Keras output order
    shape: tuple[int, ...]
    dtype: str
    scale: float | None
    zero_point: int | None
    task: str
    task_reason: str
    labels_key: str | None  # which array of the samples holds its labels
    input_name: str | None  # reconstruction: the input it reproduces

    @property
    def label(self) -> str:
        return f"`{self.keras_name}`" if self.keras_name else f"`{self.name}`"

    @property
    def bits(self) -> int | None:
        return {"int8": 8, "uint8": 8, "int16": 16, "int32": 32}.get(self.dtype)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "keras_name": self.keras_name, "index": self.index, "shape": list(self.shape),
                "dtype": self.dtype, "task": self.task, "task_reason": self.task_reason,
                "labels": self.labels_key, "reproduces_input": self.input_name}


def keras_output_names(names: Sequence[str], keras_outputs: Sequence[str] | None) -> dict[str, str | None]:
    """Signature output name -> Keras output name: `output_k` is Keras output k (Keras'
    export), or the signature uses the Keras names themselves."""
    out: dict[str, str | None] = {n: None for n in names}
    if not keras_outputs:
        return out
    for n in names:
        if n in keras_outputs:
            out[n] = n
        elif (m := re.fullmatch(r"output_(\d+)", n)) and int(m.group(1)) < len(keras_outputs):
            out[n] = keras_outputs[int(m.group(1))]
    return out


def _producer(model: TFLiteModel, tensor_index: int) -> str | None:
    """The op that makes a tensor, looking through requantization and reshapes."""
    producers = {t: op for op in model.main.operators for t in op.outputs}
    seen = 0
    while (op := producers.get(tensor_index)) is not None and seen < 8:
        if op.op not in _PASS_THROUGH:
            return op.op
        tensor_index = op.inputs[0]
        seen += 1
    return None


def describe_outputs(model: TFLiteModel, labels: dict[str, np.ndarray], *,
                     keras_outputs: Sequence[str] | None = None,
                     overrides: dict[str, str] | None = None) -> list[OutputSpec]:
    """Each output's task and labels, in Keras output order. `labels` maps `y` / `y_<name>` to
    arrays (N,) or (N, ...)."""
    overrides = dict(overrides or {})
    names = model.output_names()
    keras_names = keras_output_names(names, keras_outputs)
    tensors = dict(zip(names, model.main.output_tensors()))
    input_shapes = {tuple(t.shape[1:]): n for n, t in zip(model.input_names(), model.main.input_tensors())}
    known = set(names) | {k for k in keras_names.values() if k}
    unknown = [k for k in overrides if k not in known]
    if unknown:
        raise PipelineError(f"--task names {', '.join(unknown)}, not an output of the model", field="--task",
                            fix=f"use one of {', '.join(sorted(known, key=natural_key))}")
    order = sorted(names, key=lambda n: natural_key(n))
    specs = []
    y_taken = False
    for index, name in enumerate(order):
        t = tensors[name]
        keras_name = keras_names[name]
        key = next((k for k in (f"y_{keras_name}" if keras_name else None, f"y_{name}") if k and k in labels), None)
        width = int(np.prod(t.shape[1:])) if t.shape[1:] else 1
        task, reason = _detect(model, t, width, input_shapes, labels.get(key) if key else labels.get("y"))
        forced = overrides.get(name) or overrides.get(keras_name or "")
        if forced:
            task, reason = forced, "given with --task"
        if key is None and "y" in labels and not y_taken:
            if len(names) == 1 or _fits(task, labels["y"], width):
                key, y_taken = "y", True
        specs.append(OutputSpec(
            name=name, keras_name=keras_name, index=index, shape=tuple(t.shape), dtype=t.dtype, scale=t.scale,
            zero_point=t.zero_point, task=task, task_reason=reason, labels_key=key,
            input_name=input_shapes.get(tuple(t.shape[1:])) if task == "reconstruction" else None))
    return specs


def _detect(model: TFLiteModel, t: Tensor, width: int, input_shapes: dict, labels) -> tuple[str, str]:
    producer = _producer(model, t.index)
    if producer in PROBABILITY_OPS:
        return "classification", f"{producer} produces it"
    if tuple(t.shape[1:]) in input_shapes:
        return "reconstruction", f"same shape as input '{input_shapes[tuple(t.shape[1:])]}'"
    if labels is not None and _integer_labels(labels) and width > 1 and labels.max() < width:
        return "classification", "integer labels fit its width"
    return "regression", "not a probability, not an input's shape"


def _integer_labels(labels: np.ndarray) -> bool:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        return False
    return labels.dtype.kind in "iub" or bool(np.all(labels == np.round(labels)) and labels.min() >= 0)


def _fits(task: str, labels: np.ndarray, width: int) -> bool:
    if task == "classification":
        return _integer_labels(labels) and labels.max() < max(width, 2)
    if task == "reconstruction":
        return _integer_labels(labels) and set(np.unique(labels).tolist()) <= {0, 1}
    return False


# --- metrics ----------------------------------------------------------------------------------------

def _r(x: float | None, digits: int = 6) -> float | None:
    if x is None or not np.isfinite(x):
        return None
    return round(float(x), digits)


def representable_range(spec: OutputSpec) -> tuple[float, float] | None:
    if spec.scale is None or spec.bits is None:
        return None
    info = np.iinfo({"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "int32": np.int32}[spec.dtype])
    return (info.min - spec.zero_point) * spec.scale, (info.max - spec.zero_point) * spec.scale


def _predictions(values: np.ndarray) -> np.ndarray:
    flat = values.reshape(len(values), -1)
    if flat.shape[1] == 1:  # one sigmoid probability: a binary classifier
        return (flat[:, 0] > 0.5).astype(np.int64)
    return flat.argmax(axis=1)


def _auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of `scores` for `positive` (Mann-Whitney, ties averaged)."""
    positive = positive.astype(bool)
    n1, n0 = int(positive.sum()), int((~positive).sum())
    if n1 == 0 or n0 == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average the ranks of ties
        tie = scores == value
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _deviation(spec: OutputSpec, ref: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    ref = ref.reshape(len(ref), -1).astype(np.float64)
    got = got.reshape(len(got), -1).astype(np.float64)
    mse = float(np.mean((got - ref) ** 2))
    spread = float(np.sqrt(np.mean(ref.var(axis=0)))) if len(ref) > 1 else 0.0
    signal = float(np.mean(ref.var(axis=0))) if len(ref) > 1 else float(np.mean(ref ** 2))
    out = {"rmse_vs_float": _r(np.sqrt(mse)), "float_spread": _r(spread),
           "error_vs_spread": _r(np.sqrt(mse) / spread) if spread > 0 else (0.0 if mse == 0 else None),
           "snr_db": _r(min(10 * np.log10(max(signal, _EPS) / max(mse, _EPS)), 140.0), 3),
           "max_abs_error": _r(float(np.abs(got - ref).max()) if ref.size else 0.0)}
    rng = representable_range(spec)
    if rng is not None:
        half = 0.5 * (spec.scale or 0.0)
        out["clipped_fraction"] = _r(float(np.mean((ref < rng[0] - half) | (ref > rng[1] + half))))
        out["quantized_range"] = [_r(rng[0]), _r(rng[1])]
    else:
        out["clipped_fraction"] = None
        out["quantized_range"] = None
    return out


def output_metrics(spec: OutputSpec, reference: np.ndarray, got: np.ndarray, labels: np.ndarray | None,
                   inputs: dict[str, np.ndarray], class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """`got` (quantized, dequantized) against `reference` (float), on the same samples."""
    m: dict[str, Any] = {"task": spec.task, "samples": int(len(reference)), "labelled": labels is not None}
    if spec.task == "classification":
        ref_top, got_top = _predictions(reference), _predictions(got)
        m["top1_agreement"] = _r(float(np.mean(ref_top == got_top)))
        m.update(_deviation(spec, reference, got))
        m.pop("clipped_fraction")  # probabilities end at the range on purpose
        if labels is not None:
            y = np.asarray(labels).reshape(-1).astype(np.int64)
            m["accuracy_float"] = _r(float(np.mean(ref_top == y)))
            m["accuracy"] = _r(float(np.mean(got_top == y)))
            m["accuracy_drop_points"] = _r(100 * (m["accuracy_float"] - m["accuracy"]), 3)
            classes = max(int(y.max()) + 1, int(reference.reshape(len(reference), -1).shape[1]), 2)
            per_class = []
            for k in range(classes):
                mask = y == k
                if mask.any():
                    per_class.append({"class": class_names[k] if class_names and k < len(class_names) else str(k),
                                      "samples": int(mask.sum()),
                                      "accuracy_float": _r(float(np.mean(ref_top[mask] == k))),
                                      "accuracy": _r(float(np.mean(got_top[mask] == k)))})
            m["per_class"] = per_class
            m["confusion"] = (np.bincount(y * classes + np.clip(got_top, 0, classes - 1),
                                          minlength=classes * classes).reshape(classes, classes).tolist()
                              if classes <= _MAX_CONFUSION_CLASSES else None)
        return m
    m.update(_deviation(spec, reference, got))
    if spec.task == "regression":
        if labels is not None and np.asarray(labels).size == reference.size:
            y = np.asarray(labels, dtype=np.float64).reshape(reference.shape)
            m["rmse_float_vs_labels"] = _r(np.sqrt(np.mean((reference - y) ** 2)))
            m["rmse_vs_labels"] = _r(np.sqrt(np.mean((got - y) ** 2)))
        return m
    x = inputs.get(spec.input_name) if spec.input_name else None
    if x is not None:
        err_ref = ((reference - x) ** 2).reshape(len(x), -1).mean(axis=1)
        err_got = ((got - x) ** 2).reshape(len(x), -1).mean(axis=1)
        m["reconstruction_error_float"] = _r(float(err_ref.mean()))
        m["reconstruction_error"] = _r(float(err_got.mean()))
        if labels is not None and _fits("reconstruction", np.asarray(labels).reshape(-1), 0):
            flags = np.asarray(labels).reshape(-1)
            m["auc_float"] = _r(_auc(err_ref, flags), 4)
            m["auc"] = _r(_auc(err_got, flags), 4)
            m["auc_drop"] = _r(m["auc_float"] - m["auc"], 4) if None not in (m["auc_float"], m["auc"]) else None
    return m


def primary_accuracy(metrics: dict[str, dict[str, Any]], specs: Sequence[OutputSpec]) -> float | None:
    """The accuracy of the first labelled classification output (a backend's one number)."""
    for s in specs:
        m = metrics.get(s.name) or {}
        if s.task == "classification" and m.get("accuracy") is not None:
            return m["accuracy"]
    return None


# --- what the verdict uses -------------------------------------------------------------------------

@dataclass(frozen=True)
class Gate:
    metric: str
    label: str
    limit: float
    higher_is_better: bool
    unit: str = ""

    def passed(self, value: float | None) -> bool:
        if value is None:
            return True
        return value >= self.limit if self.higher_is_better else value <= self.limit


def gates(spec: OutputSpec, metrics: dict[str, Any], thresholds) -> list[Gate]:
    """The metrics a verdict on this output uses, with the limit each must meet."""
    if spec.task == "classification":
        out = [Gate("top1_agreement", "top-1 agreement with float", thresholds.min_top1_agreement, True, "ratio")]
        if metrics.get("accuracy_drop_points") is not None:
            out.append(Gate("accuracy_drop_points", "accuracy drop from float", thresholds.max_accuracy_drop_points,
                            False, "points"))
        return out
    out = [Gate("error_vs_spread", "RMSE vs float relative to the output's spread", thresholds.max_error_vs_spread,
                False, "ratio")]
    if metrics.get("clipped_fraction") is not None:
        out.append(Gate("clipped_fraction", "share of float values clipped at the quantized range",
                        thresholds.max_clipped_fraction, False, "ratio"))
    if spec.task == "reconstruction" and metrics.get("auc_drop") is not None:
        out.append(Gate("auc_drop", "anomaly AUC drop from float", thresholds.max_auc_drop, False, "AUC"))
    return out


def format_value(gate: Gate, value: float | None) -> str:
    if value is None:
        return "n/a"
    if gate.unit == "points":
        return f"{value:+.2f} points"
    if gate.metric == "top1_agreement":
        return f"{100 * value:.2f}%"
    if gate.metric == "clipped_fraction":
        return f"{100 * value:.2f}%"
    return f"{value:.4g}"


def format_limit(gate: Gate) -> str:
    word = "at least" if gate.higher_is_better else "at most"
    if gate.metric in ("top1_agreement", "clipped_fraction"):
        return f"{word} {100 * gate.limit:.4g}%"
    if gate.unit == "points":
        return f"{word} {gate.limit:g} points"
    return f"{word} {gate.limit:g}"
