"""Render a TFLite Micro firmware project from an int8 model: the model as an aligned C array,
a resolver with exactly its ops, the measured arena, and golden vectors the firmware checks at
boot. Templates hold every line of C/C++/CMake; this module computes the facts they need.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import PROJECT_DIR, TOOL_NAME, __version__
from ..boards import Board, board_fit, defaults, get_board, raise_if_too_big
from ..cache import content_hash
from ..errors import NotDeployableError
from ..fileio import ensure_replaceable, replacing_owned_dir, safe_name
from ..golden import golden_vectors
from ..model import is_stateful, refuse_float_model
from ..rules.tflm import ARENA_MARGIN_BYTES, check_tflm, round_arena, table as tflm_table
from ..templating import TEMPLATE_DIR, Markup, c_float, c_ident, environment
from ..tflite_model import Tensor, TFLiteModel, read_model
from ..versions import package_version
from .base import Job, Stage, fact_tables

log = logging.getLogger(__name__)

SKELETON_DIR = PROJECT_DIR / "firmware"
DEFAULT_BOARD = "qemu-mps2-an386"  # the preset that runs without hardware
DEFAULT_VECTORS = 4
BYTES_PER_LINE = 16
_CTYPES = {"int8": "int8_t", "uint8": "uint8_t", "int16": "int16_t", "int32": "int32_t",
           "float32": "float"}
_NP = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "int32": np.int32, "float32": np.float32}
# rendered file -> template
_TEMPLATES = {
    "model_data.h": "firmware/model_data.h.j2",
    "model_data.cc": "firmware/model_data.cc.j2",
    "model_ops.h": "firmware/model_ops.h.j2",
    "model_settings.h": "firmware/model_settings.h.j2",
    "test_vectors.h": "firmware/test_vectors.h.j2",
    "test_vectors.cc": "firmware/test_vectors.cc.j2",
    "model_arena.h": "firmware/model_arena.h.j2",
    "CMakeLists.txt": "firmware/CMakeLists.txt.j2",
    "cmake/tflm.cmake": "firmware/cmake/tflm.cmake.j2",
}
# rendered only for a Cortex-M board: its toolchain file, linker script, start-up, facts
_CORTEX_M_TEMPLATES = {
    "cmake/arm-none-eabi.cmake": "firmware/cmake/arm-none-eabi.cmake.j2",
    "board/cortexm/linker.ld": "firmware/board/cortexm/linker.ld.j2",
    "board/cortexm/startup.c": "firmware/board/cortexm/startup.c.j2",
    "board/cortexm/board_config.h": "firmware/board/cortexm/board_config.h.j2",
}
_SKELETON = ("main.cc", "arena.cc", "hil_server.h", "hil_server.cc", "board/board.h", "board/board_host.cc",
             "board/cortexm/board_cortexm.cc")
# What earlier versions of this stage wrote (a legacy folder without a manifest may hold them)
_FORMER_FILES = ("cmake/arm-none-eabi.cmake", "board/cortexm/startup.c", "board/cortexm/mps2_an386.ld")
MEASUREMENTS_FILE = "measurements.json"
_INTERPRETER = "the TFLM Python interpreter"  # who measured an arena before any build
HIL_TEXT_BYTES = 1024  # INFO and ERROR replies: board name, firmware, hashes
HIL_INFO_BUFFER = 768  # main.cc's INFO text buffer


# --- the model as a C array: vectorised, ~2 orders of magnitude faster than a Python loop ----

_HEX = np.frombuffer("".join(f"0x{b:02x}," for b in range(256)).encode(), dtype=np.uint8).reshape(256, 5)
_HEX_ITEMS = _HEX.copy().view("V5").ravel()  # one 5-byte item per byte value
_ARRAY_SENTINEL = "@@EDGE_DEPLOY_MODEL_ARRAY@@"


def c_array_chunks(data: bytes, per_line: int = BYTES_PER_LINE) -> list[np.ndarray]:
    """The array body as ASCII buffers: `  0x1c,0x00,...,` lines of `per_line` bytes. Each byte
    becomes 5 characters through a lookup table; rows get an indent and a newline; all in
    numpy, so a 20 MB model takes a fraction of a second. The last, short line is its own
    buffer."""
    arr = np.frombuffer(data, dtype=np.uint8)
    full = len(arr) - len(arr) % per_line
    chunks = []
    if full:
        rows = np.full((full // per_line, per_line * 5 + 3), ord(" "), dtype=np.uint8)
        rows[:, 2:-1] = _HEX_ITEMS[arr[:full]].view(np.uint8).reshape(-1, per_line * 5)
        rows[:, -1] = ord("\n")
        chunks.append(rows.reshape(-1))
    if full < len(arr):
        chunks.append(np.frombuffer(b"  " + _HEX_ITEMS[arr[full:]].tobytes() + b"\n", dtype=np.uint8))
    return chunks


def c_array_body(data: bytes, per_line: int = BYTES_PER_LINE) -> str:
    return b"".join(c.tobytes() for c in c_array_chunks(data, per_line)).decode("ascii")


def write_model_data_cc(path: Path, context: dict[str, Any], data: bytes) -> None:
    """Render model_data.cc around a sentinel and stream the array bytes in between, so the
    tens of megabytes of array never pass through Jinja or a Python str."""
    text = environment().get_template(_TEMPLATES["model_data.cc"]).render(
        **dict(context, array_body=_ARRAY_SENTINEL))
    head, tail = text.split(_ARRAY_SENTINEL)
    with path.open("wb") as f:
        f.write(head.encode())
        for chunk in c_array_chunks(data):
            f.write(memoryview(chunk))
        f.write(tail.encode())


def c_values(values: np.ndarray, per_line: int = 16) -> Markup:
    flat = [str(int(v)) if np.issubdtype(values.dtype, np.integer) else str(c_float(v)) for v in values.ravel()]
    return Markup("".join("  " + ", ".join(flat[i:i + per_line]) + ",\n" for i in range(0, len(flat), per_line)))


# --- the stage ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ArenaFigures:
    """The smallest arena that ran every golden vector, per pointer size: the host build's
    (64-bit) and the board's (32-bit, measured on the board's build under QEMU when one runs
    it). Before any build both are the TFLM Python interpreter's figure, an upper bound."""

    host_measured: int
    host_source: str
    board_measured: int
    board_source: str

    @property
    def host_bytes(self) -> int:
        return round_arena(self.host_measured) + ARENA_MARGIN_BYTES

    @property
    def board_bytes(self) -> int:
        return round_arena(self.board_measured) + ARENA_MARGIN_BYTES

    def to_json(self) -> dict[str, Any]:
        return {"host_measured_bytes": self.host_measured, "host_measured_by": self.host_source,
                "host_bytes": self.host_bytes, "board_measured_bytes": self.board_measured,
                "board_measured_by": self.board_source, "board_bytes": self.board_bytes}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ArenaFigures:
        return cls(int(doc["host_measured_bytes"]), str(doc["host_measured_by"]),
                   int(doc["board_measured_bytes"]), str(doc["board_measured_by"]))


