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
import math
import os
import sys
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np

from .errors import PipelineError
from .fileio import checked_input
from .model import TensorSpec

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".ppm", ".tif", ".tiff", ".webp"}
LABEL_KEYS = ("y", "labels", "label")
OUTPUT_LABEL_PREFIX = "y_"  # y_<output name>: the labels of one output
SINGLE_INPUT_KEYS = ("x", "inputs", "input", "images", "data")

# Limits (README "Limits"): what one data source may take, checked from headers before anything
# is allocated. Only the samples asked for are read: 4 golden vectors from a 10 GB .npy read 4.
MAX_DATA_BYTES = 2 << 30  # the arrays read from one --data/--eval-data source, in memory
MAX_IMAGE_PIXELS = 1 << 26  # 64 Mpixel (8192 x 8192); Pillow itself refuses 179 Mpixel and more
MAX_IMAGE_FILE_BYTES = 256 << 20
_READ_CHUNK = 16 << 20  # bytes read from a file or a zip member at a time
_DATA_FIX = "pass an .npy/.npz file, an image folder, or module:function"


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
    """`module:function`, as opposed to a file name that holds a ':'. Anything on disk (also a
    dangling link or a symlink loop) is a path; so is a name whose part after the ':' could not
    be a function (`cal:2024.npy`, `evil:samples.npy`) or whose part before it is a path: those
    are reported as missing files, and no module is imported for them."""
    if ":" not in spec or _looks_like_windows_path(spec) or os.path.lexists(spec):
        return False
    module, _, function = spec.partition(":")
    return "/" not in module and os.sep not in module and (function == "" or function.isidentifier())


def _checked_data_path(path: Path, option: str) -> None:
    """The path exists (a symlink loop is named as one) and is a folder or a regular file: a
    FIFO or a device would block or never end."""
    checked_input(path, option=option, max_bytes=None, kind="data file", fix=_DATA_FIX, allow_dir=True)


def precheck_data_spec(spec: str | None, option: str = "--data") -> None:
    """Fail on a missing data file before minutes of model loading, not after."""
    if spec is None or _is_function_spec(spec):
        return
    _checked_data_path(Path(spec), option)


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
            arrays, labels, classes = _from_npy(path, inputs, option, limit), None, None
        elif path.suffix == ".npz":
            arrays, labels, classes, output_labels = _from_npz(path, inputs, option, limit)
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


def _from_npy(path: Path, inputs, option, limit):
    spec = _single_input(inputs, path, option, "an .npy file")
    budget = _Budget()
    try:
        with path.open("rb") as f:
            arr = _read_array(f, path.stat().st_size, limit=limit, budget=budget, path=path, option=option)
    except (ValueError, OSError, EOFError) as exc:
        raise PipelineError(f"not a readable .npy array: {_one_line(exc)}", path=path, field=option,
                            fix="save the samples with numpy.save") from None
    return {spec.name: arr}


def _from_npz(path: Path, inputs, option, limit):
    budget = _Budget()
    try:
        with zipfile.ZipFile(path) as archive:
            members = {m.filename[:-len(".npy")]: m for m in archive.infolist()
                       if m.filename.endswith(".npy") and not m.is_dir()}
            keys = _npz_selection(list(members), inputs, path, option)

            def read(key: str) -> np.ndarray:
                member = members[key]
                with archive.open(member) as stream:
                    return _read_array(stream, member.file_size, limit=limit, budget=budget, path=path,
                                       option=option, what=f"array '{key}'")

            arrays = {name: read(key) for name, key in keys["inputs"].items()}
            labels = read(keys["labels"]) if keys["labels"] else None
            per_output = {key: read(key) for key in keys["outputs"]}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError,
            RuntimeError) as exc:  # RuntimeError: an encrypted member; NotImplementedError: its compression
        raise PipelineError(f"not a readable .npz archive: {_one_line(exc)}", path=path, field=option,
                            fix="save the samples with numpy.savez") from None
    return arrays, labels, None, per_output


