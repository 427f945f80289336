"""Which ops of a converted model are a deployment problem by construction, the Keras layer they
came from, and the replacement that maps: ops the converter left in float (wrapped in
DEQUANTIZE/QUANTIZE), and ops with no integer kernel on either target (GELU).

The replacements are data (`layer_fixes.json`, stamped with how they were found), looked up by
the layer's class first (it names the better fix: LayerNormalization -> BatchNormalization
rather than "NEG"), then by its activation, then by the op. No TensorFlow import.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from .layers import KerasModelLayers, OpLayer
from .tflite_model import TFLiteModel

TABLE_PATH = Path(__file__).with_name("layer_fixes.json")
_QUANT_WRAPPERS = {"QUANTIZE", "DEQUANTIZE"}
_FLOAT_TYPES = {"float32", "float16"}


@cache
def table() -> dict[str, Any]:
    return json.loads(TABLE_PATH.read_text())


@dataclass(frozen=True)
class LayerFix:
    op_index: int
    op: str
    keras_layer: str | None
    layer_class: str | None
    activation: str | None
    in_float: bool  # the op computes in float in the quantized model
    why: str
    replacement: str
    label: str  # "op 3 NEG (layer `layer_normalization`, LayerNormalization)"

    def to_json(self) -> dict[str, Any]:
        return {"op_index": self.op_index, "op": self.op, "keras_layer": self.keras_layer,
                "layer_class": self.layer_class, "activation": self.activation, "in_float": self.in_float,
                "why": self.why, "replacement": self.replacement, "label": self.label}

    def sentence(self) -> str:
        state = "stayed float" if self.in_float else "has no integer kernel on either target"
        return f"{self.label} {state}: {self.why} (fix: {self.replacement})"


def float_op_indices(model: TFLiteModel) -> list[int]:
    """Ops that read or write a non-constant float tensor, QUANTIZE/DEQUANTIZE aside (they are
    the converter's wrapping of such an op, or the model's float I/O)."""
    sg = model.main
    found = []
    for op in sg.operators:
        if op.op in _QUANT_WRAPPERS:
            continue
        touched = [sg.tensors[i] for i in op.inputs + op.outputs if i >= 0]
        if any(t.dtype in _FLOAT_TYPES and not t.is_constant for t in touched):
            found.append(op.index)
    return found


def layer_fixes(model: TFLiteModel, op_layers: list[OpLayer], keras: KerasModelLayers | None,
                *, float_ops: list[int] | None = None) -> list[LayerFix]:
    """One entry per op that stayed float or that the table names (GELU), in op order."""
    floats = set(float_op_indices(model) if float_ops is None else float_ops)
    t = table()
    fixes = []
    for op, layer in zip(model.main.operators, op_layers):
        activation = None
        if keras is not None and layer.keras_layer in keras.layers:
            activation = keras.layers[layer.keras_layer].activation
        entry = (t["by_class"].get(layer.layer_class or "") or t["by_activation"].get(activation or "")
                 or t["by_op"].get(op.op))
        if op.index not in floats and op.op not in t["by_op"]:
            continue
        if entry is None:
            entry = {"why": f"{op.op} has no integer kernel in this model",
                     "replacement": "replace the layer with one that has integer kernels, or move the computation "
                                    "out of the model (pre/post-processing on the host)"}
        fixes.append(LayerFix(op_index=op.index, op=op.op, keras_layer=layer.keras_layer,
                              layer_class=layer.layer_class, activation=activation,
                              in_float=op.index in floats, why=entry["why"], replacement=entry["replacement"],
                              label=layer.label()))
    return fixes