@dataclass
class FirmwareResult:
    output_dir: Path
    files: list[str]
    arena_bytes: int  # the board's kTensorArenaSize
    arena_measured: int
    arena_source: str
    resolver_methods: list[str]
    vectors: int
    arena: ArenaFigures | None = None
    board_key: str = ""
    board: dict[str, Any] | None = None
    builds: dict[str, Any] = field(default_factory=dict)
    golden: Any = field(default=None, repr=False, compare=False)  # the GoldenVectors rendered (not in JSON)

    def to_json(self) -> dict[str, Any]:
        return {"output_dir": self.output_dir.name, "files": self.files, "arena_bytes": self.arena_bytes,
                "arena_measured_bytes": self.arena_measured, "arena_measured_by": self.arena_source,
                "arena_margin_bytes": ARENA_MARGIN_BYTES, "arena": self.arena.to_json() if self.arena else None,
                "resolver_methods": self.resolver_methods, "test_vectors": self.vectors,
                "board_key": self.board_key, "board": self.board, "builds": self.builds}


def generate_firmware(model_path: Path, *, out: Path | None = None, board: str | Board | None = None,
                      vectors: int = DEFAULT_VECTORS, tolerance: int = 0, data: str | None = None,
                      smallest_arena: tuple[int, str] | None = None,
                      arena: ArenaFigures | None = None, check_fit: bool = True,
                      labels: list[str] | None = None, tensorflow_version: str | None = None,
                      input_order: list[str] | None = None, golden=None) -> FirmwareResult:
    """`arena`: figures a build just measured (firmware_build); `smallest_arena`: (bytes, where
    measured) when a caller measured it in the TFLM Python interpreter (the check stage).
    Otherwise a measurement recorded in the output folder for this model and board is kept
    (a plain `invoke firmware` after a `--build` keeps the measured arena), else the TFLM
    Python interpreter's binary search runs here (an upper bound: its recording allocator lives
    in the arena too). Either way the golden outputs come from the TFLM interpreter.
    `check_fit=False` (a build follows, whose linked image decides) records the estimate
    without refusing a model it says is too big. `labels` and `tensorflow_version` come from
    the quantize stage, when it made the model. `golden`: the vectors an earlier generation of
    this model with the same options made (a --build renders the project again with the measured
    arena): the TFLM interpreter is not run again for them."""
    board_preset = get_board(board or DEFAULT_BOARD)
    model = read_model(model_path)
    refuse_float_model(model)
    out_dir = out or model_path.parent / "firmware"
    ensure_replaceable(out_dir, option="--out", legacy=legacy_firmware_files)  # before any work
    raw = model_path.read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    if arena is None:
        arena = recorded_arena(out_dir, sha, board_preset)
    tflm = check_tflm(model, model_path, run_interpreter=arena is None and smallest_arena is None)
    if not tflm.compatible:
        reasons = [f"op {v.index} {v.op}: {v.reason}" for v in tflm.ops if not v.supported]
        reasons += [r for r in (tflm.model_problem, tflm.interpreter_error) if r]
        raise NotDeployableError(f"the model does not run on TFLite Micro: {'; '.join(reasons)}",
                                 path=model_path, field="--model", fix="see `invoke check --target tflm`")
    if arena is None:
        measured, source = smallest_arena or (tflm.arena_bytes, _INTERPRETER)
        arena = ArenaFigures(measured, source, measured, source)
    inputs, outputs = io_specs(model)
    if golden is None:
        golden = golden_vectors(model, model_path, vectors, data, input_order=input_order)
    hil = hil_buffers(inputs, outputs)
    preserved = preserved_tensor_bytes(model)
    context = {
        "generator": f"{TOOL_NAME} {__version__}", "model_file": model_path.name,
        "sha256": sha, "size": len(raw),
        "name": model_path.parent.name if model_path.parent.name not in ("", ".") else model_path.stem,
        "project": c_ident(f"{safe_name(model_path.parent.name)}_firmware"),
        "tensorflow_version": tensorflow_version or "unknown",
        "tflm_version": f"{tflm_table()['tflite_micro_commit'][:12]} (wheel {tflm_table()['tflite_micro_wheel']})",
        "methods": list(zip([v.op for v in _distinct_ops(tflm.ops)], tflm.resolver_methods)),
        "arena": arena, "arena_margin": ARENA_MARGIN_BYTES, "inputs": inputs, "outputs": outputs,
        "labels": labels, "tolerance": int(tolerance), "source": golden.source, "stateful": is_stateful(model),
        "vectors": [{"name": golden.names[v],
                     "inputs": [c_values(golden.inputs[i][v]) for i in range(len(inputs))],
                     "expected": [c_values(golden.expected[o][v]) for o in range(len(outputs))]}
                    for v in range(len(golden))],
        "board": board_preset, "arm_flags": board_preset.arm_flags(),
        "qemu_machine": board_preset.qemu_machine, "hil": hil,
        "preserved_arena": {"tensor_bytes": preserved, "planner_host_bytes": linear_planner_bytes(8),
                            "planner_board_bytes": linear_planner_bytes(4),
                            "host_bytes": arena.host_bytes + preserved + linear_planner_bytes(8),
                            "board_bytes": arena.board_bytes + preserved + linear_planner_bytes(4)},
        "heap_bytes": defaults()["heap_bytes"], "stack_bytes": defaults()["stack_bytes"],
    }
    with replacing_owned_dir(out_dir, context["generator"], option="--out", legacy=legacy_firmware_files) as staging:
        files = _render(staging, context, raw, cortex_m=board_preset.is_cortex_m)
        measured = _recorded_boards(out_dir, sha)
        measured[board_preset.key] = {"arm_flags": board_preset.arm_flags(), "arena": arena.to_json()}
        (staging / MEASUREMENTS_FILE).write_text(json.dumps(
            {"generated_by": f"{context['generator']}, do not edit", "model_sha256": sha, "board": board_preset.key,
             "boards": measured}, indent=1, sort_keys=True) + "\n")
        files = sorted([*files, MEASUREMENTS_FILE])
        result = FirmwareResult(output_dir=out_dir, files=files, arena_bytes=arena.board_bytes,
                                arena_measured=arena.board_measured, arena_source=arena.board_source,
                                resolver_methods=list(tflm.resolver_methods), vectors=len(golden), arena=arena,
                                board_key=board_preset.key, golden=golden)
        if board:
            io = sum(t["bytes"] for t in inputs) + sum(t["elements"] * t["itemsize"] for t in outputs)
            result.board = board_fit(board_preset, model_bytes=len(raw), arena_bytes=arena.board_bytes, io_bytes=io)
            if check_fit:
                raise_if_too_big(result.board, board_preset)
    return result


