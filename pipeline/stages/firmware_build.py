"""Building and running the generated firmware: the TFLM tree (validated, CMSIS-NN detected), a
cache of TFLM static libraries per (tree, toolchain, flags) that later models and boards
reuse, host and Cortex-M builds, the self-test natively and under QEMU, the smallest arena by
binary search on each, and the board fit from the linked image.

Every compile flag and source-selection rule lives in the templates (cmake/tflm.cmake); this
module decides what to build where, runs the tools, and reads their results.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Callable

from .. import TOOL_NAME, __version__
from ..user_cache import cache_root, locked
from ..boards import Board, get_board, linked_fit, measuring_board
from ..errors import PipelineError
from ..fileio import write_text_atomic
from ..runtime.process import ToolFlood, ToolTimeout, run_tool
from ..templating import TEMPLATE_DIR, environment

log = logging.getLogger(__name__)

BUILD_TIMEOUT_S = 1800
RUN_TIMEOUT_S = 120
QEMU_ICOUNT_SHIFT = 0  # one instruction = 2**shift ns of QEMU's virtual clock
_SELFTEST_LINE = re.compile(r"^SELFTEST (PASS|FAIL) (\d+)/(\d+)\s*$", re.M)
_VECTOR_LINE = re.compile(r"^vector (\d+) \(.*\): (PASS max diff (\d+)|FAIL .*?differs by (\d+)|FAIL .*?)"
                          r"(?:, (\d+) (cycles|us)|, time not measured)?\s*$", re.M)
_ARENA_LINE = re.compile(r"^arena: (\d+) of (\d+) bytes used", re.M)
_COMPILED_LINE = re.compile(r"Building (?:C|CXX|ASM) object", re.M)
_CREATE_TREE = "tensorflow/lite/micro/tools/project_generation/create_tflm_tree.py"


# --- the TFLM tree -----------------------------------------------------------------------------

@dataclass(frozen=True)
class TflmTree:
    path: Path

    @property
    def cmsis_nn(self) -> bool:
        """Made with OPTIMIZED_KERNEL_DIR=cmsis_nn: Arm's CMSIS-NN kernels replace some reference ones."""
        return (self.path / "third_party" / "cmsis_nn" / "Include" / "arm_nnfunctions.h").is_file()

    @property
    def kernels(self) -> str:
        return "cmsis-nn" if self.cmsis_nn else "reference"

    def identity(self) -> str:
        return _tree_digest(str(self.path), _tree_stamp(self.path))

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)


def _tree_stamp(path: Path) -> tuple:
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return tuple((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)


@cache
def _tree_digest(path: str, stamp: tuple) -> str:
    h = hashlib.sha256()
    for rel, _, _ in stamp:
        h.update(rel.encode() + b"\0" + hashlib.sha256((Path(path) / rel).read_bytes()).digest())
    return h.hexdigest()


def resolve_tree(explicit: str | Path | None) -> TflmTree | None:
    """--tflm-tree, else $TFLM_TREE; None when neither is given. A directory that is not a tree
    made by create_tflm_tree.py is refused with what it is and how to make one."""
    value = explicit or os.environ.get("TFLM_TREE")
    if not value:
        return None
    if isinstance(value, TflmTree):
        return value
    path = Path(value).expanduser().resolve()
    field = "--tflm-tree" if explicit else "TFLM_TREE"
    make = f"make one with `python3 {_CREATE_TREE} <out>` in a tflite-micro checkout and pass <out>"
    if not path.is_dir():
        raise PipelineError("no such directory", path=path, field=field, fix=make)
    micro = path / "tensorflow" / "lite" / "micro"
    if micro.is_dir() and not (path / "third_party" / "flatbuffers" / "include").is_dir():
        what = "a tflite-micro git checkout" if (micro / "tools" / "make" / "Makefile").is_file() or (
            path / ".git").exists() else "TFLM sources without their third-party libraries"
        raise PipelineError(f"{what}, not a tree made from it (no third_party/flatbuffers/include)",
                            path=path, field=field,
                            fix=f"in the checkout run `python3 {_CREATE_TREE} <out>` (it downloads "
                                "flatbuffers, gemmlowp, ruy, kissfft) and pass <out>")
    if not (micro / "micro_interpreter.h").is_file():
        raise PipelineError("not a TFLite Micro tree (no tensorflow/lite/micro/micro_interpreter.h)",
                            path=path, field=field, fix=make)
    return TflmTree(path)


# --- tools ---------------------------------------------------------------------------------------

def _run(cmd: list[str], *, what: str, project: Path, timeout: float = BUILD_TIMEOUT_S,
         cwd: Path | None = None) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise PipelineError(f"{what} did not finish within {timeout:.0f} s", path=project, field="--build",
                            fix="run the build by hand to see where it stops") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise PipelineError(f"{what} failed:\n{tail}", path=project, field="--build",
                            fix="see the compiler output above")
    return proc


@cache
def _tool_version(tool: str) -> str:
    try:
        out = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=30).stdout
    except OSError:
        return "unknown"
    return out.splitlines()[0] if out else "unknown"


