"""Support for the reliability battery (`test_reliability.py`): run the tasks as a user does, in
a sandbox, and observe everything they leave behind.

A task runs as `python -m invoke -r <checkout> <task> ...` in a subprocess whose working
directory is the sandbox, with TMPDIR pointing at a sandbox folder (so temporary litter is
visible), in its own session (so a hang is killed as a whole), with a wall-clock limit, and
optionally with resource limits (address space, file size) or a fault-injection hook that runs
before invoke starts (it wraps a standard-library call and sends a signal at a chosen point;
it never replaces code of the project).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
import tty
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
# The shared reference data lives beside the checkout (CI) or at /work/shared (helpers' trees).
SHARED = next((p for p in (ROOT.parent / "shared", Path("/work/shared")) if p.is_dir()), None)
GXX = shutil.which("g++")
CMAKE = shutil.which("cmake")

# Names a tool may use for its own temporary files; none may survive a run.
LITTER = re.compile(r"(^\..*(staging|\.old$|\.tmp$|^\.probe-))|(\.tmp$)|(^tmp[a-z0-9_]{6,}$)")


def tflm_tree() -> Path | None:
    for candidate in (os.environ.get("TFLM_TREE"), SHARED and SHARED / "tflm-tree"):
        if candidate and (Path(candidate) / "tensorflow" / "lite" / "micro" / "micro_interpreter.h").is_file():
            return Path(candidate)
    return None


# --- running a task ---------------------------------------------------------------------------

@dataclass
class Run:
    args: list[str]
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    timeout: float
    timed_out: bool = False

    def describe(self) -> str:
        tail = "\n    ".join(self.stderr.strip().splitlines()[-6:]) or "(empty)"
        state = f"HUNG (killed after {self.timeout:g} s)" if self.timed_out else f"exit {self.returncode}"
        return f"`invoke {' '.join(map(str, self.args))}`: {state} in {self.seconds:.1f} s; stderr:\n    {tail}"

    def error_lines(self) -> list[str]:
        return [l for l in self.stderr.splitlines() if l.startswith(("error:", "interrupted:"))]


_BOOT = """
import sys
{hook}
sys.argv = ["invoke", "-r", {tasks_dir!r}] + sys.argv[1:]
from invoke.main import program
program.run()
"""

_BOOT_PROGRAM = """
import sys
{hook}
sys.path.insert(0, {root!r})
import tasks
sys.argv = ["edge-deploy"] + sys.argv[1:]
tasks.program.run()
"""

_PROJECT_TASKS = """# a user's project: the edge-deploy tasks, loaded from the checkout
import importlib.util, sys
sys.path.insert(0, {root!r})
_spec = importlib.util.spec_from_file_location("edge_deploy_tasks", {tasks!r})
_module = importlib.util.module_from_spec(_spec)
sys.modules["edge_deploy_tasks"] = _module
_spec.loader.exec_module(_module)
ns = _module.ns
"""


def project_tasks_shim(folder: Path) -> Path:
    """A tasks.py in a user's project that exposes the checkout's tasks, so that invoke reads
    the project's own invoke.yaml (it looks for it next to the tasks file)."""
    return write(folder / "tasks.py", _PROJECT_TASKS.format(root=str(ROOT), tasks=str(ROOT / "tasks.py")))


def _limits(as_bytes: int | None, fsize: int | None) -> str:
    """Resource limits set by the task's own interpreter before invoke starts (inherited by the
    workers it spawns); a file-size limit answers with EFBIG instead of a SIGXFSZ kill."""
    code = "import resource, signal\n"
    if as_bytes is not None:
        code += f"resource.setrlimit(resource.RLIMIT_AS, ({as_bytes}, {as_bytes}))\n"
    if fsize is not None:
        code += ("signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
                 f"resource.setrlimit(resource.RLIMIT_FSIZE, ({fsize}, {fsize}))\n")
    return code


