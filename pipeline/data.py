"""Representative and evaluation data: load it from what users have, and refuse what would
silently ruin a calibration (wrong shape, integer pixels, NaN, nothing at all).

Sources: an `.npy` array, an `.npz` archive (arrays keyed by input name, or `x`; labels as `y`),
a folder of images (sub-folders are classes), or `module:function` returning an iterable of
samples. Every sample is validated against the model's inputs, read from the float model.

Labels per model output: `y_<output>` arrays beside `y` (e.g. `y_value` for a regression head
named `value`); `pipeline.evaluation` decides which output each belongs to. Tuples from
`module:function` follow the Keras model's input order (`tuple_order`); where that order is not
known (a SavedModel's signature is a map, a .tflite keeps no Keras order) a multi-input model
needs dicts keyed by input name.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np

from .errors import PipelineError
from .model import TensorSpec

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".ppm", ".tif", ".tiff", ".webp"}
LABEL_KEYS = ("y", "labels", "label")
OUTPUT_LABEL_PREFIX = "y_"  # y_<output name>: the labels of one output
SINGLE_INPUT_KEYS = ("x", "inputs", "input", "images", "data")


@dataclass(frozen=True)
class SampleSet:
    """Samples per input name, each (N, *sample_shape) float32; labels (N,) when known."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str
    class_names: tuple[str, ...] | None = None
    output_labels: dict[str, np.ndarray] = field(default_factory=dict)  # "y_<output>" -> (N, ...)

    @property
    def count(self) -> int:
        return len(next(iter(self.inputs.values())))

    def label_arrays(self) -> dict[str, np.ndarray]:
        """`y` and every `y_<output>`, as `pipeline.evaluation.describe_outputs` takes them."""
        out = dict(self.output_labels)
        if self.labels is not None:
            out["y"] = self.labels
        return out

    def batch(self, i: int) -> dict[str, np.ndarray]:
        """Sample i with the batch dimension of 1 that deployed models take."""
        return {name: arr[i:i + 1] for name, arr in self.inputs.items()}


def _is_function_spec(spec: str) -> bool:
    return ":" in spec and not Path(spec).exists() and not _looks_like_windows_path(spec)


def precheck_data_spec(spec: str | None, option: str = "--data") -> None:
    """Fail on a missing data file before minutes of model loading, not after."""
    if spec is None or _is_function_spec(spec):
        return
    if not Path(spec).exists():
        raise PipelineError("no such file or directory", path=spec, field=option,
                            fix="pass an .npy/.npz file, an image folder, or module:function")


def load_samples(spec: str, inputs: Sequence[TensorSpec], *, limit: int | None = None,
                 option: str = "--data", tuple_order: Sequence[str] | None = None) -> SampleSet:
    """Load up to `limit` samples from `spec` and validate them against `inputs`.
    `tuple_order`: the input names in the Keras model's order, for tuples from a function."""
    output_labels: dict[str, np.ndarray] = {}
    if _is_function_spec(spec):
        arrays, labels, classes = _from_function(spec, inputs, limit, option, tuple_order)
    else:
        precheck_data_spec(spec, option)
        path = Path(spec)
        if path.is_dir():
            arrays, labels, classes = _from_image_folder(path, inputs, limit, option)
        elif path.suffix == ".npy":
            arrays, labels, classes = _from_npy(path, inputs, option), None, None
        elif path.suffix == ".npz":
            arrays, labels, classes, output_labels = _from_npz(path, inputs, option)
        else:
            raise PipelineError(f"unsupported data file type '{path.suffix or path.name}'",
                                path=path, field=option,
                                fix="use .npy, .npz, a folder of images, or module:function")
    return validated(arrays, labels, inputs, source=spec, option=option, limit=limit,
                     class_names=classes, output_labels=output_labels)