def _npz_selection(keys: list[str], inputs, path, option) -> dict:
    """Which arrays of the archive to read, from their names alone: one per input, the labels
    `y` (or `labels`, `label`) and `y_<output>`."""
    names = {i.name for i in inputs}
    labels = next((k for k in LABEL_KEYS if k in keys and k not in names), None)
    outputs = [k for k in keys if k.startswith(OUTPUT_LABEL_PREFIX) and k not in names]
    rest = [k for k in keys if k != labels and k not in outputs]
    selection = {"labels": labels, "outputs": outputs}
    if all(i.name in rest for i in inputs):
        return {**selection, "inputs": {i.name: i.name for i in inputs}}
    if len(inputs) == 1:
        key = next((k for k in SINGLE_INPUT_KEYS if k in rest), None)
        if key is None and len(rest) == 1:
            key = rest[0]
        if key is not None:
            return {**selection, "inputs": {inputs[0].name: key}}
    expected = ", ".join(i.name for i in inputs)
    raise PipelineError(f"arrays {sorted(rest) or 'none'} do not match the model inputs ({expected})",
                        path=path, field=option,
                        fix=f"save one array per input name ({expected}), labels as 'y'")


@dataclass
class _Budget:
    """What the arrays of one data source may still take in memory."""

    left: int = field(default_factory=lambda: MAX_DATA_BYTES)


def _read_array(stream, available: int, *, limit: int | None, budget: _Budget, path, option,
                what: str = "") -> np.ndarray:
    """One array in .npy format from `stream` (a file, or an .npz member of `available`
    uncompressed bytes), read with limits: the header first, and a declared size the stream
    cannot hold or memory may not take is refused before anything is allocated. Only the first
    `limit` samples are read (the whole array when it is stored column-major)."""
    from numpy.lib import format as npformat

    header_readers = {(1, 0): npformat.read_array_header_1_0, (2, 0): npformat.read_array_header_2_0}
    version = npformat.read_magic(stream)
    if version not in header_readers:
        raise ValueError(f"{what or 'the array'} is in .npy format version {version[0]}.{version[1]}, "
                         "which is not read here")
    shape, fortran_order, dtype = header_readers[version](stream)
    prefix = f"{what}: " if what else ""
    if dtype.hasobject:
        raise PipelineError(f"{what or 'the array'} holds Python objects (dtype {dtype}), not numbers", path=path,
                            field=option, fix="save a numeric array, e.g. numpy.save(f, x.astype('float32'))")
    if any(d < 0 for d in shape):
        raise ValueError(f"{prefix}the header declares a negative dimension {shape}")
    declared = math.prod(shape) * dtype.itemsize
    stored = available - stream.tell()
    if declared > stored:
        raise PipelineError(
            f"{prefix}the header declares shape {shape} of {dtype} ({_size(declared)}), but only "
            f"{_size(max(stored, 0))} of data follow it: truncated, or not written by numpy", path=path,
            field=option, fix="save the samples again with numpy.save / numpy.savez")
    if limit is not None and shape and not fortran_order:
        shape = (min(limit, shape[0]), *shape[1:])
    wanted = math.prod(shape) * dtype.itemsize
    if wanted > budget.left:
        raise PipelineError(
            f"{prefix}{_size(wanted)} of samples (shape {shape} of {dtype}), more than the "
            f"{_size(MAX_DATA_BYTES)} one data source may take in memory", path=path, field=option,
            fix="pass fewer samples (--samples, --vectors) or a smaller file")
    budget.left -= wanted
    arr = np.empty(shape[::-1] if fortran_order else shape, dtype)
    flat = arr.reshape(-1).view(np.uint8)
    done = 0
    while done < wanted:
        chunk = stream.read(min(wanted - done, _READ_CHUNK))
        if not chunk:
            raise EOFError(f"{what or 'the array'} ends after {done} of {wanted} bytes")
        flat[done:done + len(chunk)] = np.frombuffer(chunk, np.uint8)
        done += len(chunk)
    return arr.T if fortran_order else arr