def hil_buffers(inputs: list[dict], outputs: list[dict]) -> dict[str, int]:
    """The HIL server's static buffers, from the model's I/O: the largest request is RUN with
    every input, the largest reply RUN_OK (8 bytes of timing + every output) or a text reply."""
    input_bytes = sum(t["bytes"] for t in inputs)
    output_bytes = sum(t["bytes"] for t in outputs)
    request, reply = max(input_bytes, 16), max(8 + output_bytes, HIL_TEXT_BYTES)
    return {"input_bytes": input_bytes, "output_bytes": output_bytes, "text_bytes": HIL_TEXT_BYTES,
            "request_payload": request, "reply_payload": reply,
            "static_bytes": (6 + request + 4) + (8 + reply + 4) + HIL_INFO_BUFFER}


# TFLM's LinearMemoryPlanner (the planner of MicroInterpreter(..., preserve_all_tensors=true))
# keeps a fixed table of size_t offsets, allocated in the arena's persistent part:
# kMaxBufferCount in tensorflow/lite/micro/memory_planner/linear_memory_planner.h (tflite-micro
# 90b983c2, the commit rules/tflm describes)
LINEAR_PLANNER_BUFFERS = 1024
LINEAR_PLANNER_SLACK_BYTES = 64  # its other members, vtable and alignment