def _launcher() -> list[str]:
    """ccache when installed: optional, never required."""
    if shutil.which("ccache") and os.environ.get("EDGE_DEPLOY_CCACHE", "1") != "0":
        return ["-DCMAKE_C_COMPILER_LAUNCHER=ccache", "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"]
    return []


def _library_generator() -> list[str]:
    """Ninja for the library cache when installed: it rebuilds a command whose line changed, so
    sources new to a library compile alone. CMake's Makefiles keep every source's flags in one
    file per target, and adding a source to it recompiles the whole library."""
    return ["-G", "Ninja"] if shutil.which("ninja") else []


def _compiled_files(proc: subprocess.CompletedProcess) -> int:
    """How many files a `cmake --build` compiled, from make's or ninja's progress lines."""
    return len(_COMPILED_LINE.findall(proc.stdout))


def _jobs() -> str:
    return f"-j{os.cpu_count() or 2}"


# --- the library cache ---------------------------------------------------------------------------

def _template_digest() -> str:
    h = hashlib.sha256()
    for rel in ("firmware/cmake/tflm.cmake.j2", "firmware/library/CMakeLists.txt.j2",
                "firmware/cmake/arm-none-eabi.cmake.j2"):
        h.update((TEMPLATE_DIR / rel).read_bytes())
    return h.hexdigest()


def _library_key(tree: TflmTree, board: Board | None) -> tuple[str, str, str]:
    compiler = "arm-none-eabi-g++" if board else "c++"
    build_type = "MinSizeRel" if board else "Release"
    flags = board.arm_flags() if board else "host"
    key = hashlib.sha256(json.dumps({
        "tree": str(tree.path), "tree_content": tree.identity(), "compiler": shutil.which(compiler) or compiler,
        "compiler_version": _tool_version(compiler), "flags": flags, "build_type": build_type,
        "templates": _template_digest(), "cmake": _tool_version("cmake"), "tool": __version__,
        "generator": _library_generator(),
    }, sort_keys=True).encode()).hexdigest()
    return key, build_type, flags


def library_path(tree: TflmTree, board: Board | None, root: Path) -> Path:
    return root / "tflm" / _library_key(tree, board)[0][:20] / "build" / "libtflm.a"


def library_pch(lib: Path) -> Path:
    """The header CMake precompiles for the library (its .gch lies beside it)."""
    return lib.parent / "CMakeFiles" / "tflm.dir" / "cmake_pch.hxx"