def validated(arrays: dict[str, np.ndarray], labels: np.ndarray | None,
              inputs: Sequence[TensorSpec], *, source: str, option: str,
              limit: int | None = None, class_names=None,
              output_labels: dict[str, np.ndarray] | None = None) -> SampleSet:
    counts = set()
    out = {}
    for spec in inputs:
        arr = np.asarray(arrays[spec.name])
        where = f"input '{spec.name}'"
        if arr.dtype.kind not in "f":
            raise PipelineError(
                f"{where}: samples are {arr.dtype}, the model input is float32",
                path=source, field=option,
                fix="convert with .astype('float32') and scale the values the way the model was trained")
        if arr.ndim == 0 or arr.shape[0] == 0:
            raise PipelineError(f"{where}: no samples (array shape {arr.shape})", path=source,
                                field=option, fix="provide at least one sample; 100-500 are recommended")
        if tuple(arr.shape[1:]) != spec.sample_shape:
            raise PipelineError(
                f"{where}: sample shape mismatch: expected (N, {_dims(spec.sample_shape)}), "
                f"got {tuple(arr.shape)}", path=source, field=option,
                fix="reshape the samples to the model's input shape (N first)")
        if limit is not None:
            arr = arr[:limit]
        finite = np.isfinite(arr).reshape(len(arr), -1).all(axis=1)
        if not finite.all():
            bad = int(np.argmin(finite))
            raise PipelineError(f"{where}: sample {bad} contains NaN or Inf "
                                f"({int((~finite).sum())} bad samples)", path=source, field=option,
                                fix="remove or repair those samples")
        counts.add(len(arr))
        out[spec.name] = arr.astype(np.float32, copy=False)
    if len(counts) > 1:
        raise PipelineError(f"inputs have different sample counts {sorted(counts)}", path=source,
                            field=option, fix="give every input the same number of samples")
    count = counts.pop()
    if labels is not None:
        labels = np.asarray(labels)
        labels = labels.reshape(-1) if labels.ndim <= 1 or labels.size == len(labels) else labels
        if limit is not None:
            labels = labels[:limit]
        if len(labels) != count:
            raise PipelineError(f"{len(labels)} labels for {count} samples",
                                path=source, field=option, fix="give one label per sample")
    per_output = {}
    for key, arr in (output_labels or {}).items():
        arr = np.asarray(arr)
        arr = arr.reshape(-1) if arr.ndim > 1 and arr.size == len(arr) else arr
        if limit is not None:
            arr = arr[:limit]
        if arr.ndim == 0 or len(arr) != count:
            raise PipelineError(f"'{key}' has {arr.shape[0] if arr.ndim else 0} labels for {count} samples",
                                path=source, field=option, fix="give one label per sample")
        per_output[key] = arr
    return SampleSet(inputs=out, labels=labels, source=source, class_names=class_names,
                     output_labels=per_output)


def _dims(shape: tuple[int, ...]) -> str:
    return ", ".join(str(d) for d in shape)


def _looks_like_windows_path(spec: str) -> bool:
    return len(spec) > 2 and spec[1] == ":" and spec[2] in "\\/"


def _single_input(inputs: Sequence[TensorSpec], path, option, kind: str) -> TensorSpec:
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise PipelineError(f"the model has {len(inputs)} inputs ({names}); {kind} holds one array",
                            path=path, field=option,
                            fix="use an .npz with one array per input name, or module:function yielding dicts")
    return inputs[0]


def _from_npy(path: Path, inputs, option):
    spec = _single_input(inputs, path, option, "an .npy file")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise PipelineError(f"not a readable .npy array: {exc}", path=path, field=option,
                            fix="save the samples with numpy.save") from None
    return {spec.name: arr}


def _from_npz(path: Path, inputs, option):
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (ValueError, OSError, EOFError) as exc:
        raise PipelineError(f"not a readable .npz archive: {exc}", path=path, field=option,
                            fix="save the samples with numpy.savez") from None
    names = {i.name for i in inputs}
    labels = next((arrays.pop(k) for k in LABEL_KEYS if k in arrays and k not in names), None)
    per_output = {k: arrays.pop(k) for k in list(arrays) if k.startswith(OUTPUT_LABEL_PREFIX) and k not in names}
    if all(i.name in arrays for i in inputs):
        return {i.name: arrays[i.name] for i in inputs}, labels, None, per_output
    if len(inputs) == 1:
        key = next((k for k in SINGLE_INPUT_KEYS if k in arrays), None)
        if key is None and len(arrays) == 1:
            key = next(iter(arrays))
        if key is not None:
            return {inputs[0].name: arrays[key]}, labels, None, per_output
    expected = ", ".join(i.name for i in inputs)
    raise PipelineError(f"arrays {sorted(arrays) or 'none'} do not match the model inputs ({expected})",
                        path=path, field=option,
                        fix=f"save one array per input name ({expected}), labels as 'y'")


