"""Which Keras layer each op of a converted model came from.

The TF converter leaves the Keras name scopes in the tensor names: an op's output tensor is
named by the TF ops it was fused from, `;`-separated, e.g.
`mobilenetv2_0.35_96_1/Conv1_relu_1/Relu6;mobilenetv2_0.35_96_1/Conv1_1/convolution` (Keras 3's
`model.export` adds `_<n>` to every scope: `Conv1_1` is layer `Conv1`). Constant inputs (weights,
biases) are named the same way. Ops whose output lost its name (the model output is renamed
`StatefulPartitionedCall_1:0`, inserted QUANTIZE/DEQUANTIZE are `tfl.quantize`) take the layer
of the op next to them in the graph. What TF 2.21 does NOT give: `serialize_debug_metadata`
writes op locations into the float model only; the int8 quantizer drops them, so tensor names
are the only trace left in a quantized model.

A Keras model (`.keras`), when given, confirms each name: its `config.json` is read directly
(no Keras import and no deserialisation, so a `Lambda` cannot run code), giving real layer
paths, classes and the layer graph (which layers were folded away, e.g. BatchNormalization
into the convolution before it).
"""

from __future__ import annotations

import json
import re
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from .errors import PipelineError
from .tflite_model import TFLiteModel

TABLE_PATH = Path(__file__).with_name("keras_layer_ops.json")

MATCH_CONFIRMED = "confirmed by the Keras model"
MATCH_TENSOR_NAME = "tensor name"
MATCH_WEIGHT_NAME = "weight name"
MATCH_NEIGHBOUR = "graph neighbour"
MATCH_NOT_FOUND = "not found"

_EXPORT_SUFFIX = re.compile(r"^(.*)_\d+$")  # Keras 3 export: scope `conv1_1` is layer `conv1`
_TRAILING_COUNTER = re.compile(r"^(.*?[A-Za-z_])\d+$")  # `convolution1`: the converter's dedup
_OUTPUT_PORT = re.compile(r":\d+$")
# Ops whose unnamed output belongs to the op they serve: a DEQUANTIZE feeds a float consumer,
# a QUANTIZE quantizes a float producer's result. Every other op looks at its producer first.
_CONSUMER_FIRST = {"DEQUANTIZE"}
# Layers that leave no op of their own: their work is folded into a neighbour or removed.
_NO_OP_CLASSES = {"InputLayer"}


@cache
def _table() -> dict[str, Any]:
    return json.loads(TABLE_PATH.read_text())


@dataclass(frozen=True)
class KerasLayer:
    path: str  # "encoder/layer_norm_1": names from the root model down, root excluded
    class_name: str
    activation: str | None = None
    inbound: tuple[str, ...] = ()  # paths of the layers feeding it


@dataclass(frozen=True)
class KerasModelLayers:
    """Every layer of a Keras model by path, nested models included."""

    name: str
    source: str
    layers: dict[str, KerasLayer]

    def children(self, prefix: str) -> dict[str, str]:
        """Direct sub-layer names of the layer at `prefix` ("" = the root) -> their paths."""
        return self._children().get(prefix, {})

    def _children(self) -> dict[str, dict[str, str]]:
        cached = self.__dict__.get("_kids")
        if cached is None:
            cached = {}
            for path in self.layers:
                parent, _, leaf = path.rpartition("/")
                cached.setdefault(parent, {})[leaf] = path
            object.__setattr__(self, "_kids", cached)
        return cached


@dataclass(frozen=True)
class OpLayer:
    """One op and the Keras layer it came from."""

    op_index: int
    op: str
    keras_layer: str | None
    layer_class: str | None  # None without a Keras model, or when not found in it
    match: str  # one of the MATCH_* strings
    evidence: str  # the tensor name or neighbour op the match rests on
    fused_layers: tuple[str, ...] = field(default=())  # other layers folded into this op

    def label(self) -> str:
        """`op 3 NEG (layer `encoder/layer_norm_1`, LayerNormalization)`."""
        return op_label(self.op_index, self.op, self.keras_layer, self.layer_class)

    def to_json(self) -> dict[str, Any]:
        return {"op_index": self.op_index, "op": self.op, "keras_layer": self.keras_layer,
                "layer_class": self.layer_class, "match": self.match, "evidence": self.evidence,
                "fused_layers": list(self.fused_layers)}