def library(tree: TflmTree, board: Board | None, sources: list[str], *, project: Path,
            root: Path) -> dict[str, Any]:
    """The cached libtflm.a for this tree, compiler and flags, holding at least `sources`: the
    union of what every model built with it needed so far; only sources new to it compile."""
    key, build_type, flags = _library_key(tree, board)
    where = root / "tflm" / key[:20]
    lib = where / "build" / "libtflm.a"
    with locked(root / "tflm" / f"{key[:20]}.lock"):
        known = set((where / "sources.txt").read_text().split("\n")) - {""} if (where / "sources.txt").is_file() else set()
        wanted = known | set(sources)
        if lib.is_file() and wanted == known:
            return {"path": str(lib), "key": key[:20], "sources": len(known), "compiled_now": 0, "cached": True}
        start = time.perf_counter()
        where.mkdir(parents=True, exist_ok=True)
        context = {"generator": f"{TOOL_NAME} {__version__}", "model_file": "the TFLM library cache", "sha256": key,
                   "board": board, "arm_flags": flags if board else ""}
        env = environment()
        write_text_atomic(where / "CMakeLists.txt", env.get_template("firmware/library/CMakeLists.txt.j2").render(**context))
        write_text_atomic(where / "tflm.cmake", env.get_template("firmware/cmake/tflm.cmake.j2").render(**context))
        unpaired = where / "kernels-unpaired"  # a kernel and its _common.cc failed as one unit here
        configure = ["cmake", "-S", str(where), "-B", str(where / "build"), f"-DTFLM_TREE={tree.path}",
                     f"-DCMAKE_BUILD_TYPE={build_type}", *_library_generator(), *_launcher()]
        if board:
            write_text_atomic(where / "arm-none-eabi.cmake",
                              env.get_template("firmware/cmake/arm-none-eabi.cmake.j2").render(**context))
            configure.append(f"-DCMAKE_TOOLCHAIN_FILE={where / 'arm-none-eabi.cmake'}")
        write_text_atomic(where / "sources.txt", "\n".join(sorted(wanted)) + "\n")
        pairs = f"-DTFLM_PAIR_KERNELS={'OFF' if unpaired.exists() else 'ON'}"
        _run(configure + [pairs], what="configuring the TFLM library", project=project)
        build_cmd = ["cmake", "--build", str(where / "build"), _jobs()]
        try:
            proc = _run(build_cmd, what="building the TFLM library", project=project)
        except PipelineError:
            if unpaired.exists():
                raise
            # another tree's kernel and _common.cc may clash as one unit: build them apart, and
            # remember it for this library
            _run(configure + ["-DTFLM_PAIR_KERNELS=OFF"], what="configuring the TFLM library", project=project)
            proc = _run(build_cmd, what="building the TFLM library", project=project)
            write_text_atomic(unpaired, "TFLM_PAIR_KERNELS=OFF: a kernel and its _common.cc failed to compile "
                                        "as one unit with this tree\n")
        return {"path": str(lib), "key": key[:20], "sources": len(wanted), "compiled_now": len(wanted - known),
                "compiled_files": _compiled_files(proc), "cached": False,
                "seconds": round(time.perf_counter() - start, 1)}


# --- one build -------------------------------------------------------------------------------------

