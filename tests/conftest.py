"""Shared fixtures: one output root per test session, so the demo model trains once."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_TESTDATA = ROOT.parent / "shared" / "testdata"
CORAL_MODELS = SHARED_TESTDATA / "edgetpu-models"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # as pipeline.runtime.tf sets it


def coral_model(name: str) -> Path:
    path = CORAL_MODELS / name
    if not path.is_file():
        pytest.skip(f"{path} is absent: ../shared/testdata is not beside this checkout (CI has it)")
    return path


@pytest.fixture(scope="session")
def out_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("build")


@pytest.fixture(scope="session")
def run_quantize(out_root):
    """Call the quantize stage as tasks.py does, into the session's output root."""
    from pipeline.stages.quantize import QuantizeRequest, quantize

    def run(**kwargs):
        kwargs.setdefault("out", out_root)
        return quantize(QuantizeRequest(**kwargs))

    return run


@pytest.fixture(scope="session")
def demo_int8(run_quantize):
    return run_quantize(name="demo")


def invoke_cmd() -> list[str]:
    return [sys.executable, "-m", "invoke"]