def op_label(index: int, op: str, keras_layer: str | None, layer_class: str | None = None) -> str:
    """How every message names an op: `op 3 NEG (layer `encoder/layer_norm_1`,
    LayerNormalization)`; the class only when a Keras model confirmed the layer."""
    if keras_layer is None:
        return f"op {index} {op} (no Keras layer found)"
    cls = f", {layer_class}" if layer_class else ""
    return f"op {index} {op} (layer `{keras_layer}`{cls})"


# --- the Keras model's own layer list -------------------------------------------------------

def read_keras_layers(path: str | Path, option: str = "--keras-model") -> KerasModelLayers:
    """Layer paths and classes from a `.keras` file's `config.json` (or an `.h5` file's
    `model_config` attribute), without loading the model."""
    path = Path(path)
    fix = "pass the .keras file the model was converted from (Keras 3 `model.save('m.keras')`)"
    if path.suffix in (".h5", ".hdf5"):
        return keras_layers_from_config(_h5_config(path, option, fix), source=str(path))
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except FileNotFoundError:
        raise PipelineError("no such file", path=path, field=option, fix=fix) from None
    except (zipfile.BadZipFile, IsADirectoryError):
        raise PipelineError("not a .keras archive (a zip with config.json)", path=path,
                            field=option, fix=fix) from None
    except KeyError:
        raise PipelineError("the archive has no config.json: not a Keras 3 model", path=path,
                            field=option, fix=fix) from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PipelineError("config.json is not valid JSON", path=path, field=option,
                            fix=fix) from None
    return keras_layers_from_config(config, source=str(path))


def _h5_config(path: Path, option: str, fix: str) -> dict[str, Any]:
    import h5py  # comes with Keras; deferred like every heavy import

    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
    except FileNotFoundError:
        raise PipelineError("no such file", path=path, field=option, fix=fix) from None
    except OSError:
        raise PipelineError("not an HDF5 file", path=path, field=option, fix=fix) from None
    if raw is None:
        raise PipelineError("the HDF5 file has no model_config: weights only, no model",
                            path=path, field=option, fix=fix)
    try:
        return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PipelineError("model_config is not valid JSON", path=path, field=option,
                            fix=fix) from None


def keras_layers_from_config(config: dict[str, Any], source: str = "Keras config") -> KerasModelLayers:
    """From a serialised model: `config.json` of a `.keras` file, or
    `keras.saving.serialize_keras_object(model)`."""
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise PipelineError("the Keras config has no 'config' object", path=source,
                            field="config.json", fix="pass a model saved by Keras 3")
    layers: dict[str, KerasLayer] = {}
    _collect_layers(config, "", layers)
    return KerasModelLayers(name=str(config["config"].get("name", "")), source=source, layers=layers)


def _collect_layers(model_config: dict[str, Any], prefix: str, out: dict[str, KerasLayer]) -> None:
    entries = model_config.get("config", {}).get("layers") or []
    sequential = model_config.get("class_name") == "Sequential"
    previous: str | None = None
    for entry in entries:
        cfg = entry.get("config", {})
        name = str(cfg.get("name") or entry.get("name") or "")
        if not name:
            continue
        path = f"{prefix}/{name}" if prefix else name
        if sequential:
            inbound = (previous,) if previous else ()
        else:
            inbound = tuple(f"{prefix}/{n}" if prefix else n
                            for n in _inbound_layer_names(entry.get("inbound_nodes") or []))
        activation = cfg.get("activation")
        out[path] = KerasLayer(path=path, class_name=str(entry.get("class_name", "")),
                               activation=activation if isinstance(activation, str) else None,
                               inbound=inbound)
        if isinstance(cfg.get("layers"), list):
            _collect_layers(entry, path, out)
        previous = path


def _inbound_layer_names(nodes: Any) -> list[str]:
    """Layer names in `keras_history` entries, wherever Keras 3 nests them in a node."""
    names: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, list) and len(value) >= 3 and isinstance(value[0], str) and \
                all(isinstance(v, int) for v in value[1:3]):
            names.append(value[0])  # Keras 2 node: [layer_name, node_index, tensor_index, {}]
            return
        if isinstance(value, dict):
            history = value.get("keras_history")
            if isinstance(history, list) and history:
                names.append(str(history[0]))
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(nodes)
    return list(dict.fromkeys(names))


# --- names the converter leaves -------------------------------------------------------------

def name_scopes(tensor_name: str) -> list[tuple[tuple[str, ...], str]]:
    """(scope components, TF op name) for each `;`-part of a tensor name that has a scope."""
    out = []
    for part in tensor_name.split(";"):
        part = _OUTPUT_PORT.sub("", part.strip())
        components = part.split("/")
        if len(components) >= 2 and all(components):
            out.append((tuple(components[:-1]), components[-1]))
    return out