def _size(n: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.4g} {unit}"
    return f"{n} bytes"


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's text as part of a one-line error (user code and libraries write any)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
        checked_input(f, option=option, max_bytes=MAX_IMAGE_FILE_BYTES, kind="regular image file",
                      fix="remove it from the folder, or save the image in its place")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below
                with Image.open(f) as img:  # reads the header only: the size is known before decoding
                    if img.width * img.height > MAX_IMAGE_PIXELS:
                        raise _image_too_large(f, option, spec)
                    img = img.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
                    arr = np.asarray(img, dtype=np.float32) / 255.0
        except Image.DecompressionBombError:  # Pillow's own limit, hit while opening
            raise _image_too_large(f, option, spec) from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:  # Pillow raises each
            raise PipelineError(f"not a readable image: {_one_line(exc)}", path=f, field=option,
                                fix="remove or re-save the file") from None
        images.append(arr.reshape(height, width, channels))
    labels = np.array([lab for _, lab in files]) if classes else None
    return {spec.name: np.stack(images)}, labels, tuple(classes) or None


def _image_too_large(path: Path, option: str, spec: TensorSpec) -> PipelineError:
    _, height, width, _ = spec.shape
    return PipelineError(f"declares more than the {MAX_IMAGE_PIXELS >> 20} Mpixel an image may have here "
                         f"(a decompression bomb, or a picture far larger than the model's {width}x{height} "
                         "input)", path=path, field=option,
                         fix=f"resize it (e.g. to {width}x{height}) or remove it from the folder")


def _function_names(spec: str, option: str) -> tuple[str, str]:
    """`module:function` split, refusing names Python cannot import (an empty or relative module
    name, no function name) before anything is imported."""
    module_name, _, func_name = spec.partition(":")
    fix = "write module:function, e.g. mydata:samples for samples() in mydata.py in the current folder"
    if not module_name:
        raise PipelineError("no module name before ':'", path=spec, field=option, fix=fix)
    if not all(part.isidentifier() for part in module_name.split(".")):
        raise PipelineError(f"'{module_name}' is not an importable module name (relative names and empty "
                            "parts cannot be imported)", path=spec, field=option,
                            fix="name the module in full (package.module) and run from the folder that holds it")
    if not func_name:
        raise PipelineError("no function name after ':'", path=spec, field=option, fix=fix)
    return module_name, func_name


def _import_data_module(module_name: str, spec: str, option: str):
    """Import the user's module from the current folder; whatever its import does wrong (an
    exception, a syntax error, sys.exit) is bad input named as such, not our crash."""
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    fix = "fix the module so that importing it only defines the function"
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise PipelineError(f"cannot import module '{module_name}': {_one_line(exc)}", field=option,
                            path=spec, fix="check the module name and run from its directory") from None
    except SyntaxError as exc:
        where = f" ({Path(exc.filename).name}, line {exc.lineno})" if exc.filename else ""
        raise PipelineError(f"cannot import module '{module_name}': syntax error{where}: "
                            f"{_one_line(exc.msg or exc)}", path=spec, field=option, fix="fix the syntax error") from None
    except SystemExit as exc:
        raise PipelineError(f"cannot import module '{module_name}': it calls sys.exit({exc.code!r}) when "
                            "imported", path=spec, field=option,
                            fix="move that code under `if __name__ == '__main__':`") from None
    except Exception as exc:  # noqa: BLE001 - user code: any failure of its import is bad input
        raise PipelineError(f"cannot import module '{module_name}': importing it raised "
                            f"{type(exc).__name__}: {_one_line(exc)}", path=spec, field=option, fix=fix) from None


def _from_function(spec: str, inputs, limit, option, tuple_order=None):
    module_name, func_name = _function_names(spec, option)
    module = _import_data_module(module_name, spec, option)
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
    except SystemExit as exc:  # sys.exit() in user code must not end the run with its code and no word
        raise PipelineError(f"{spec}() called sys.exit({exc.code!r})", path=spec, field=option,
                            fix="return or yield the samples; raise an exception to report a problem") from None
    except Exception as exc:  # user code: report its failure as bad input, not our crash
        raise PipelineError(f"{spec}() raised {type(exc).__name__}: {_one_line(exc)}", path=spec,
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