def start_invoke(*args, cwd: Path, env: dict | None = None, hook: str = "", python_flags=(),
                 as_bytes: int | None = None, fsize: int | None = None, stdin=subprocess.DEVNULL,
                 entry: str = "checkout"):
    """Start a task in its own session; the caller owns the process. `entry`: "checkout"
    (`invoke -r <checkout>`), "project" (`invoke -r <cwd>`, where `project_tasks_shim` wrote a
    tasks.py: a user's project with its own invoke.yaml), or "edge-deploy" (the installed
    program, which reads ./invoke.yaml)."""
    full_env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", TF_CPP_MIN_LOG_LEVEL="2")
    for key, value in (env or {}).items():  # None removes a variable
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    prelude = _limits(as_bytes, fsize) if (as_bytes or fsize) else ""
    boot = (_BOOT_PROGRAM if entry == "edge-deploy" else _BOOT).format(
        hook=prelude + hook, root=str(ROOT), tasks_dir=str(cwd if entry == "project" else ROOT))
    cmd = [sys.executable, *python_flags, "-c", boot, *map(str, args)]
    return subprocess.Popen(cmd, cwd=cwd, env=full_env, stdin=stdin, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


def finish(proc, args, timeout: float, started: float) -> Run:
    """Wait for a started task until `timeout` s after `started`; kill its session after that."""
    try:
        out, err = proc.communicate(timeout=max(0.1, timeout - (time.monotonic() - started)))
        timed_out = False
    except subprocess.TimeoutExpired:
        kill_group(proc)
        try:
            out, err = proc.communicate(timeout=2)
        except subprocess.TimeoutExpired:  # a grandchild in a session of its own holds the pipes
            out, err = b"", b""
        timed_out = True
    return Run(list(map(str, args)), proc.returncode, out.decode("utf-8", "replace"),
               err.decode("utf-8", "replace"), time.monotonic() - started, timeout, timed_out)


def kill_group(proc) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.wait(timeout=10)


def run_invoke(*args, cwd: Path, timeout: float = 60, **kw) -> Run:
    started = time.monotonic()
    proc = start_invoke(*args, cwd=cwd, **kw)
    return finish(proc, args, timeout, started)


# --- what a run must look like ------------------------------------------------------------------

_EXCEPTION_LINE = re.compile(r"^\s*(\w+\.)*\w*(Error|Exception|Interrupt)(:|$)")


def clean_failure_problems(run: Run, codes=(2,), needles=()) -> list[str]:
    """Why `run` is not a clean failure with one of `codes` (empty: it is one)."""
    if run.timed_out:
        return [f"hung: no exit within {run.timeout:g} s"]
    problems = []
    if run.returncode not in codes:
        problems.append(f"exit code {run.returncode}, expected {' or '.join(map(str, codes))}")
    if "Traceback" in run.stderr:
        last = [l for l in run.stderr.strip().splitlines() if l.strip()][-1:]
        problems.append(f"traceback ({last[0].strip() if last else '?'})")
    stray = [l for l in run.stderr.splitlines() if _EXCEPTION_LINE.match(l) and not l.startswith("error:")]
    if stray and "Traceback" not in run.stderr:
        problems.append(f"a raw exception on stderr: {stray[0].strip()[:160]}")
    errors = run.error_lines()
    if run.returncode == 1 and len(errors) <= 1:
        pass  # "not deployable" may be told on stdout (check --strict, hil)
    elif len(errors) != 1:
        problems.append(f"{len(errors)} error lines on stderr, expected exactly one")
    if errors:
        low = errors[0].lower()
        missing = [n for n in needles if n.lower() not in low]
        if missing:
            problems.append(f"the error line does not name {missing}: {errors[0][:300]}")
    elif needles and run.returncode in codes:
        problems.append(f"no error line naming {list(needles)}")
    return problems


def assert_clean_failure(run: Run, codes=(2,), *needles) -> None:
    problems = clean_failure_problems(run, codes, needles)
    assert not problems, "; ".join(problems) + "\n  " + run.describe()


def assert_ok_or_clean(run: Run, codes=(1, 2)) -> None:
    """Success, or a clean failure: the property every input must satisfy."""
    if run.returncode == 0 and not run.timed_out:
        assert "Traceback" not in run.stderr, run.describe()
        return
    assert_clean_failure(run, codes)


def assert_ok(run: Run) -> None:
    assert run.returncode == 0 and not run.timed_out and "Traceback" not in run.stderr, run.describe()


# --- what a run leaves behind -----------------------------------------------------------------

def snapshot(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every entry under `root` (relative path -> content hash, link target or kind), without
    following links or opening special files. `skip`: relative paths whose subtree is ignored."""
    out: dict[str, str] = {}
    root = Path(root)
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        keep = []
        for name in dirnames:
            rel = str(rel_dir / name)
            if rel in skip or name in ("__pycache__",):
                continue
            p = Path(dirpath) / name
            if p.is_symlink():
                out[rel] = f"link:{os.readlink(p)}"
            else:
                out[rel] = "dir"
                keep.append(name)
        dirnames[:] = keep
        for name in filenames:
            rel = str(rel_dir / name)
            if rel in skip:
                continue
            p = Path(dirpath) / name
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = f"link:{os.readlink(p)}"
            elif stat.S_ISREG(st.st_mode):
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = f"special:{stat.S_IFMT(st.st_mode):o}"
    return out


def changes(before: dict[str, str], after: dict[str, str]) -> dict[str, list[str]]:
    return {"added": sorted(set(after) - set(before)), "removed": sorted(set(before) - set(after)),
            "changed": sorted(k for k in set(before) & set(after) if before[k] != after[k])}


def changed_outside(before, after, allowed: tuple[str, ...]) -> list[str]:
    """Entries added, removed or changed that are not under one of the `allowed` prefixes."""
    diff = changes(before, after)
    bad = []
    for kind, paths in diff.items():
        for p in paths:
            if not any(p == a or p.startswith(a.rstrip("/") + "/") for a in allowed):
                bad.append(f"{kind}: {p}")
    return bad


def litter(root: Path) -> list[str]:
    """Temporary files and folders a tool left under `root` (staging dirs, *.tmp, .old, probes)."""
    found = []
    if not Path(root).exists():
        return found
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            if LITTER.search(name):
                found.append(str((Path(dirpath) / name).relative_to(root)))
    return sorted(found)


def repo_snapshot() -> dict[str, str]:
    """The checkout as tasks could change it (tests/ is left out: it is edited while it runs)."""
    return snapshot(ROOT, skip=(".git", ".hypothesis", ".pytest_cache", ".venv", "tests"))


class Sandbox:
    """A user's project folder (`root`), with its own TMPDIR (`tmp`)."""

    def __init__(self, base: Path):
        self.root = base / "project"
        self.tmp = base / "tmp"
        self.root.mkdir(parents=True)
        self.tmp.mkdir()

    def env(self, extra: dict | None = None) -> dict:
        return {"TMPDIR": str(self.tmp), **(extra or {})}

    def run(self, *args, env: dict | None = None, cwd: Path | None = None, **kw) -> Run:
        return run_invoke(*args, cwd=cwd or self.root, env=self.env(env), **kw)

    def start(self, *args, env: dict | None = None, cwd: Path | None = None, **kw):
        return start_invoke(*args, cwd=cwd or self.root, env=self.env(env), **kw)

    def snap(self, skip=()) -> dict[str, str]:
        return snapshot(self.root, skip)

    def tmp_litter(self) -> list[str]:
        return sorted(str(p.relative_to(self.tmp)) for p in self.tmp.iterdir())


# --- schema-level models (tests/tflite_builder.py) ------------------------------------------------

def relu_model(shape=(1, 8, 8, 1), *, dtype="int8", in_name="input", out_name="output",
               scale=0.05, zero_point=0, pad_bytes: int = 0) -> bytes:
    """input -> RELU -> output: runs in LiteRT and TFLM, maps to the Edge TPU. `pad_bytes`: an
    unused constant tensor of that size (a bigger file, same computation)."""
    from tflite_builder import ModelBuilder

    mb = ModelBuilder()
    x = mb.tensor(in_name, shape, dtype, scale=scale, zero_point=zero_point)
    y = mb.tensor(out_name, shape, dtype, scale=scale, zero_point=zero_point)
    if pad_bytes:
        mb.const("padding", np.zeros(pad_bytes, np.int8), "int8")
    mb.op("RELU", [x], [y])
    return mb.build([x], [y])


def fully_connected_model() -> bytes:
    """input (1, 16) -> FULLY_CONNECTED (8 units, int8 weights, int32 bias) -> output (1, 8)."""
    from tflite_builder import ModelBuilder

    mb = ModelBuilder()
    x = mb.tensor("input", (1, 16), scale=0.05)
    w = mb.const("weights", np.arange(-64, 64).reshape(8, 16) % 7, "int8", scale=0.02)
    b = mb.const("bias", np.arange(8) * 3, "int32")
    y = mb.tensor("output", (1, 8), scale=0.1)
    mb.op("FULLY_CONNECTED", [x, w, b], [y])
    return mb.build([x], [y])


def reshape_model(*, dtype="int8", scale=0.05, zero_point=0, in_name="input", out_name="output") -> bytes:
    """input (1, 2, 2) -> RESHAPE -> output (1, 4): a type-agnostic copy, no requantization, so
    TFLM runs it whatever the quantization parameters say."""
    import numpy as np
    from tflite_builder import ModelBuilder

    mb = ModelBuilder()
    x = mb.tensor(in_name, (1, 2, 2), dtype, scale=scale, zero_point=zero_point)
    s = mb.const("new_shape", np.array([1, 4]), "int32")
    y = mb.tensor(out_name, (1, 4), dtype, scale=scale, zero_point=zero_point)
    mb.op("RESHAPE", [x, s], [y])
    return mb.build([x], [y])


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


# --- compiling what the firmware stage generated ----------------------------------------------------

def tflm_includes(tree: Path) -> list[str]:
    """The include path of templates/firmware/CMakeLists.txt.j2 (TFLM_INCLUDES)."""
    dirs = [tree, tree / "third_party/gemmlowp", tree / "third_party/flatbuffers/include",
            tree / "third_party/kissfft", tree / "third_party/ruy"]
    return [f"-I{d}" for d in dirs] + ["-DTF_LITE_STATIC_MEMORY"]


def syntax_check(project: Path, *, with_tflm: bool = False) -> str | None:
    """g++ -fsyntax-only over the generated sources: None when they compile, else the first
    errors. Without TFLM only the sources that do not include it."""
    if GXX is None:
        pytest.skip("g++ is not installed")
    sources = ["model_data.cc", "test_vectors.cc"]
    flags = []
    if with_tflm:
        tree = tflm_tree()
        if tree is None:
            pytest.skip("no TFLite Micro tree (TFLM_TREE or ../shared/tflm-tree) to compile model_ops.h against")
        sources += ["main.cc"]
        flags = tflm_includes(tree)
    proc = subprocess.run([GXX, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
                           f"-I{project}", *flags, *[str(project / s) for s in sources]],
                          capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode == 0:
        return None
    return "\n".join(proc.stderr.strip().splitlines()[:8])


def cmake_configure(project: Path, build: Path) -> subprocess.CompletedProcess:
    """Configure the generated project (what runs at configure time is what a user runs)."""
    if CMAKE is None:
        pytest.skip("cmake is not installed")
    tree = tflm_tree()
    if tree is None:  # the injected line still runs before the TFLM_TREE check
        tree = build.parent / "no-tflm-tree"
    return subprocess.run([CMAKE, "-S", str(project), "-B", str(build), f"-DTFLM_TREE={tree}"],
                          capture_output=True, text=True, timeout=120, check=False)


# --- stand-ins for tools that cannot exist here ---------------------------------------------------

def script(path: Path, body: str) -> Path:
    """An executable Python script (a compiler stand-in)."""
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return path


VERSION_LINE = "Edge TPU Compiler version 16.0.384591198"


# --- a serial device on a pseudo-terminal ------------------------------------------------------------

class FakeDevice:
    """The device side of a pty pair speaking the HIL protocol (docs/protocol.md), with one
    scripted misbehaviour; `invoke hil --port <port>` talks to it as to a board on a UART.

    on_run(frame) -> bytes | None | "unplug": the reply to a RUN, nothing, or pull the cable."""

    def __init__(self, model: bytes | None, on_run=None, info: dict | None = None, answer: bool = True):
        from pipeline.runtime.device import (
            FrameParser,  # the protocol's own framing: this is the device side
        )

        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        self.port = os.ttyname(self.slave)
        self.info = {"model_sha256": hashlib.sha256(model or b"").hexdigest(), "model_bytes": len(model or b""),
                     "arena_bytes": 0, "board": "fake device", "firmware": "battery", "protocol": 1,
                     **(info or {})}
        self.on_run = on_run
        self.answer = answer
        self.parser = FrameParser()
        self.unplugged = False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import select

        from pipeline.runtime.device import INFO, INFO_OK, RUN, FrameError, encode

        while not self.stop.is_set() and not self.unplugged:
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            try:
                self.parser.feed(os.read(self.master, 65536))
            except OSError:
                continue
            while not self.unplugged:
                try:
                    frame = self.parser.next()
                except FrameError:
                    continue
                if frame is None:
                    break
                if not self.answer:
                    continue
                reply = None
                if frame.kind == INFO:
                    text = "".join(f"{k}={v}\n" for k, v in self.info.items())
                    reply = encode(INFO_OK, frame.seq, text.encode("utf-8", "surrogateescape"))
                elif frame.kind == RUN and self.on_run is not None:
                    reply = self.on_run(frame)
                if reply == "unplug":
                    self.unplugged = True
                    os.close(self.master)
                    return
                if reply:
                    os.write(self.master, reply)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        for fd in ((self.slave,) if self.unplugged else (self.master, self.slave)):
            with contextlib.suppress(OSError):
                os.close(fd)


def run_ok_reply(frame, payload: bytes) -> bytes:
    from pipeline.runtime.device import RUN_OK, encode

    return encode(RUN_OK, frame.seq, struct.pack("<II", 0, 1) + payload)


# --- the file system faults -------------------------------------------------------------------------

def can_mount() -> bool:
    """tmpfs mounts need root (CAP_SYS_ADMIN); inside some containers even root cannot."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    probe = Path(f"/tmp/.battery-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                            capture_output=True, check=False).returncode == 0
        if ok:
            subprocess.run(["umount", str(probe)], capture_output=True, check=False)
        return ok
    finally:
        probe.rmdir()


@dataclass
class SmallDisk:
    """A folder on a file system that is (nearly) full or read-only. On root with mount rights
    it is a real tmpfs (ENOSPC, EROFS); otherwise file-size limits (EFBIG) and mode 0555
    (EACCES) stand in, and `fsize` must be passed to the task run."""

    path: Path
    mounted: bool
    fsize: int | None = None
    mounts: list = field(default_factory=list)

    def fill(self, leave_bytes: int) -> None:
        """Fill the disk up to `leave_bytes` of free space."""
        if not self.mounted:
            return
        filler = self.path / "filler.bin"
        st = os.statvfs(self.path)
        free = st.f_bavail * st.f_frsize
        if free > leave_bytes:
            with filler.open("ab") as f:
                f.write(b"\0" * (free - leave_bytes))

    def make_readonly(self) -> None:
        if self.mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True, capture_output=True)
        else:
            for p in [self.path, *self.path.rglob("*")]:
                if p.is_dir() and not p.is_symlink():
                    p.chmod(0o555)

    def release(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True, check=False)
        else:
            for p in [self.path, *self.path.rglob("*")]:
                with contextlib.suppress(OSError):
                    if p.is_dir() and not p.is_symlink():
                        p.chmod(0o755)


def small_disk(path: Path, size_bytes: int, *, fsize: int | None = None) -> SmallDisk:
    path.mkdir(parents=True, exist_ok=True)
    if can_mount():
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
                       check=True, capture_output=True)
        return SmallDisk(path, True)
    if os.geteuid() == 0:
        pytest.skip("root without mount rights: neither a tmpfs nor mode 0555 can make a folder "
                    "full or read-only here")
    return SmallDisk(path, False, fsize=fsize or size_bytes)


def json_text(obj) -> str:
    return json.dumps(obj, indent=2) + "\n"


# --- hand-made files: lying headers, bombs, repeated tables ----------------------------------------

def npy_with_header(path: Path, shape, descr: str = "<f4", payload: int = 1024) -> Path:
    """An .npy whose header declares `shape` but which holds only `payload` bytes of data."""
    from numpy.lib import format as npformat

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        npformat.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": tuple(shape)})
        f.write(b"\0" * payload)
    return path


def npz_with_header(path: Path, shape, member: str = "x.npy") -> Path:
    import zipfile

    from numpy.lib import format as npformat

    with zipfile.ZipFile(path, "w") as archive, archive.open(member, "w") as f:
        npformat.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": tuple(shape)})
        f.write(b"\0" * 1024)
    return path


def npz_bomb(path: Path, decompressed_bytes: int, sample_shape=(8, 8, 1)) -> Path:
    """An honest .npz of zeros that deflates ~230:1: a few MB on disk, `decompressed_bytes` in memory."""
    import zipfile

    from numpy.lib import format as npformat

    per_sample = 4 * int(np.prod(sample_shape))
    n = decompressed_bytes // per_sample
    chunk = b"\0" * (16 << 20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive, \
            archive.open("x.npy", "w", force_zip64=True) as f:
        npformat.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (n, *sample_shape)})
        left = n * per_sample
        while left:
            f.write(chunk[:min(left, len(chunk))])
            left -= min(left, len(chunk))
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR declares width x height grey pixels, with a token IDAT: Pillow decides
    on decompression bombs from the header alone."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def repeated_table_model(repeat: int, width: int, *, what: str = "tensors") -> bytes:
    """A small flatbuffer whose subgraph vector (`tensors` or `operators`) holds the offset of ONE
    table `repeat` times, that table carrying a `width`-long vector: legal offsets, a few hundred
    KB on disk, repeat x width entries for a reader that walks every element."""
    import flatbuffers
    import tflite

    b = flatbuffers.Builder(1 << 20)
    tflite.BufferStart(b)
    buffer0 = tflite.BufferEnd(b)
    def ivec(start, values):
        start(b, len(values))
        for v in reversed(values):
            b.PrependInt32(v)
        return b.EndVector()

    def int8_tensor(dims):
        shape = ivec(tflite.TensorStartShapeVector, dims)
        name = b.CreateString("t")
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, shape)
        tflite.TensorAddType(b, tflite.TensorType.INT8)
        tflite.TensorAddName(b, name)
        return tflite.TensorEnd(b)

    if what == "tensors":
        tensors = [int8_tensor([1] * width)] * repeat
        op_inputs = [0]
    else:
        tensors = [int8_tensor([1, 4])]
        op_inputs = [0] * width

    ins = ivec(tflite.OperatorStartInputsVector, op_inputs)
    outs = ivec(tflite.OperatorStartOutputsVector, [0])
    tflite.OperatorStart(b)
    tflite.OperatorAddOpcodeIndex(b, 0)
    tflite.OperatorAddInputs(b, ins)
    tflite.OperatorAddOutputs(b, outs)
    operator = tflite.OperatorEnd(b)
    operators = [operator] * (repeat if what == "operators" else 1)

    def tvec(start, offsets):
        start(b, len(offsets))
        for o in reversed(offsets):
            b.PrependUOffsetTRelative(o)
        return b.EndVector()

    tensors_vec = tvec(tflite.SubGraphStartTensorsVector, tensors)
    ops_vec = tvec(tflite.SubGraphStartOperatorsVector, operators)
    sg_in = ivec(tflite.SubGraphStartInputsVector, [0])
    sg_out = ivec(tflite.SubGraphStartOutputsVector, [0])
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tensors_vec)
    tflite.SubGraphAddOperators(b, ops_vec)
    tflite.SubGraphAddInputs(b, sg_in)
    tflite.SubGraphAddOutputs(b, sg_out)
    subgraph = tflite.SubGraphEnd(b)
    tflite.OperatorCodeStart(b)
    tflite.OperatorCodeAddBuiltinCode(b, tflite.BuiltinOperator.RELU)
    tflite.OperatorCodeAddDeprecatedBuiltinCode(b, tflite.BuiltinOperator.RELU)
    tflite.OperatorCodeAddVersion(b, 1)
    code = tflite.OperatorCodeEnd(b)
    subgraphs = tvec(tflite.ModelStartSubgraphsVector, [subgraph])
    codes = tvec(tflite.ModelStartOperatorCodesVector, [code])
    buffers = tvec(tflite.ModelStartBuffersVector, [buffer0])
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddOperatorCodes(b, codes)
    tflite.ModelAddSubgraphs(b, subgraphs)
    tflite.ModelAddBuffers(b, buffers)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())