def linear_planner_bytes(pointer_bytes: int) -> int:
    return LINEAR_PLANNER_BUFFERS * pointer_bytes + LINEAR_PLANNER_SLACK_BYTES


def preserved_tensor_bytes(model: TFLiteModel) -> int:
    """What a -DHIL_TENSORS=ON build adds to the arena besides the linear planner's own table:
    with every tensor preserved, TFLM's linear memory planner gives each non-constant tensor of
    the main subgraph its own place (16-byte aligned) on top of what the greedy planner's
    measured arena holds (the persistent allocations and, at its peak, the scratch buffers). An
    upper bound for models whose kernels ask for at most one scratch buffer at a time (TFLM's
    reference kernels); AllocateTensors failing at boot says so otherwise."""
    total = 0
    for t in model.main.tensors:
        if not t.is_constant:
            total += round_arena(int(np.prod(t.shape or (1,))) * np.dtype(_NP.get(t.dtype, t.dtype)).itemsize)
    return total


def _recorded_boards(out_dir: Path, sha256: str) -> dict[str, dict[str, Any]]:
    """The arenas builds measured for this very model, per board, as the last generation
    recorded them (measurements.json); the Python interpreter's upper bounds are not kept."""
    try:
        doc = json.loads((out_dir / MEASUREMENTS_FILE).read_text())
        if not isinstance(doc, dict) or doc.get("model_sha256") != sha256:
            return {}
        entries = doc.get("boards")
        if entries is None and "arena" in doc:  # one board, as edge-deploy 0.1 recorded it
            entries = {doc["board"]: {"arm_flags": doc["arm_flags"], "arena": doc["arena"]}}
        kept = {}
        for key, entry in (entries or {}).items():
            figures = ArenaFigures.from_json(entry["arena"])
            if not (figures.board_source == _INTERPRETER and figures.host_source == _INTERPRETER):
                kept[str(key)] = {"arm_flags": str(entry["arm_flags"]), "arena": figures.to_json()}
        return kept
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def recorded_arena(out_dir: Path, sha256: str, board: Board) -> ArenaFigures | None:
    """The arena a build measured for this very model and board (same compiler flags), as a
    generation recorded it in the output folder, for whichever board it was last rendered;
    None when there is none or the flags differ."""
    entry = _recorded_boards(out_dir, sha256).get(board.key)
    if entry is None or entry["arm_flags"] != board.arm_flags():
        return None
    return ArenaFigures.from_json(entry["arena"])