def build(project: Path, tree: TflmTree, build_dir: Path, *, board: Board | None = None,
          hil_server: bool = False, hil_tensors: bool = False,
          cache: Path | None | str = "default") -> dict[str, Any]:
    """Configure and build the project for the host (`board` None) or cross-compiled for a
    Cortex-M board, linking the cached TFLM library (`cache=None`: the project compiles its
    own TFLM sources). `hil_tensors`: every tensor preserved for HIL's TENSOR request (the
    application only; the library is the same). Returns what was built; raises PipelineError
    when a tool fails."""
    root = cache_root() if cache == "default" else cache
    start = time.perf_counter()
    configure = ["cmake", "-S", str(project), "-B", str(build_dir), f"-DTFLM_TREE={tree.path}",
                 f"-DHIL_SERVER={'ON' if hil_server else 'OFF'}",
                 f"-DHIL_TENSORS={'ON' if hil_tensors else 'OFF'}", *_launcher()]
    if board:
        configure.append("-DCORTEX_M=ON")
    # configure only records the library's path: it is built (or extended) below, before the
    # application compiles, and so is the precompiled header main.cc reuses
    lib = library_path(tree, board, root) if root is not None else None
    configure += [f"-DTFLM_LIB={lib or ''}", f"-DTFLM_LIB_PCH={library_pch(lib) if lib else ''}"]
    kind = f"cross:{board.key}" if board else "host"
    _run(configure, what=f"configuring the {kind} build", project=project)
    sources = [s for s in (build_dir / "tflm_sources.txt").read_text().split("\n") if s]
    result: dict[str, Any] = {"kind": kind, "built": False, "build_dir": str(build_dir),
                              "tflm_sources": len(sources), "kernels": tree.kernels}
    if root is not None:
        result["library"] = library(tree, board, sources, project=project, root=root)
    proc = _run(["cmake", "--build", str(build_dir), _jobs()], what=f"the {kind} build", project=project)
    result.update(built=True, build_seconds=round(time.perf_counter() - start, 1),
                  compiled_files=_compiled_files(proc))
    if board:
        result["size"] = image_size(build_dir / "selftest.elf")
    return result


def image_size(elf: Path) -> dict[str, int] | None:
    """text, data and bss of a linked image, as `arm-none-eabi-size` (Berkeley format) gives them."""
    tool = shutil.which("arm-none-eabi-size")
    if not tool or not elf.is_file():
        return None
    lines = subprocess.run([tool, str(elf)], capture_output=True, text=True).stdout.splitlines()
    if len(lines) < 2:
        return None
    text, data, bss, *_ = lines[1].split()
    return {"text": int(text), "data": int(data), "bss": int(bss)}


# --- running the self-test -------------------------------------------------------------------------

def qemu_command(board: Board, elf: Path, args: tuple[str, ...] = (), serial: str = "null") -> list[str]:
    """QEMU with the firmware's semihosting command line, and -icount so its virtual clock counts
    instructions (what the firmware's SysTick then measures) and runs are deterministic."""
    qemu = shutil.which("qemu-system-arm") or "qemu-system-arm"
    cmdline = "".join(f",arg={a}" for a in ("selftest", *args))
    return [qemu, "-M", board.qemu_machine, "-nographic", "-monitor", "none", "-serial", serial,
            "-icount", f"shift={QEMU_ICOUNT_SHIFT}", "-semihosting-config", f"enable=on,target=native{cmdline}",
            "-kernel", str(elf)]


def run_selftest(build_dir: Path, board: Board | None, args: tuple[str, ...] = ()) -> dict[str, Any]:
    if board:
        cmd = qemu_command(board, build_dir / "selftest.elf", args)
    else:
        cmd = [str(build_dir / "selftest"), *args]
    try:  # to its exit, or (a build with the HIL server never exits) to the line saying it serves
        output, code = run_tool(cmd, RUN_TIMEOUT_S, stop_at=_SERVING)
    except (ToolTimeout, ToolFlood) as e:
        why = f"did not finish within {RUN_TIMEOUT_S} s" if isinstance(e, ToolTimeout) else "printed without end"
        return {"ran": True, "passed": False, "selftest": None, "exit_code": None, "output": [why]}
    m = _SELFTEST_LINE.search(output)
    result: dict[str, Any] = {"ran": True, "exit_code": code, "selftest": m.group(0).strip() if m else None,
                              "passed": bool(m and m.group(1) == "PASS" and code == 0),
                              "output": output.strip().splitlines()[-12:]}
    used = _ARENA_LINE.search(output)
    result["arena_used_bytes"] = int(used.group(1)) if used else None
    diffs, times, unit = [], [], None
    for v in _VECTOR_LINE.finditer(output):
        diff = v.group(3) or v.group(4)
        diffs.append(int(diff) if diff is not None else None)
        if v.group(5):
            times.append(int(v.group(5)))
            unit = v.group(6)
    result["max_difference"] = max((d for d in diffs if d is not None), default=None)
    result["timing"] = _timing(board, unit, times)
    return result