def _from_image_folder(path: Path, inputs, limit, option):
    spec = _single_input(inputs, path, option, "an image folder")
    if len(spec.shape) != 4 or spec.shape[3] not in (1, 3):
        raise PipelineError(f"input '{spec.name}' has shape {spec.shape}; images need (1, H, W, 1|3)",
                            path=path, field=option, fix="use .npy/.npz data for this model")
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[tuple[Path, int | None]] = []
    if classes:
        for label, cls in enumerate(classes):
            files += [(f, label) for f in sorted((path / cls).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    else:
        files = [(f, None) for f in sorted(path.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise PipelineError("no images found", path=path, field=option,
                            fix=f"put image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in the folder "
                                "or in one sub-folder per class")
    files = files[:limit] if limit is not None else files
    from PIL import Image, UnidentifiedImageError

    _, height, width, channels = spec.shape
    images = []
    for f, _ in files:
        try:
            with Image.open(f) as img:
                img = img.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
                arr = np.asarray(img, dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError) as exc:
            raise PipelineError(f"not a readable image: {exc}", path=f, field=option,
                                fix="remove or re-save the file") from None
        images.append(arr.reshape(height, width, channels))
    labels = np.array([lab for _, lab in files]) if classes else None
    return {spec.name: np.stack(images)}, labels, tuple(classes) or None


def _from_function(spec: str, inputs, limit, option, tuple_order=None):
    module_name, _, func_name = spec.partition(":")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PipelineError(f"cannot import module '{module_name}': {exc}", field=option,
                            path=spec, fix="check the module name and run from its directory") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise PipelineError(f"module '{module_name}' has no function '{func_name}'", path=spec,
                            field=option, fix="name a function that returns an iterable of samples")
    try:
        produced = func()
        if not isinstance(produced, Iterable):
            raise PipelineError(f"{spec}() returned {type(produced).__name__}, not an iterable",
                                path=spec, field=option, fix="return or yield samples")
        samples = list(islice(produced, limit))
    except PipelineError:
        raise
    except Exception as exc:  # user code: report its failure as bad input, not our crash
        raise PipelineError(f"{spec}() raised {type(exc).__name__}: {exc}", path=spec,
                            field=option, fix="fix the data function") from None
    names = [i.name for i in inputs]
    by_name = {i.name: i for i in inputs}
    # tuples are in the Keras model's input order, which is not the TFLite file's (the converter
    # orders a multi-input signature its own way): map them by name
    order = list(tuple_order) if tuple_order and sorted(tuple_order) == sorted(names) else None
    columns: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for k, sample in enumerate(samples):
        if isinstance(sample, dict):
            missing = [n for n in names if n not in sample]
            if missing:
                raise PipelineError(f"sample {k} has keys {sorted(sample)}, missing {missing}",
                                    path=spec, field=option, fix=f"yield dicts keyed by {names}")
            parts, keys = [sample[n] for n in names], names
        elif isinstance(sample, (list, tuple)):
            if len(names) > 1 and order is None:
                raise PipelineError(f"sample {k} is a tuple, but the order of this model's inputs "
                                    f"({', '.join(names)}) is not known (a SavedModel or .tflite keeps no "
                                    "Keras input order)", path=spec, field=option,
                                    fix=f"yield dicts keyed by input name ({', '.join(names)}), or quantize "
                                        "from the .keras file, which records the order")
            parts, keys = list(sample), order or names
        else:
            parts, keys = [sample], names
        if len(parts) != len(names):
            raise PipelineError(f"sample {k} has {len(parts)} arrays for {len(names)} inputs",
                                path=spec, field=option, fix=f"yield dicts keyed by {names}")
        for n, part in zip(keys, parts):
            spec_ = by_name[n]
            arr = np.asarray(part)
            if arr.shape == spec_.shape:  # a sample that already carries the batch dim of 1
                arr = arr[0]
            columns[n].append(arr)
    if not samples:
        raise PipelineError(f"{spec}() yielded no samples", path=spec, field=option,
                            fix="yield at least one sample; 100-500 are recommended")
    try:
        arrays = {n: np.stack(col) for n, col in columns.items()}
    except ValueError as exc:
        raise PipelineError(f"samples differ in shape: {exc}", path=spec, field=option,
                            fix="yield samples of the model's input shape") from None
    return arrays, None, None