def legacy_firmware_files(folder: Path) -> set[str] | None:
    """A firmware folder written before folders carried a manifest: its generated header says
    so, and only the files this stage writes count as ours."""
    try:
        with (folder / "model_settings.h").open(encoding="utf-8", errors="replace") as f:
            first = f.readline()
    except OSError:
        return None
    if f"generated by {TOOL_NAME}" not in first:
        return None
    return {rel for rel in (*_TEMPLATES, *_CORTEX_M_TEMPLATES, *_SKELETON, *_FORMER_FILES, MEASUREMENTS_FILE)
            if (folder / rel).is_file()}


def _distinct_ops(verdicts):
    seen, out = set(), []
    for v in verdicts:
        if v.resolver_method and v.resolver_method not in seen:
            seen.add(v.resolver_method)
            out.append(v)
    return out


def arm_flags(board: Board) -> str:
    return board.arm_flags()


def io_specs(model: TFLiteModel) -> tuple[list[dict], list[dict]]:
    def spec(t: Tensor, name: str, taken: set[str]) -> dict[str, Any]:
        if t.dtype not in _CTYPES:
            raise NotDeployableError(f"I/O tensor '{name}' is {t.dtype}", path=model.source,
                                     field="--model", fix="quantize with int8 I/O (`invoke quantize`)")
        ident = c_ident(name)
        while ident in taken:  # unique even when two names clean up to the same identifier
            ident += "_"
        taken.add(ident)
        elements = int(np.prod(t.shape)) if t.shape else 1
        itemsize = np.dtype(_NP[t.dtype]).itemsize
        return {"name": name, "ident": ident, "dtype": t.dtype, "ctype": _CTYPES[t.dtype],
                "shape": list(t.shape), "elements": elements, "itemsize": itemsize,
                "bytes": elements * itemsize, "scale": float(t.scale or 0.0),
                "zero_point": int(t.zero_point or 0)}

    taken_in: set[str] = set()
    taken_out: set[str] = set()
    ins = [spec(t, n, taken_in) for t, n in zip(model.main.input_tensors(), model.input_names())]
    outs = [spec(t, n, taken_out) for t, n in zip(model.main.output_tensors(), model.output_names())]
    return ins, outs