def _strip_suffix(component: str) -> str:
    m = _EXPORT_SUFFIX.match(component)
    return m.group(1) if m else component


def _op_names(leaf: str) -> set[str]:
    """The TF op name as written and without the converter's dedup counter (`convolution1`);
    both, since `Relu6` ends in a digit of its own."""
    m = _TRAILING_COUNTER.match(leaf)
    return {leaf, m.group(1)} if m else {leaf}


class _ScopeResolver:
    """Scope components -> (layer path, confirmed), by the Keras model when given, else by the
    Keras 3 export pattern (every layer scope ends in `_<n>`, TF-internal scopes do not)."""

    def __init__(self, model: TFLiteModel, keras: KerasModelLayers | None):
        self.keras = keras
        roots = Counter(scope[0] for t in model.main.tensors for scope, _ in name_scopes(t.name))
        self.root_scope = roots.most_common(1)[0][0] if roots else None
        self.suffixed = bool(self.root_scope and _EXPORT_SUFFIX.match(self.root_scope)
                             and (keras is None or _strip_suffix(self.root_scope) == keras.name))

    def resolve(self, scope: tuple[str, ...]) -> tuple[str | None, bool]:
        """A name the Keras model does not have keeps its name-only reading, unconfirmed."""
        if self.keras is not None:
            path, confirmed = self._by_keras(scope)
            if path is not None:
                return path, confirmed
        return self._by_pattern(scope), False

    def _by_pattern(self, scope: tuple[str, ...]) -> str | None:
        if not self.suffixed and scope and scope[0] != self.root_scope:
            # a scope beside the model's root (TF1 graphs: `aspp0/BatchNorm_Fold` next to
            # `MobilenetV2/...`) is a top-level layer of its own, not a part of the root
            return scope[0]
        if len(scope) < 2:
            return None
        inner = scope[1:]
        if not self.suffixed:  # no export suffix: nested layers cannot be told from TF scopes
            return inner[0]
        parts = []
        for component in inner:
            if not _EXPORT_SUFFIX.match(component):
                break
            parts.append(_strip_suffix(component))
        return "/".join(parts) if parts else None

    def _by_keras(self, scope: tuple[str, ...]) -> tuple[str | None, bool]:
        keras = self.keras
        assert keras is not None
        first = scope[0]
        inner = scope[1:] if first in (keras.name, self.root_scope) or \
            _strip_suffix(first) == keras.name else scope
        prefix, found = "", None
        for component in inner:
            kids = keras.children(prefix)
            options = (_strip_suffix(component), component) if self.suffixed else \
                (component, _strip_suffix(component))
            nxt = next((kids[o] for o in options if o in kids), None)
            if nxt is None:
                break
            prefix = found = nxt
        return found, found is not None


# --- ops -> layers --------------------------------------------------------------------------

@dataclass
class _Candidate:
    path: str
    op_names: set[str]
    confirmed: bool
    source: str  # MATCH_TENSOR_NAME | MATCH_WEIGHT_NAME
    tensor: str


def map_layers(model: TFLiteModel,
               keras: KerasModelLayers | str | Path | None = None) -> list[OpLayer]:
    """The Keras layer of every op of the model's main subgraph, in op order."""
    if isinstance(keras, (str, Path)):
        keras = read_keras_layers(keras)
    resolver = _ScopeResolver(model, keras)
    sg = model.main
    table = _table()
    found: dict[int, OpLayer] = {}
    for op in sg.operators:
        candidates = _candidates(op, sg, resolver)
        if candidates:
            found[op.index] = _choose(op, candidates, keras, table)
    producers, consumers = _graph(sg)
    result = []
    for op in sg.operators:  # forward: producers are settled before their consumers
        if op.index not in found:
            hit = _neighbour(op, found, producers, consumers, keras)
            if hit is not None:
                found[op.index] = hit
    for op in reversed(sg.operators):  # backward: an unnamed op at the front takes its consumer's
        if op.index not in found:
            hit = _neighbour(op, found, producers, consumers, keras)
            if hit is not None:
                found[op.index] = hit
    for op in sg.operators:
        result.append(found.get(op.index) or OpLayer(op.index, op.op, None, None, MATCH_NOT_FOUND,
                                                     "no tensor of the op names a layer"))
    if keras is not None:
        result = _add_folded_layers(result, keras)
    return result