_SERVING = "HIL: serving"  # a HIL-server build's line after its self-test: it then serves until reset


def _timing(board: Board | None, unit: str | None, values: list[int]) -> dict[str, Any]:
    """What the self-test's per-vector times mean. Under QEMU the firmware's cycle counter is
    SysTick driven by the -icount virtual clock: cycles x 1000 / clock_mhz are instructions."""
    if not values:
        return {"measured": False, "unit": None, "per_vector": None,
                "method": "not measured: the board counts no cycles and keeps no time"}
    if board is None:
        return {"measured": True, "unit": "us", "per_vector": values, "method": "host CLOCK_MONOTONIC"}
    per_insn = 1000 / board.clock_mhz * (1 << QEMU_ICOUNT_SHIFT)
    return {"measured": True, "unit": "instructions", "per_vector": [round(v * per_insn) for v in values],
            "cycles_per_vector": values, "resolution_instructions": round(per_insn),
            "method": f"QEMU -icount shift={QEMU_ICOUNT_SHIFT}: SysTick at the emulated {board.clock_mhz} MHz "
                      "clock counts instructions (QEMU is not cycle-accurate: device microseconds not measured)"}


def smallest_arena(passes: Callable[[int], bool], upper: int, hint: int | None) -> tuple[int, int]:
    """Binary search for the smallest arena with which `passes` (every golden vector runs and
    matches); `upper` is known to pass. `hint` (the bytes the interpreter reported using) starts
    the search in a narrow window around it. Returns (bytes, runs)."""
    runs = 0

    def ok(n: int) -> bool:
        nonlocal runs
        runs += 1
        return passes(n)

    lo, hi = 256, upper
    if hint:
        window_lo, window_hi = max(lo, hint - 256), min(upper, hint + 256)
        if window_hi < upper and ok(window_hi):
            hi = window_hi
        if window_lo > lo and window_lo < hi and not ok(window_lo):
            lo = window_lo + 1
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi, runs


def search_arena(build_dir: Path, board: Board | None, upper: int, hint: int | None) -> tuple[int, int]:
    return smallest_arena(lambda n: bool(run_selftest(build_dir, board, ("--arena", str(n)))["passed"]), upper, hint)


def smallest_host_arena(selftest: Path, upper: int) -> int:
    """Binary search over `selftest --arena N` on this host (kept for callers of the old API)."""
    return search_arena(selftest.parent, None, upper, None)[0]


def build_and_run(project: Path, tree: TflmTree | str | Path, build_dir: Path, *, cross: Board | None = None,
                  hil_server: bool = False, hil_tensors: bool = False) -> dict[str, Any]:
    """Build for the host or cross-compiled for `cross`, then run the self-test: natively, or
    under QEMU when the board has a QEMU machine and qemu-system-arm is installed. Paths may be
    relative: they are resolved here, before any tool runs in another directory."""
    tree = tree if isinstance(tree, TflmTree) else resolve_tree(tree)
    project, build_dir = Path(project).resolve(), Path(build_dir).resolve()
    if cross is not None and (missing := _cross_tool_missing(cross)):
        return {"kind": f"cross:{cross.key}", "built": False, "reason": missing}
    result = build(project, tree, build_dir, board=cross, hil_server=hil_server, hil_tensors=hil_tensors)
    if cross is not None and not (cross.qemu_machine and shutil.which("qemu-system-arm")):
        result.update(ran=False, reason="no QEMU machine for this board" if not cross.qemu_machine
                      else "qemu-system-arm not installed")
        return result
    result.update(run_selftest(build_dir, cross))
    return result


# --- the whole --build -----------------------------------------------------------------------------

def _cross_tool_missing(board: Board) -> str | None:
    if not board.is_cortex_m:
        return f"{board.toolchain} (for {board.cpu}) is not installed: cross build not possible here"
    for tool in ("arm-none-eabi-gcc", "arm-none-eabi-g++"):
        if not shutil.which(tool):
            return f"{tool} not installed (Debian: gcc-arm-none-eabi libnewlib-arm-none-eabi)"
    return None