def _render(staging: Path, context: dict[str, Any], raw: bytes, *, cortex_m: bool) -> list[str]:
    env = environment()
    written = []
    templates = {**_TEMPLATES, **(_CORTEX_M_TEMPLATES if cortex_m else {})}
    for rel, template in templates.items():
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if rel == "model_data.cc":
            write_model_data_cc(target, context, raw)
        else:
            target.write_text(env.get_template(template).render(**context))
        written.append(rel)
    for rel in _SKELETON:
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SKELETON_DIR / rel, target)
        written.append(rel)
    return sorted(written)


# --- building and running (pipeline/firmware_build.py); kept importable from here ------------

def tflm_tree_path(explicit: str | Path | None):
    from .firmware_build import resolve_tree

    return resolve_tree(explicit)


def build_and_run(project: Path, tree, build_dir: Path, **options) -> dict[str, Any]:
    from .firmware_build import build_and_run as run

    return run(project, tree, build_dir, **options)


def build_and_verify(model_path: Path, result: FirmwareResult, tree, **options) -> FirmwareResult:
    from .firmware_build import build_and_verify as run

    return run(model_path, result, tree, **options)


# --- registry entry ----------------------------------------------------------------------------

def _firmware_not_applicable(job: Job) -> str | None:
    if not job.request.targets("tflm"):
        return "target is edgetpu"
    if not (job.results.get("check", {}).get("tflm") or {}).get("compatible"):
        return "the TFLM check failed"
    return None


def _firmware_key(job: Job) -> dict[str, Any]:
    r = job.request
    return {"model": content_hash(job.model), "board": r.board or DEFAULT_BOARD, "data": content_hash(r.data),
            "vectors": r.vectors, "tolerance": r.tolerance, "out": str(r.firmware_out) if r.firmware_out else None,
            "skeleton": content_hash(SKELETON_DIR), "templates": content_hash(TEMPLATE_DIR / "firmware"),
            "tables": fact_tables(), "tflm": package_version("tflite-micro")}


def firmware_options(job: Job) -> dict[str, Any]:
    """generate_firmware's options from a job: the request's, and the quantize stage's labels and
    TensorFlow version when it made the model."""
    r = job.request
    quantized = job.results.get("quantize") or {}
    labels = quantized.get("labels")
    order = quantized.get("keras_inputs")  # tuples from module:function follow the Keras input order
    versions = quantized.get("tool_versions")
    version = versions.get("tensorflow") if isinstance(versions, dict) else None
    # the report may have been edited by hand: only values of the shape quantize writes are used
    return {"board": r.board, "vectors": r.vectors, "tolerance": r.tolerance, "data": r.data,
            "labels": labels if isinstance(labels, list) and all(isinstance(x, str) for x in labels) else None,
            "tensorflow_version": version if isinstance(version, str) else None,
            "input_order": order if isinstance(order, list) and all(isinstance(x, str) for x in order) else None}


def _firmware_job(job: Job) -> FirmwareResult:
    checked = job.results.get("check") or {}
    # the check stage's binary search, when it ran on this model in this job: not run twice
    arena = (checked.get("tflm") or {}).get("arena_bytes") if checked.get("model") == str(job.model) else None
    return generate_firmware(job.model, out=job.request.firmware_out,
                             smallest_arena=(arena, _INTERPRETER) if arena else None,
                             check_fit=not job.request.firmware_build, **firmware_options(job))


def _firmware_outputs(job: Job) -> tuple[str, ...]:
    return () if job.request.firmware_out else ("firmware",)  # a folder elsewhere is not pinned


STAGE = Stage("firmware", run=_firmware_job, cache_key=_firmware_key, outputs=_firmware_outputs,
              not_applicable=_firmware_not_applicable)
