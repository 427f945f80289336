"""Shared fixtures: one output root per test session, so the demo model trains once."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_TESTDATA = ROOT.parent / "shared" / "testdata"
CORAL_MODELS = SHARED_TESTDATA / "edgetpu-models"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # as pipeline.runtime.tf sets it


def pytest_configure(config):
    """One converter server for the run (the master's, inherited by the xdist workers and every
    `invoke` they start): each quantize forks a converter from it instead of importing
    TensorFlow again, about 7 s of CPU each. Unless the caller chose a server already."""
    from pipeline.runtime import converter_server

    if hasattr(config, "workerinput") or os.environ.get(converter_server.ENV_VAR):
        return
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="edge-deploy-converter-"))
    os.environ[converter_server.ENV_VAR] = str(folder / "server.sock")
    os.environ.setdefault(converter_server.IDLE_VAR, "300")
    config.stash[_CONVERTER_FOLDER] = folder


def pytest_unconfigure(config):
    import shutil

    from pipeline.runtime import converter_server

    folder = config.stash.get(_CONVERTER_FOLDER, None)
    if folder is not None:
        converter_server.stop(str(folder / "server.sock"))
        shutil.rmtree(folder, ignore_errors=True)


_CONVERTER_FOLDER = pytest.StashKey[Path]()

# Test files that take minutes (CPU seconds on 2 cores, measured), longest first: the two
# workers take whole files in this order (a module's fixtures are made once), and the short ones
# fill in at the end, so neither worker is left with a long file at the end.
LONGEST_FIRST = ("test_zoo.py", "test_firmware_build.py", "test_reliability.py", "test_readme.py",
                 "test_quantize.py", "test_diagnose.py", "test_firmware.py", "test_tasks.py", "test_deploy.py",
                 "test_hil_tensors.py", "test_compile.py", "test_converter_server.py", "test_hil.py")
# Tests whose parameters are each a unit of their own for the workers: every preset's firmware
# build compiles a TFLM library for its flags (a minute of CPU), so the presets spread over both.
SPREAD_PARAMETERS = ("tests/test_firmware_build.py::test_invoke_firmware_build_with_relative_paths_for_every_preset",)


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        name = Path(item.nodeid.split("::")[0]).name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order inside a file stays


@pytest.hookimpl(optionalhook=True)  # an xdist hook: `-p no:xdist` runs without it
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` in the collection order above, with SPREAD_PARAMETERS apart. (xdist's
    `loadgroup` cannot do it with pytest 9: it renames `item._nodeid`, which pytest 9 no longer
    reads, so every test became a unit of its own.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FilesLongestFirst(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            test = nodeid.split("[")[0]
            return nodeid if test in SPREAD_PARAMETERS else nodeid.split("::")[0]

    config.option.loadscopereorder = False
    return FilesLongestFirst(config, log)


def coral_model(name: str) -> Path:
    path = CORAL_MODELS / name
    if not path.is_file():
        pytest.skip(f"{path} is absent: ../shared/testdata is not beside this checkout (CI has it)")
    return path


@pytest.fixture(scope="session", autouse=True)
def shared_user_cache(tmp_path_factory) -> Path:
    """One per-user cache (EDGE_DEPLOY_CACHE: the trained demo model, TFLM libraries) for the
    whole run, shared by parallel workers (pytest -n; the tool locks its entries) and inherited
    by every `invoke` subprocess: the demo trains once and each (toolchain, flags) compiles TFLM
    once. Never the user's own ~/.cache."""
    base = tmp_path_factory.getbasetemp()
    common = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = common / "user-cache"
    path.mkdir(exist_ok=True)
    os.environ["EDGE_DEPLOY_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def out_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("build")


@pytest.fixture(scope="session")
def run_quantize(out_root):
    """Call the quantize stage as tasks.py does (the registry entry, then the report), into the
    session's output root."""
    from pipeline.deploy import DeployRequest, job_for_request, run_stage

    def run(**kwargs):
        kwargs.setdefault("out", out_root)
        return run_stage("quantize", job_for_request(DeployRequest(**kwargs)))

    return run


def as_task(stage: str, model, **options):
    """Run one stage on an existing .tflite as its task does: the registry entry, with the
    quantize section of the model's report borrowed, and the stage's section recorded."""
    from pipeline.deploy import DeployRequest, job_for_model, run_stage

    return run_stage(stage, job_for_model(model, DeployRequest(**options), borrow=("quantize",)))


@pytest.fixture(scope="session")
def demo_int8(run_quantize):
    return run_quantize(name="demo")


# A TFLite Micro tree made by create_tflm_tree.py: $TFLM_TREE, else the one beside the checkout
# (CI has ../shared/tflm-tree; see its SOURCE.md).
SHARED_TFLM_TREE = ROOT.parent / "shared" / "tflm-tree"
SHARED_TFLM_TREE_CMSIS_NN = ROOT.parent / "shared" / "tflm-tree-cmsis-nn"
FIRMWARE_TOOLS = ("cmake", "g++", "arm-none-eabi-gcc", "arm-none-eabi-g++", "qemu-system-arm")


@pytest.fixture(scope="session")
def tflm_tree(tmp_path_factory):
    """The tree the firmware tests build against, with the tools they need (the TFLM library
    cache is `shared_user_cache`)."""
    import shutil

    from pipeline.stages.firmware_build import resolve_tree

    explicit = os.environ.get("TFLM_TREE")
    path = Path(explicit) if explicit else SHARED_TFLM_TREE
    if not path.is_dir():
        pytest.skip(f"no TFLite Micro tree: TFLM_TREE is unset and {path} is absent (CI has it; "
                    "make one with create_tflm_tree.py)")
    missing = [t for t in FIRMWARE_TOOLS if not shutil.which(t)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (.ci/firmware-deps installs them)")
    return resolve_tree(path)


def invoke_cmd() -> list[str]:
    return [sys.executable, "-m", "invoke"]


@contextmanager
def running_emulator(model, *args: str):
    """`invoke emulate --model MODEL ARGS...` in the background, as a rig starts it: yields the
    port it prints first; SIGTERM must end it cleanly."""
    import signal
    import subprocess

    proc = subprocess.Popen(invoke_cmd() + ["emulate", "--model", str(model), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        port = proc.stdout.readline().strip()
        assert port.startswith("/dev/"), proc.stderr.read() if proc.poll() is not None else port
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, "SIGTERM ends the emulator cleanly"
