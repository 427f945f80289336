"""pipeline/stages/firmware_build.py against a real TFLite Micro tree (../shared/tflm-tree or
$TFLM_TREE; CI has it): the demo's firmware builds and self-tests on the host and under QEMU for
every preset, HIL runs over a pty and over QEMU's UART, the library cache compiles only what is
new, and a CMSIS-NN tree builds with the same project."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, SHARED_TFLM_TREE_CMSIS_NN, invoke_cmd
from pipeline.boards import boards
from pipeline.errors import PipelineError
from pipeline.rules.tflm import round_arena
from pipeline.stages.firmware import build_and_run, build_and_verify, generate_firmware, tflm_tree_path
from pipeline.stages.firmware_build import run_selftest

# --- against a real TFLite Micro tree (../shared/tflm-tree or $TFLM_TREE; CI has it) ---------

QEMU_PRESETS = [k for k, b in boards().items() if b.qemu_machine]
LINK_ONLY_PRESETS = [k for k, b in boards().items() if not b.qemu_machine]
_QEMU_FLAGS = {boards()[k].arm_flags() for k in QEMU_PRESETS}


def _preset_param(key: str):
    """A link-only preset whose flags no QEMU preset shares compiles a TFLM library of its own
    (a minute of CPU): marked `firmware_all`, which runs (CI included) unless `-m "not firmware_all"`."""
    b = boards()[key]
    own_library = not b.qemu_machine and b.cpu != "xtensa-lx7" and b.arm_flags() not in _QEMU_FLAGS
    return pytest.param(key, marks=pytest.mark.firmware_all) if own_library else key


@pytest.fixture(scope="module")
def demo_model(demo_int8, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fwbuild") / "demo"
    d.mkdir()
    for f in ("model_int8.tflite", "report.json"):
        (d / f).write_bytes((demo_int8.output_dir / f).read_bytes())
    return d / "model_int8.tflite"


@pytest.fixture(scope="module")
def built(demo_model, tflm_tree):
    """The default `--build`: host, then the Cortex-M4 build under QEMU (mps2-an386)."""
    from pipeline.deploy import DeployRequest, job_for_model, record, run_stage
    from pipeline.stages.firmware import firmware_options

    # as `invoke firmware --build` runs it: the stage, the builds, then the stage's record
    job = job_for_model(demo_model, DeployRequest(firmware_build=True), borrow=("quantize",))
    result = build_and_verify(demo_model, run_stage("firmware", job), tflm_tree, **firmware_options(job))
    record(job, "firmware", result)
    return result


def test_host_and_cortex_m4_pass_and_each_measures_its_own_arena(built, demo_model):
    host, cross = built.builds["host"], built.builds["cross:qemu-mps2-an386"]
    assert host["passed"] and host["selftest"] == "SELFTEST PASS 4/4" and host["max_difference"] == 0
    assert cross["passed"] and cross["selftest"] == "SELFTEST PASS 4/4" and cross["max_difference"] == 0, cross
    a = built.arena
    assert a.host_measured == host["smallest_arena_bytes"] and a.board_measured == cross["smallest_arena_bytes"]
    assert a.board_measured < a.host_measured, "32-bit pointers: the board needs less than the 64-bit host"
    assert "under QEMU" in a.board_source and "host build" in a.host_source
    arena_h = (built.output_dir / "model_arena.h").read_text()
    assert f"kTensorArenaSize = {a.host_bytes};" in arena_h and f"kTensorArenaSize = {a.board_bytes};" in arena_h
    assert built.arena_bytes == a.board_bytes == round_arena(a.board_measured) + 16
    # both images were rebuilt with the measured arenas: only arena.cc changed, only it compiled
    assert host["compiled_files"] == cross["compiled_files"] == 1, (host["compiled_files"], cross["compiled_files"])
    # the smallest is the smallest: one byte less fails, on either target
    host_dir, cross_dir = Path(host["build_dir"]), Path(cross["build_dir"])
    board = boards()["qemu-mps2-an386"]
    assert run_selftest(host_dir, None, ("--arena", str(a.host_measured)))["passed"]
    assert not run_selftest(host_dir, None, ("--arena", str(a.host_measured - 1)))["passed"]
    assert run_selftest(cross_dir, board, ("--arena", str(a.board_measured)))["passed"]
    assert not run_selftest(cross_dir, board, ("--arena", str(a.board_measured - 1)))["passed"]


def test_only_the_models_kernels_and_the_core_are_compiled(built, tflm_tree):
    host = built.builds["host"]
    listed = (Path(host["build_dir"]) / "tflm_sources.txt").read_text().split()
    names = {Path(p).name for p in listed}
    assert {"conv.cc", "pooling.cc", "reshape.cc", "fully_connected.cc", "softmax.cc", "micro_interpreter.cc"} <= names
    assert not names & {"add.cc", "depthwise_conv.cc", "lstm_eval.cc", "svdf.cc", "test_helpers.cc"}
    every = [p for p in tflm_tree.path.rglob("*.cc")]
    assert len(listed) < len(every) / 3
    lib = host["library"]
    assert Path(lib["path"]).is_file() and lib["sources"] >= len(listed)


def test_main_reuses_the_librarys_precompiled_header_and_helpers_compile_without_it(built, tflm_tree, tmp_path):
    """main.cc (the interpreter's headers) reuses the cached library's .gch; the library's files
    that never reach the flatbuffer schema skip the 250 MB header (2.5 s each to load)."""
    import subprocess

    host = built.builds["host"]
    lib_dir = Path(host["library"]["path"]).parent
    pch = lib_dir / "CMakeFiles" / "tflm.dir" / "cmake_pch.hxx"
    assert (pch.parent / "cmake_pch.hxx.gch").is_file()
    cache_txt = (Path(host["build_dir"]) / "CMakeCache.txt").read_text()
    assert f"TFLM_LIB_PCH:FILEPATH={pch}" in cache_txt
    if not (lib_dir / "build.ninja").is_file():
        pytest.skip("the library cache was built with Makefiles here: ninja-build is not installed (CI has it)")
    commands = subprocess.run(["ninja", "-C", str(lib_dir), "-t", "commands"], capture_output=True,
                              text=True).stdout.splitlines()
    def compile_of(pattern):
        return next(c for c in commands if re.search(pattern, c))
    assert "cmake_pch.hxx" in compile_of(r"/tflm_pairs/conv_\w+\.cc\.o ")  # conv.cc + conv_common.cc
    assert "cmake_pch.hxx" not in compile_of(r"/runtime_shape\.cc\.o ")  # kernels/internal: no schema
    # a header GCC cannot use (another optimization level) is read as text: still builds
    project = built.output_dir
    debug = tmp_path / "debug"
    configure = subprocess.run(["cmake", "-S", str(project), "-B", str(debug), f"-DTFLM_TREE={tflm_tree.path}",
                                "-DCMAKE_BUILD_TYPE=Debug", f"-DTFLM_LIB={host['library']['path']}",
                                f"-DTFLM_LIB_PCH={pch}"], capture_output=True, text=True)
    assert configure.returncode == 0, configure.stderr
    make = subprocess.run(["cmake", "--build", str(debug), "-j2", "--target", "selftest"], capture_output=True,
                          text=True)
    assert make.returncode == 0, make.stdout[-2000:] + make.stderr[-2000:]
    assert "SELFTEST PASS 4/4" in subprocess.run([str(debug / "selftest")], capture_output=True, text=True).stdout


def test_device_time_is_instructions_under_qemu_and_never_zero(built):
    host, cross = built.builds["host"], built.builds["cross:qemu-mps2-an386"]
    assert host["timing"]["unit"] == "us" and all(t > 0 for t in host["timing"]["per_vector"])
    t = cross["timing"]
    assert t["unit"] == "instructions" and "icount" in t["method"]
    # the same vectors, the same instructions: QEMU's -icount clock is deterministic
    assert all(100_000 < n < 100_000_000 for n in t["per_vector"]), t
    assert max(t["per_vector"]) - min(t["per_vector"]) <= 0.05 * max(t["per_vector"])


def test_the_fit_comes_from_the_linked_image(built, demo_model):
    fit, cross = built.board, built.builds["cross:qemu-mps2-an386"]
    elf = Path(cross["build_dir"]) / "selftest.elf"
    out = subprocess.run(["arm-none-eabi-size", str(elf)], capture_output=True, text=True, check=True).stdout
    text, data, bss = (int(x) for x in out.splitlines()[1].split()[:3])
    assert fit["measured_with"] == f"arm-none-eabi-size {elf}"
    assert fit["flash"]["needed_bytes"] == text + data and fit["ram"]["needed_bytes"] == data + bss
    assert bss > built.arena_bytes + 8192, "bss holds the arena and the reserved stack"
    code = fit["flash"]["code_bytes"]
    assert 40_000 < code < 200_000, f"TFLM core + 5 reference kernels at -Os: {code} B"
    report = json.loads((demo_model.parent / "report.json").read_text())["firmware"]
    assert report["board"] == fit and report["arena"]["board_bytes"] == built.arena_bytes


def test_build_and_run_with_relative_paths(built, tflm_tree, tmp_path, monkeypatch):
    monkeypatch.chdir(built.output_dir.parent)
    rel_tree = os.path.relpath(tflm_tree.path)
    host = build_and_run(Path(built.output_dir.name), rel_tree, Path("fw-rel-host"))
    assert host["kind"] == "host" and host["passed"] and host["library"]["cached"]
    cross = build_and_run(Path(built.output_dir.name), rel_tree, Path("fw-rel-arm"), cross=boards()["qemu-mps2-an386"])
    assert cross["passed"] and cross["selftest"] == "SELFTEST PASS 4/4" and cross["size"]["text"] > 0
    nano = build_and_run(Path(built.output_dir.name), rel_tree, Path("fw-rel-nano"),
                         cross=boards()["arduino-nano-33-ble-sense"])
    assert nano["built"] and nano["ran"] is False and "no QEMU machine" in nano["reason"]


def test_hil_over_a_pty_and_over_qemus_uart(built, demo_model, tflm_tree):
    from pipeline.runtime.device import serve_on_pty, start_qemu_uart
    from pipeline.stages.hil import run_hil

    proc, port, slave = serve_on_pty([str(Path(built.builds["host"]["build_dir"]) / "selftest"), "--serve"])
    try:
        hil = run_hil(demo_model, port)
    finally:
        proc.terminate()
        proc.wait()
        os.close(slave)
    assert hil.passed and hil.device["board"] == "host" and hil.device["timer"] == "microseconds"
    assert all(v["device_us"] and v["device_cycles"] is None for v in hil.vectors)
    # the Cortex-M build with the HIL server, over QEMU's emulated UART
    board = boards()["qemu-mps2-an386"]
    hil_dir = demo_model.parent / "fw-hil"
    with_server = build_and_run(built.output_dir, tflm_tree, hil_dir, cross=board, hil_server=True)
    # its self-test ran to the end: the firmware then serves (it never exits), so the run stops there
    assert with_server["built"] and with_server["passed"] and with_server["selftest"] == "SELFTEST PASS 4/4", \
        with_server.get("output")
    qemu, port = start_qemu_uart(hil_dir / "selftest.elf", board.qemu_machine)
    try:
        hil = run_hil(demo_model, port, timeout=20)
    finally:
        qemu.kill()
        qemu.wait()
    assert hil.passed and hil.device["board"] == board.name and hil.device["timer"] == "cycles"
    assert all(v["device_cycles"] and v["device_cycles"] > 1000 for v in hil.vectors)
    # the server's buffers are sized from the model and linked only with the server
    plain = built.builds["cross:qemu-mps2-an386"]["size"]
    extra = with_server["size"]["bss"] - plain["bss"]
    assert 0 < extra < 8 * 1024, f"HIL buffers for 64 input / 10 output bytes: {extra} B, not 2 MiB"


def test_a_plain_invoke_firmware_keeps_the_measured_arena(built, demo_model):
    before = (built.output_dir / "model_arena.h").read_bytes()
    proc = subprocess.run(invoke_cmd() + ["-r", str(ROOT), "firmware", "--model", str(demo_model)],
                          cwd=demo_model.parent, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (built.output_dir / "model_arena.h").read_bytes() == before
    assert f"{built.arena_bytes} B" in proc.stdout and "under QEMU" in proc.stdout
    # rendered for another board in between, the project forgets nothing it measured
    other = subprocess.run(invoke_cmd() + ["-r", str(ROOT), "firmware", "--model", str(demo_model), "--board",
                                           "qemu-mps2-an385"], cwd=demo_model.parent, capture_output=True, text=True)
    assert other.returncode == 0, other.stderr
    assert "TFLM Python interpreter" in other.stdout  # an385 was never measured here
    back = subprocess.run(invoke_cmd() + ["-r", str(ROOT), "firmware", "--model", str(demo_model)],
                          cwd=demo_model.parent, capture_output=True, text=True)
    assert back.returncode == 0, back.stderr
    assert (built.output_dir / "model_arena.h").read_bytes() == before
    doc = json.loads((built.output_dir / "measurements.json").read_text())
    assert doc["board"] == "qemu-mps2-an386" and "qemu-mps2-an386" in doc["boards"]


@pytest.mark.parametrize("preset", [_preset_param(k) for k in QEMU_PRESETS + LINK_ONLY_PRESETS])
def test_invoke_firmware_build_with_relative_paths_for_every_preset(preset, demo_model, tflm_tree):
    """From another directory, with relative --model/--out/--tflm-tree: QEMU presets run their
    self-test; the other Cortex-M presets cross-build and link, their fit from the image."""
    work = demo_model.parent.parent / "rel"  # one folder for all presets: the host build is reused
    (work / "m").mkdir(parents=True, exist_ok=True)
    shutil.copy(demo_model, work / "m" / "model_int8.tflite")
    board = boards()[preset]
    cmd = invoke_cmd() + ["-r", str(ROOT), "firmware", "--model", "m/model_int8.tflite", "--out", "m/fw",
                          "--board", preset, "--build", "--tflm-tree", os.path.relpath(tflm_tree.path, work)]
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "host" in proc.stdout and "SELFTEST PASS 4/4" in proc.stdout
    line = next(ln for ln in proc.stdout.splitlines() if f"cross:{preset}" in ln)
    if not board.is_cortex_m:
        assert "not built" in line and board.toolchain in line
        return
    assert "text " in line and "bss " in line, line
    if board.qemu_machine:
        assert "SELFTEST PASS 4/4" in line and "instructions/inference" in line, line
    else:
        assert "built, not run" in line and "no QEMU machine" in line, line
    assert "[linked image]" in proc.stdout
    report = json.loads((work / "m" / "report.json").read_text()) if (work / "m" / "report.json").exists() else None
    assert report is None  # m/ is not a pipeline output folder: nothing else was written there


def test_cross_build_failure_keeps_the_host_result(built, demo_model, tflm_tree, tmp_path):
    """A board whose RAM cannot hold the image: the link fails (exit 1: not deployable, by the
    linker's numbers), and the host result is printed all the same."""
    small = tmp_path / "tiny-board.toml"
    small.write_text('name = "Tiny"\nmcu = "demo part"\ncpu = "cortex-m4"\nfpu = "fpv4-sp-d16"\nclock_mhz = 48\n'
                     'flash_origin = 0x08000000\nflash_bytes = 1048576\nram_origin = 0x20000000\nram_bytes = 20480\n'
                     'source = "a test"\n')
    proc = subprocess.run(invoke_cmd() + ["-r", str(ROOT), "firmware", "--model", str(demo_model), "--out",
                                          str(tmp_path / "fw"), "--board-file", str(small), "--build",
                                          "--tflm-tree", str(tflm_tree.path)],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "SELFTEST PASS 4/4" in proc.stdout and "BUILD FAILED" in proc.stdout and "does not fit" in proc.stderr
    assert "overflowed" in proc.stdout and "Traceback" not in proc.stderr


def test_a_tflite_micro_checkout_is_refused_with_what_it_is(tmp_path, demo_model):
    checkout = tmp_path / "tflite-micro"
    (checkout / "tensorflow" / "lite" / "micro" / "tools" / "make").mkdir(parents=True)
    (checkout / "tensorflow" / "lite" / "micro" / "micro_interpreter.h").write_text("")
    (checkout / "tensorflow" / "lite" / "micro" / "tools" / "make" / "Makefile").write_text("")
    (checkout / "third_party" / "flatbuffers").mkdir(parents=True)
    with pytest.raises(PipelineError, match="a tflite-micro git checkout, not a tree") as info:
        tflm_tree_path(str(checkout))
    assert "create_tflm_tree.py" in info.value.fix
    proc = subprocess.run(invoke_cmd() + ["firmware", "--model", str(demo_model), "--out", str(tmp_path / "fw"),
                                          "--build", "--tflm-tree", str(checkout)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "tflite-micro git checkout" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "fw").exists(), "refused before anything was written"


def test_cmsis_nn_tree_builds_and_reports_bit_exactness(demo_model, tflm_tree, tmp_path):
    if not SHARED_TFLM_TREE_CMSIS_NN.is_dir():
        pytest.skip(f"{SHARED_TFLM_TREE_CMSIS_NN} is absent (CI has it)")
    nn = tflm_tree_path(str(SHARED_TFLM_TREE_CMSIS_NN))
    assert nn.cmsis_nn and not tflm_tree.cmsis_nn
    project = generate_firmware(demo_model, out=tmp_path / "firmware").output_dir
    board = boards()["qemu-mps2-an386"]
    cross = build_and_run(project, nn, tmp_path / "fw-nn", cross=board)
    assert cross["kernels"] == "cmsis-nn" and cross["passed"], cross.get("output")
    listed = (tmp_path / "fw-nn" / "tflm_sources.txt").read_text()
    assert "kernels/cmsis_nn/conv.cc" in listed and "arm_convolve_s8.c" in listed
    # bit-exact with the reference goldens (tolerance 0 in test_vectors.h) and measurably faster
    assert cross["max_difference"] == 0
    reference = build_and_run(project, tflm_tree, tmp_path / "fw-ref", cross=board)
    assert sum(cross["timing"]["per_vector"]) < sum(reference["timing"]["per_vector"]) / 2


@pytest.mark.skipif(shutil.which("ninja") is None, reason="ninja-build is not installed (CI installs it)")
def test_a_library_that_gains_sources_compiles_only_those(tflm_tree, tmp_path):
    """With Ninja, a second model's new kernels compile alone; the library's others, its unity
    unit and its precompiled header are not compiled again."""
    from pipeline.stages.firmware_build import library

    micro = tflm_tree.path / "tensorflow" / "lite" / "micro"
    first = [str(micro / "micro_log.cc"), str(micro / "kernels" / "kernel_util.cc")]
    more = [str(micro / "kernels" / "mul.cc"), str(micro / "kernels" / "mul_common.cc")]
    built_once = library(tflm_tree, None, first, project=tmp_path, root=tmp_path / "cache")
    assert not built_once["cached"] and built_once["compiled_files"] >= 2 and Path(built_once["path"]).is_file()
    grown = library(tflm_tree, None, first + more, project=tmp_path, root=tmp_path / "cache")
    # mul.cc and mul_common.cc are one unit: one compile
    assert grown["sources"] == 4 and grown["compiled_now"] == 2 and grown["compiled_files"] == 1, grown
    again = library(tflm_tree, None, more, project=tmp_path, root=tmp_path / "cache")
    assert again["cached"] and again["compiled_now"] == 0
    # reshape.h has no include guard: reshape.cc and reshape_common.cc stay apart
    unguarded = [str(micro / "kernels" / "reshape.cc"), str(micro / "kernels" / "reshape_common.cc")]
    grown = library(tflm_tree, None, first + more + unguarded, project=tmp_path, root=tmp_path / "cache")
    assert grown["compiled_now"] == 2 and grown["compiled_files"] == 2, grown


def _tree_with_kernels(tree: Path, where: Path, kernels: dict[str, str]) -> Path:
    """A tree like `tree` (symbolic links to its files) with `kernels` added to micro/kernels."""
    root = where / "tree"
    chain = Path("tensorflow", "lite", "micro", "kernels")
    for depth in range(len(chain.parts) + 1):
        here = Path(*chain.parts[:depth])
        (root / here).mkdir(parents=True, exist_ok=True)
        for entry in (tree / here).iterdir():
            inner = here / entry.name
            if depth < len(chain.parts) and entry.name == chain.parts[depth]:
                continue
            (root / inner).symlink_to(entry)
    for name, text in kernels.items():
        (root / chain / name).write_text(text)
    return root


def test_a_kernel_pair_that_clashes_as_one_unit_is_built_apart_and_remembered(tflm_tree, tmp_path):
    """Another TFLM version's kernel and _common.cc may define the same name in an anonymous
    namespace: the cache builds the library again with the pairs apart, and keeps it so."""
    from pipeline.stages.firmware_build import library, resolve_tree

    clash = "namespace {{\nconstexpr int kClash = 1;\n}}\nint {}() {{ return kClash; }}\n"
    tree = resolve_tree(_tree_with_kernels(tflm_tree.path, tmp_path, {
        "clash.cc": clash.format("ClashKernel"), "clash_common.cc": clash.format("ClashCommon")}))
    kernels = tree.path / "tensorflow" / "lite" / "micro" / "kernels"
    sources = [str(kernels / "clash.cc"), str(kernels / "clash_common.cc")]
    built = library(tree, None, sources, project=tmp_path, root=tmp_path / "cache")
    assert not built["cached"] and built["compiled_files"] == 2 and Path(built["path"]).is_file(), built
    marker = Path(built["path"]).parent.parent / "kernels-unpaired"
    assert marker.is_file()
    grown = library(tree, None, sources + [str(kernels / "mul.cc"), str(kernels / "mul_common.cc")],
                    project=tmp_path, root=tmp_path / "cache")
    objects = {o.name for o in Path(grown["path"]).parent.rglob("*.o")}
    assert {"mul.cc.o", "mul_common.cc.o"} <= objects, objects  # apart too, now
    assert not any(o.startswith("mul_") and o != "mul_common.cc.o" for o in objects), objects