def _candidates(op, sg, resolver: _ScopeResolver) -> list[_Candidate]:
    out: list[_Candidate] = []
    seen: set[str] = set()
    sources = [(i, MATCH_TENSOR_NAME) for i in op.outputs] + \
        [(i, MATCH_WEIGHT_NAME) for i in op.inputs if i >= 0 and sg.tensors[i].is_constant]
    for index, source in sources:
        name = sg.tensors[index].name
        for scope, leaf in name_scopes(name):
            path, confirmed = resolver.resolve(scope)
            if path and path not in seen:
                seen.add(path)
                out.append(_Candidate(path, _op_names(leaf), confirmed, source, name))
    return out


def _choose(op, candidates: list[_Candidate], keras: KerasModelLayers | None, table) -> OpLayer:
    primary = None
    if keras is not None:
        classes = set(table["primary_classes"].get(op.op, ()))
        confirmed = [c for c in candidates if c.confirmed]
        primary = next((c for c in confirmed if keras.layers[c.path].class_name in classes), None) \
            or (confirmed[0] if confirmed else None)
    if primary is None:
        tf_ops = set(table["primary_tf_ops"].get(op.op, ()))
        primary = next((c for c in candidates if c.op_names & tf_ops), candidates[0])
    layer = keras.layers.get(primary.path) if keras is not None else None
    fused = tuple(c.path for c in candidates if c.path != primary.path and
                  (keras is None or c.confirmed))
    return OpLayer(op.index, op.op, primary.path, layer.class_name if layer else None,
                   MATCH_CONFIRMED if primary.confirmed else primary.source, primary.tensor, fused)


def _graph(sg) -> tuple[dict[int, int], dict[int, list[int]]]:
    producers: dict[int, int] = {}
    consumers: dict[int, list[int]] = {}
    for op in sg.operators:
        for t in op.outputs:
            producers[t] = op.index
        for t in op.inputs:
            if t >= 0:
                consumers.setdefault(t, []).append(op.index)
    return producers, consumers


def _neighbour(op, found, producers, consumers, keras) -> OpLayer | None:
    def from_producer():
        for t in op.inputs:
            k = producers.get(t)
            if k is not None and k in found and found[k].keras_layer:
                return k, "producer"
        return None

    def from_consumer():
        for t in op.outputs:
            for k in consumers.get(t, []):
                if k in found and found[k].keras_layer:
                    return k, "consumer"
        return None

    order = (from_consumer, from_producer) if op.op in _CONSUMER_FIRST else (from_producer, from_consumer)
    for look in order:
        hit = look()
        if hit:
            k, role = hit
            other = found[k]
            return OpLayer(op.index, op.op, other.keras_layer, other.layer_class, MATCH_NEIGHBOUR,
                           f"op {k} {found[k].op} ({role})")
    return None


def _add_folded_layers(result: list[OpLayer], keras: KerasModelLayers) -> list[OpLayer]:
    """Keras layers no op names (a BatchNormalization folded into its convolution, a Dropout
    removed) join the op of the layer feeding them, so every layer is accounted for."""
    owner: dict[str, int] = {}
    for r in result:
        for path in (r.keras_layer, *r.fused_layers):
            if path and r.match != MATCH_NEIGHBOUR:
                owner.setdefault(path, r.op_index)
    extra: dict[int, list[str]] = {}
    changed = True
    while changed:
        changed = False
        for layer in keras.layers.values():
            if layer.path in owner or layer.class_name in _NO_OP_CLASSES or len(layer.inbound) != 1:
                continue
            if _is_container(layer, keras):
                continue
            src = owner.get(layer.inbound[0])
            if src is not None:
                owner[layer.path] = src
                extra.setdefault(src, []).append(layer.path)
                changed = True
    out = []
    for r in result:
        if r.op_index in extra:
            fused = tuple(dict.fromkeys((*r.fused_layers, *extra[r.op_index])))
            r = OpLayer(r.op_index, r.op, r.keras_layer, r.layer_class, r.match, r.evidence, fused)
        out.append(r)
    return out


def _is_container(layer: KerasLayer, keras: KerasModelLayers) -> bool:
    return bool(keras.children(layer.path))


def unmapped_layers(op_layers: list[OpLayer], keras: KerasModelLayers) -> list[KerasLayer]:
    """Keras layers that no op names, not even as fused: worth a look (a layer the converter
    dropped, or a name this mapping could not read)."""
    named = {p for r in op_layers for p in (r.keras_layer, *r.fused_layers) if p}
    return [layer for layer in keras.layers.values()
            if layer.path not in named and layer.class_name not in _NO_OP_CLASSES
            and not _is_container(layer, keras)]
