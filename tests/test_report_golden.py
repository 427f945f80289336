"""`report.json` and `report.md` of `invoke deploy` on the demo, pinned byte for byte.

The golden files are what the pipeline wrote before the stage registry replaced per-stage
report writing; any change to the report shows here as a diff. Three things are not a function
of the inputs and are normalised on both sides: the output folder's location, the host
latencies verify measures, and the versions of the installed tools. When this machine trains a
demo model with other bytes (another CPU, another TensorFlow), the numbers cannot match; the
structure still must, and the test says which comparison it made.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import ROOT
from pipeline.versions import package_version

GOLDEN = ROOT / "tests" / "golden"
_VERSIONED = ("tensorflow-cpu", "keras", "ai-edge-litert", "tflite-micro")


def _versions() -> dict[str, str]:
    found = {}
    for name in _VERSIONED:
        text = package_version(name)
        if text != "not installed":
            found[text.split(" ", 1)[1]] = f"<{name} version>"
    return found


def normalise_json(report: dict, out: Path) -> str:
    for backend in report.get("verify", {}).get("backends", []):
        backend["median_latency_ms"] = None
    text = json.dumps(report, indent=2, sort_keys=True).replace(str(out), "<out>")
    for version, placeholder in _versions().items():
        text = text.replace(version, placeholder)
    return text + "\n"


def normalise_md(text: str, out: Path) -> str:
    text = re.sub(r"\| \d+\.\d{3} ms \|", "| <latency> |", text.replace(str(out), "<out>"))
    for version, placeholder in _versions().items():
        text = text.replace(version, placeholder)
    return text


def _numbers_masked(text: str) -> str:
    return re.sub(r"\d+(\.\d+)?", "N", text)


@pytest.fixture(scope="module")
def demo_deploy(demo_int8, tmp_path_factory):
    from pipeline.deploy import DeployRequest, deploy

    out = tmp_path_factory.mktemp("golden")
    shutil.copytree(demo_int8.output_dir.parent / ".cache", out / ".cache")
    deploy(DeployRequest(out=out))
    return out


def test_deploy_report_is_byte_identical_to_the_golden_files(demo_deploy):
    out = demo_deploy
    d = out / "demo"
    got_json = normalise_json(json.loads((d / "report.json").read_text()), out)
    got_md = normalise_md((d / "report.md").read_text(), out)
    want_json = (GOLDEN / "demo_report.json").read_text()
    want_md = (GOLDEN / "demo_report.md").read_text()
    same_model = hashlib.sha256((d / "model_int8.tflite").read_bytes()).hexdigest() == \
        (GOLDEN / "demo_model_int8.sha256").read_text().strip()
    if not same_model:  # another CPU or TensorFlow trained other weights: compare the structure
        got_json, want_json = _numbers_masked(got_json), _numbers_masked(want_json)
        got_md, want_md = _numbers_masked(got_md), _numbers_masked(want_md)
    assert got_json == want_json, "report.json differs from tests/golden/demo_report.json"
    assert got_md == want_md, "report.md differs from tests/golden/demo_report.md"


def write_golden(out: Path) -> None:
    """Regenerate the golden files from a deploy in `out` (run on purpose, review the diff)."""
    d = out / "demo"
    (GOLDEN / "demo_report.json").write_text(normalise_json(json.loads((d / "report.json").read_text()), out))
    (GOLDEN / "demo_report.md").write_text(normalise_md((d / "report.md").read_text(), out))
    (GOLDEN / "demo_model_int8.sha256").write_text(
        hashlib.sha256((d / "model_int8.tflite").read_bytes()).hexdigest() + "\n")


if __name__ == "__main__":
    import sys

    write_golden(Path(sys.argv[1]).resolve())