def _measure(project: Path, tree: TflmTree, build_dir: Path, board: Board | None, upper: int,
             search: bool) -> dict[str, Any]:
    result = build(project, tree, build_dir, board=board)
    result.update(run_selftest(build_dir, board))
    if search and result["passed"]:
        result["smallest_arena_bytes"], result["arena_search_runs"] = search_arena(
            build_dir, board, upper, result.get("arena_used_bytes"))
    return result


def _cross_build_and_measure(model_path: Path, result, tree: TflmTree, project: Path, target: Board,
                             generate_options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The board's build, run and measured under QEMU on its own machine, or built and measured
    on a QEMU preset with the same flags: (the board's result, the measuring build's or None).
    A failing build is a result, never an exception: the host result beside it stands."""
    from .firmware import generate_firmware

    kind = f"cross:{target.key}"
    if missing := _cross_tool_missing(target):
        return {"kind": kind, "built": False, "reason": missing}, None
    cross_dir = project.parent / f"fw-{target.key}"
    runner = measuring_board(target) if shutil.which("qemu-system-arm") else None
    measured = None
    try:
        if runner is target:
            return _measure(project, tree, cross_dir, target, result.arena_bytes, search=True), None
        cross = build(project, tree, cross_dir, board=target)
        cross["ran"] = False
        cross["reason"] = ("no QEMU machine for this board" if shutil.which("qemu-system-arm")
                           else "qemu-system-arm not installed")
        if runner is not None:
            other = project.parent / f"fw-measure-{runner.key}"
            generate_firmware(model_path, out=other / "firmware", board=runner, golden=result.golden,
                              smallest_arena=(result.arena_measured, result.arena_source), **generate_options)
            measured = _measure(other / "firmware", tree, other / "build", runner, result.arena_bytes, search=True)
            measured["kind"] = f"measure:{runner.key}"
            cross["arena_measured_on"] = runner.key
            if measured.get("smallest_arena_bytes"):
                cross["smallest_arena_bytes"] = measured["smallest_arena_bytes"]
        return cross, measured
    except PipelineError as exc:
        return {"kind": kind, "built": False, "error": exc.message,
                "does_not_fit": bool(re.search(r"region `?\w+'? overflowed", exc.message))}, measured


def _rebuild_cross(project: Path, tree: TflmTree, target: Board, cross: dict[str, Any]) -> dict[str, Any]:
    """The board's build again with the measured arena, run again when it ran the first time."""
    kind = cross["kind"]
    cross_dir = Path(cross["build_dir"])
    try:
        again = build(project, tree, cross_dir, board=target)
        if cross.get("ran", True) and target.qemu_machine and shutil.which("qemu-system-arm"):
            again.update(run_selftest(cross_dir, target))
        else:
            again.update(ran=False, reason=cross.get("reason"))
        for k in ("smallest_arena_bytes", "arena_search_runs", "arena_measured_on"):
            if k in cross:
                again[k] = cross[k]
        _keep_first_library(again, cross)
        return again
    except PipelineError as exc:
        return {"kind": kind, "built": False, "error": exc.message}


def _keep_first_library(rebuild: dict[str, Any], first: dict[str, Any]) -> None:
    """A rebuild with the measured arena finds its library cached: what this --build compiled
    of it is the first build's figure."""
    if "library" in first:
        rebuild["library"] = first["library"]


def build_and_verify(model_path: Path, result, tree: TflmTree | str | Path, *, board: str | Board | None = None,
                     host: bool = True, **generate_options):
    """Host build and self-test, the smallest host arena; the cross build for the board, run and
    measured under QEMU (on the board's own machine, or a QEMU preset with the same flags); the
    measured arenas written back (model_arena.h), both images rebuilt with them, and the board
    fit taken from the linked image. A failing cross build is recorded next to the host result,
    never instead of it. `host=False` skips the host build (its figure stays as it was). The
    caller records the result, then calls raise_if_the_image_does_not_fit."""
    from ..rules.tflm import ARENA_MARGIN_BYTES, round_arena
    from .firmware import DEFAULT_BOARD, ArenaFigures, generate_firmware

    tree = resolve_tree(tree) if not isinstance(tree, TflmTree) else tree
    model_path = Path(model_path).resolve()
    project = Path(result.output_dir).resolve()
    target = get_board(board or DEFAULT_BOARD)
    host_dir = project.parent / "fw-host"
    upper = result.arena.host_bytes if result.arena else result.arena_bytes
    builds: dict[str, Any] = {}
    kind = f"cross:{target.key}"
    # the host and the board build (with their TFLM libraries) run side by side: each has
    # stretches on one core (a precompiled header, the link, QEMU), so two cores finish both
    # in little more than the longer one takes
    with ThreadPoolExecutor(max_workers=1) as pool:
        board_side = pool.submit(_cross_build_and_measure, model_path, result, tree, project, target,
                                 generate_options)
        host = _measure(project, tree, host_dir, None, upper, search=True) if host else {}
        cross, measured = board_side.result()
    if host:
        builds["host"] = host
    if measured:
        builds[measured["kind"]] = measured
    builds[kind] = cross

    figures = result.arena
    host_arena = host.get("smallest_arena_bytes")
    board_arena = (cross or {}).get("smallest_arena_bytes")
    if host_arena or board_arena:
        where = (cross or {}).get("arena_measured_on", target.key)
        figures = ArenaFigures(
            host_arena or figures.host_measured,
            "binary search of `selftest --arena N` on the host build" if host_arena else figures.host_source,
            board_arena or host_arena or figures.board_measured,
            f"binary search of `selftest --arena N` on the {where} build under QEMU" if board_arena
            else "the host build (64-bit: an upper bound for this 32-bit board; not measured on it)"
            if host_arena else figures.board_source)
        changed = (round_arena(figures.host_measured) + ARENA_MARGIN_BYTES != upper
                   or figures.board_bytes != result.arena_bytes)
        result = generate_firmware(model_path, out=project, board=board, arena=figures, check_fit=False,
                                   golden=result.golden, **generate_options)
        if changed:  # only arena.cc recompiles: rebuild and rerun both with the figures written down,
            # side by side like the first builds
            with ThreadPoolExecutor(max_workers=1) as pool:
                board_again = pool.submit(_rebuild_cross, project, tree, target, cross) \
                    if cross and cross.get("built") else None
                if host:
                    final_host = _measure(project, tree, host_dir, None, figures.host_bytes, search=False)
                    final_host["smallest_arena_bytes"] = host_arena
                    final_host["arena_search_runs"] = host.get("arena_search_runs")
                    _keep_first_library(final_host, host)
                    builds["host"] = final_host
                if board_again is not None:
                    builds[kind] = cross = board_again.result()
    result.builds = builds
    if cross and cross.get("built") and cross.get("size"):
        size = cross["size"]
        result.board = linked_fit(target, text=size["text"], data=size["data"], bss=size["bss"],
                                  model_bytes=model_path.stat().st_size, arena_bytes=result.arena_bytes,
                                  elf=str(Path(cross["build_dir"]) / "selftest.elf"))
        cross["flash_bytes"] = size["text"] + size["data"]
        cross["ram_bytes"] = size["data"] + size["bss"]
    return result


def raise_if_the_image_does_not_fit(result, board: str | Board | None = None) -> None:
    """After the caller recorded the result: a linked image too big for the board is exit 1."""
    from ..boards import fits, raise_if_too_big
    from .firmware import DEFAULT_BOARD

    if result.board is not None and fits(result.board) is False:
        raise_if_too_big(result.board, get_board(board or DEFAULT_BOARD))
