"""The first op, in execution order, whose output differs between two runtimes of the same
quantized model: what `verify` names when LiteRT's reference kernels and TFLM part ways, and what
`diagnose` reports between any two runtimes (a device over HIL plugs in the same way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import PipelineError
from .layers import OpLayer, map_layers
from .runtime.tensor_capture import RUNTIMES
from .tflite_model import TFLiteModel


@dataclass(frozen=True)
class Divergence:
    between: tuple[str, str]
    op_index: int
    op: str
    keras_layer: str | None
    label: str
    kernel: dict[str, Any]
    max_lsb: float
    differing_fraction: float
    first_difference: dict[str, Any]  # sample, flat element index, both values
    inputs: tuple[dict[str, Any], ...]  # per activation input: producer and agreement
    compared_ops: int

    def to_json(self) -> dict[str, Any]:
        return {"between": list(self.between), "op_index": self.op_index, "op": self.op,
                "keras_layer": self.keras_layer, "label": self.label, "kernel": self.kernel,
                "max_lsb": self.max_lsb, "differing_fraction": round(self.differing_fraction, 6),
                "first_difference": self.first_difference, "inputs": list(self.inputs),
                "inputs_identical": all(i["identical"] for i in self.inputs),
                "compared_ops": self.compared_ops}


def first_divergence(a: dict[int, np.ndarray], b: dict[int, np.ndarray], model: TFLiteModel, *,
                     tolerance: float = 0, names: tuple[str, str] = ("a", "b"),
                     layers: list[OpLayer] | None = None) -> Divergence | None:
    """The first op, in execution order, whose output differs between `a` and `b` (per op
    index, (N, ...) raw values as each runtime produced them) by more than `tolerance` (in
    steps of the output's quantization, or absolute for float outputs). Ops missing from either
    side (a device that returns only the tensors that fit) are skipped. Any runtime that can
    return op outputs plugs in: LiteRT, TFLM, a device over HIL."""
    sg = model.main
    producer = {t: op.index for op in sg.operators for t in op.outputs}
    layers = layers or map_layers(model)
    compared = 0
    for op, layer in zip(sg.operators, layers):
        if op.index not in a or op.index not in b:
            continue
        compared += 1
        x, y = np.asarray(a[op.index]), np.asarray(b[op.index])
        if x.shape != y.shape:
            raise PipelineError(f"op {op.index} {op.op}: {names[0]} returned shape {x.shape}, "
                                f"{names[1]} {y.shape}", field="first divergence",
                                fix="compare outputs of the same model")
        diff = np.abs(x.astype(np.float64) - y.astype(np.float64))
        worst = float(diff.max()) if diff.size else 0.0
        if worst <= tolerance:
            continue
        flat = diff.reshape(len(diff), -1) if diff.ndim > 1 else diff.reshape(len(diff), 1)
        sample, element = np.unravel_index(int(np.argmax(flat > tolerance)), flat.shape)
        xs, ys = x.reshape(flat.shape), y.reshape(flat.shape)
        inputs = []
        for t in op.inputs:
            if t < 0 or sg.tensors[t].is_constant:
                continue
            k = producer.get(t)
            if k is None:
                inputs.append({"tensor": t, "from": "graph input", "identical": True,
                               "max_lsb": 0.0, "note": "the same bytes were fed to both"})
            elif k in a and k in b:
                d = float(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)).max())
                inputs.append({"tensor": t, "from": f"op {k} {sg.operators[k].op}",
                               "identical": d == 0.0, "max_lsb": d})
            else:
                inputs.append({"tensor": t, "from": f"op {k} {sg.operators[k].op}",
                               "identical": None, "max_lsb": None, "note": "not returned by both"})
        return Divergence(
            between=names, op_index=op.index, op=op.op, keras_layer=layer.keras_layer,
            label=layer.label(), kernel=_kernel(op, names), max_lsb=worst,
            differing_fraction=float(np.mean(diff > tolerance)),
            first_difference={"sample": int(sample), "element": int(element),
                              names[0]: xs[sample, element].item(), names[1]: ys[sample, element].item()},
            inputs=tuple(inputs), compared_ops=compared)
    return None


def _kernel(op, names: tuple[str, str]) -> dict[str, Any]:
    kernel: dict[str, Any] = {"op": op.op, "version": op.version}
    try:
        from .rules.tflm import table

        kernel["tflm_resolver_method"] = table()["ops"].get(op.op, {}).get("method")
    except (ImportError, KeyError, OSError):  # the check package is being moved; optional
        pass
    from .runtime.device import DEVICE_DESCRIPTION, DEVICE_RUNTIME

    kernel["runtimes"] = {n: RUNTIMES.get(n) or (DEVICE_DESCRIPTION if n == DEVICE_RUNTIME else n) for n in names}
    return kernel


