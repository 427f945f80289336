"""Render a TFLite Micro firmware project from an int8 model: the model as an aligned C array,
a resolver with exactly its ops, the measured arena, and golden vectors the firmware checks at
boot. Templates hold every line of C/C++/CMake; this module computes the facts they need.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import PROJECT_DIR, TOOL_NAME, __version__
from ..boards import Board, board_fit, defaults, get_board
from ..rules.tflm import ARENA_MARGIN_BYTES, check_tflm, round_arena, table as tflm_table
from ..errors import NotDeployableError, PipelineError
from ..fileio import ensure_replaceable, replacing_owned_dir, safe_name
from ..cache import content_hash
from ..golden import golden_vectors
from ..versions import package_version
from .base import Job, Stage, fact_tables
from ..templating import TEMPLATE_DIR, Markup, c_float, c_ident, environment
from ..tflite_model import Tensor, TFLiteModel, read_model

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
    "CMakeLists.txt": "firmware/CMakeLists.txt.j2",
    "cmake/arm-none-eabi.cmake": "firmware/cmake/arm-none-eabi.cmake.j2",
}
_SKELETON = ("main.cc", "hil_server.h", "hil_server.cc", "board/board.h", "board/board_host.cc", "board/cortexm/board_cortexm.cc",
             "board/cortexm/startup.c", "board/cortexm/mps2_an386.ld")


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

@dataclass
class FirmwareResult:
    output_dir: Path
    files: list[str]
    arena_bytes: int
    arena_measured: int
    arena_source: str
    resolver_methods: list[str]
    vectors: int
    board: dict[str, Any] | None = None
    builds: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"output_dir": self.output_dir.name, "files": self.files, "arena_bytes": self.arena_bytes,
                "arena_measured_bytes": self.arena_measured, "arena_measured_by": self.arena_source,
                "arena_margin_bytes": ARENA_MARGIN_BYTES, "resolver_methods": self.resolver_methods,
                "test_vectors": self.vectors, "board": self.board, "builds": self.builds}


def generate_firmware(model_path: Path, *, out: Path | None = None, board: str | None = None,
                      vectors: int = DEFAULT_VECTORS, tolerance: int = 0, data: str | None = None,
                      smallest_arena: tuple[int, str] | None = None, labels: list[str] | None = None,
                      tensorflow_version: str | None = None) -> FirmwareResult:
    """`smallest_arena`: (bytes, where measured) when a caller already measured it (the check
    stage, a host build); otherwise the TFLM Python interpreter's binary search runs here (an
    upper bound: its recording allocator lives in the arena too). Either way the golden
    outputs come from the TFLM interpreter, which proves the model runs. `labels` and
    `tensorflow_version` come from the quantize stage, when it made the model."""
    board_preset = get_board(board or DEFAULT_BOARD)
    model = read_model(model_path)
    out_dir = out or model_path.parent / "firmware"
    ensure_replaceable(out_dir, option="--out", legacy=legacy_firmware_files)  # before any work
    tflm = check_tflm(model, model_path, run_interpreter=smallest_arena is None)
    if not tflm.compatible:
        reasons = [f"op {v.index} {v.op}: {v.reason}" for v in tflm.ops if not v.supported]
        reasons += [r for r in (tflm.model_problem, tflm.interpreter_error) if r]
        raise NotDeployableError(f"the model does not run on TFLite Micro: {'; '.join(reasons)}",
                                 path=model_path, field="--model", fix="see `invoke check --target tflm`")
    measured, arena_source = smallest_arena or (tflm.arena_bytes, "the TFLM Python interpreter")
    arena = round_arena(measured) + ARENA_MARGIN_BYTES
    inputs, outputs = io_specs(model)
    golden = golden_vectors(model, model_path, vectors, data)
    raw = model_path.read_bytes()
    context = {
        "generator": f"{TOOL_NAME} {__version__}", "model_file": model_path.name,
        "sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw),
        "name": model_path.parent.name if model_path.parent.name not in ("", ".") else model_path.stem,
        "project": c_ident(f"{safe_name(model_path.parent.name)}_firmware"),
        "tensorflow_version": tensorflow_version or "unknown",
        "tflm_version": f"{tflm_table()['tflite_micro_commit'][:12]} (wheel {tflm_table()['tflite_micro_wheel']})",
        "methods": list(zip([v.op for v in _distinct_ops(tflm.ops)], tflm.resolver_methods)),
        "arena_bytes": arena, "arena_measured": measured, "arena_source": arena_source,
        "arena_margin": ARENA_MARGIN_BYTES, "inputs": inputs, "outputs": outputs,
        "labels": labels, "tolerance": int(tolerance), "source": golden.source,
        "vectors": [{"name": golden.names[v],
                     "inputs": [c_values(golden.inputs[i][v]) for i in range(len(inputs))],
                     "expected": [c_values(golden.expected[o][v]) for o in range(len(outputs))]}
                    for v in range(len(golden))],
        "board": board_preset, "arm_flags": arm_flags(board_preset),
        "linker_script": "board/cortexm/mps2_an386.ld" if board_preset.qemu_machine else "",
        "qemu_machine": board_preset.qemu_machine,
    }
    with replacing_owned_dir(out_dir, context["generator"], option="--out", legacy=legacy_firmware_files) as staging:
        files = _render(staging, context, raw)
        result = FirmwareResult(output_dir=out_dir, files=files, arena_bytes=arena, arena_measured=measured,
                                arena_source=arena_source, resolver_methods=list(tflm.resolver_methods),
                                vectors=len(golden))
        if board:
            io = sum(t["bytes"] for t in inputs) + sum(t["elements"] * t["itemsize"] for t in outputs)
            result.board = board_fit(board_preset, model_bytes=len(raw), arena_bytes=arena, io_bytes=io)
            _check_fit(result.board, board_preset)
    return result


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
    return {rel for rel in (*_TEMPLATES, *_SKELETON) if (folder / rel).is_file()}


def _distinct_ops(verdicts):
    seen, out = set(), []
    for v in verdicts:
        if v.resolver_method and v.resolver_method not in seen:
            seen.add(v.resolver_method)
            out.append(v)
    return out


def arm_flags(board: Board) -> str:
    if not board.cpu.startswith("cortex-"):
        return "-mthumb"  # not an Arm core: this toolchain file does not apply
    flags = [f"-mcpu={board.cpu}", "-mthumb"]
    flags += ["-mfloat-abi=hard", f"-mfpu={board.fpu}"] if board.fpu else ["-mfloat-abi=soft"]
    return " ".join(flags)


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


def _render(staging: Path, context: dict[str, Any], raw: bytes) -> list[str]:
    env = environment()
    written = []
    for rel, template in _TEMPLATES.items():
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


def _check_fit(fit: dict[str, Any], board: Board) -> None:
    problems = []
    for kind in ("flash", "ram"):
        part = fit[kind]
        if not part["fits"]:
            problems.append(f"{kind} needs {part['needed_bytes']} B of {part['capacity_bytes']} B "
                            f"({-part['headroom_bytes']} B over)")
    if problems:
        raise NotDeployableError(f"the model does not fit {board.name}: {'; '.join(problems)}",
                                 field="--board",
                                 fix="a smaller model (fewer/narrower layers), int8 everywhere, or a bigger board")


def measured_flash(elf: Path) -> int | None:
    """text + data of a cross-built image, as `arm-none-eabi-size` reports them."""
    tool = shutil.which("arm-none-eabi-size")
    if not tool or not elf.is_file():
        return None
    out = subprocess.run([tool, str(elf)], capture_output=True, text=True).stdout.splitlines()
    if len(out) < 2:
        return None
    text, data, *_ = out[1].split()
    return int(text) + int(data)



# --- building and running the generated project (needs a TFLM tree) ---------------------------

BUILD_TIMEOUT_S = 1800
RUN_TIMEOUT_S = 120
_SELFTEST_LINE = re.compile(r"^SELFTEST (PASS|FAIL) (\d+)/(\d+)\s*$", re.M)


def tflm_tree_path(explicit: str | None) -> Path | None:
    value = explicit or os.environ.get("TFLM_TREE")
    if not value:
        return None
    tree = Path(value)
    if not (tree / "tensorflow" / "lite" / "micro" / "micro_interpreter.h").is_file():
        raise PipelineError("not a TFLite Micro tree (no tensorflow/lite/micro/micro_interpreter.h)",
                            path=tree, field="--tflm-tree",
                            fix="make one with TFLM's tensorflow/lite/micro/tools/project_generation/create_tflm_tree.py")
    return tree


def build_and_run(project: Path, tree: Path, build_dir: Path, *, cross: Board | None = None) -> dict[str, Any]:
    """Configure, build and run the self-test: natively, or cross-compiled for `cross` and run
    under QEMU when the board has a QEMU machine and qemu-system-arm is installed."""
    kind = f"cross:{cross.key}" if cross else "host"
    configure = ["cmake", "-S", str(project), "-B", str(build_dir), f"-DTFLM_TREE={tree}"]
    if cross:
        if not shutil.which("arm-none-eabi-g++"):
            return {"kind": kind, "built": False, "reason": "arm-none-eabi-g++ not installed"}
        configure.append(f"-DCMAKE_TOOLCHAIN_FILE={project / 'cmake' / 'arm-none-eabi.cmake'}")
    for cmd in (configure, ["cmake", "--build", str(build_dir), f"-j{os.cpu_count() or 2}"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise PipelineError(f"{kind} build failed:\n{tail}", path=project, field="--build",
                                fix="see the compiler output above")
    result: dict[str, Any] = {"kind": kind, "built": True}
    if cross:
        elf = build_dir / "selftest.elf"
        result["flash_bytes"] = measured_flash(elf)
        qemu = shutil.which("qemu-system-arm")
        if not cross.qemu_machine or not qemu:
            result["ran"] = False
            result["reason"] = "no QEMU machine for this board" if not cross.qemu_machine else "qemu-system-arm not installed"
            return result
        run = [qemu, "-M", cross.qemu_machine, "-nographic", "-monitor", "none", "-serial", "null",
               "-semihosting", "-kernel", str(elf)]
    else:
        run = [str(build_dir / "selftest")]
    try:
        proc = subprocess.run(run, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise PipelineError(f"the {kind} self-test did not finish within {RUN_TIMEOUT_S} s", path=project,
                            field="--build", fix="run it by hand") from None
    output = proc.stdout + proc.stderr
    m = _SELFTEST_LINE.search(output)
    result.update(ran=True, exit_code=proc.returncode, output=output.strip().splitlines()[-12:],
                  selftest=m.group(0).strip() if m else None, passed=bool(m and m.group(1) == "PASS"))
    return result


def smallest_host_arena(selftest: Path, upper: int) -> int:
    """Binary search over `selftest --arena N` (the real C++ interpreter, this host): the
    smallest arena with which every golden vector still passes. `upper` is known to pass."""
    lo, hi = 256, upper
    while lo < hi:
        mid = (lo + hi) // 2
        try:
            proc = subprocess.run([str(selftest), "--arena", str(mid)], capture_output=True, text=True,
                                  timeout=RUN_TIMEOUT_S, stdin=subprocess.DEVNULL)
            ok = proc.returncode == 0 and "SELFTEST PASS" in proc.stdout
        except subprocess.TimeoutExpired:
            ok = False
        if ok:
            hi = mid
        else:
            lo = mid + 1
    return hi


def build_and_verify(model_path: Path, result: FirmwareResult, tree: Path, *, board: str | None = None,
                     **generate_options) -> FirmwareResult:
    """Host build and self-test; the real smallest arena measured on it and written back into
    model_settings.h; then the cross build for the board (run under QEMU where it can be)."""
    project = result.output_dir
    host_dir = project.parent / "fw-host"
    host = build_and_run(project, tree, host_dir)
    if host.get("passed"):
        smallest = smallest_host_arena(host_dir / "selftest", result.arena_bytes)
        if round_arena(smallest) + ARENA_MARGIN_BYTES != result.arena_bytes:
            result = generate_firmware(model_path, out=project, board=board,
                                       smallest_arena=(smallest, "the host build's own interpreter"),
                                       **generate_options)
            host = build_and_run(project, tree, host_dir)
        host["smallest_arena_bytes"] = smallest
    result.builds["host"] = host
    target = get_board(board or DEFAULT_BOARD)
    if target.cpu.startswith("cortex-"):
        cross = build_and_run(project, tree, project.parent / f"fw-{target.key}", cross=target)
        result.builds[cross["kind"]] = cross
        if board and cross.get("flash_bytes") and result.board:
            result.board = board_fit(target, model_bytes=cross["flash_bytes"] - defaults()["runtime_flash_bytes"],
                                     arena_bytes=result.arena_bytes,
                                     io_bytes=result.board["ram"]["io_bytes"])
            result.board["flash"]["measured_with"] = "arm-none-eabi-size"
    return result


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
    versions = quantized.get("tool_versions")
    version = versions.get("tensorflow") if isinstance(versions, dict) else None
    # the report may have been edited by hand: only values of the shape quantize writes are used
    return {"board": r.board, "vectors": r.vectors, "tolerance": r.tolerance, "data": r.data,
            "labels": labels if isinstance(labels, list) and all(isinstance(x, str) for x in labels) else None,
            "tensorflow_version": version if isinstance(version, str) else None}


def _firmware_job(job: Job) -> FirmwareResult:
    checked = job.results.get("check") or {}
    # the check stage's binary search, when it ran on this model in this job: not run twice
    arena = (checked.get("tflm") or {}).get("arena_bytes") if checked.get("model") == str(job.model) else None
    return generate_firmware(job.model, out=job.request.firmware_out,
                             smallest_arena=(arena, "the TFLM Python interpreter") if arena else None,
                             **firmware_options(job))


def _firmware_outputs(job: Job) -> tuple[str, ...]:
    return () if job.request.firmware_out else ("firmware",)  # a folder elsewhere is not pinned


STAGE = Stage("firmware", run=_firmware_job, cache_key=_firmware_key, outputs=_firmware_outputs,
              not_applicable=_firmware_not_applicable)
