"""HIL protocol 2's TENSOR request: every op output read back from a device and compared with
the TFLite Micro interpreter on the host, so `invoke diagnose --port` names the first op where
the device goes wrong. Against the emulator (one op altered on purpose: a stand-in for a
faulty kernel on a board) and against the real generated firmware built for the host, on a
pseudo-terminal."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, invoke_cmd, running_emulator

from pipeline.fileio import OUTPUT_MARKER
from pipeline.runtime.device import (
    ALTER_XOR,
    DEVICE_DESCRIPTION,
    TENSOR,
    DeviceError,
    HilClient,
    capture_device_tensors,
    serve_on_pty,
)
from pipeline.runtime.tensor_capture import capture_tensors, captured_tensor_indices
from pipeline.tflite_model import read_model

if sys.platform != "linux":  # pragma: no cover
    pytestmark = pytest.mark.skip("pseudo-terminals as used here are Linux-only")

SAMPLES = 4


emulator = running_emulator


@pytest.fixture
def demo_copy(demo_int8, tmp_path) -> Path:
    """The demo's output folder (both models, its report, the tool's marker) copied, so the
    diagnose task records into a report of its own."""
    src = demo_int8.output_dir
    dest = tmp_path / "demo"
    dest.mkdir()
    for name in ("model_int8.tflite", "model_float.tflite", "report.json", OUTPUT_MARKER):
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)
    return dest / "model_int8.tflite"


def _inputs(model_path: Path, n: int = 3) -> list[np.ndarray]:
    model = read_model(model_path)
    rng = np.random.default_rng(7)
    return [rng.integers(-128, 128, size=(n, *t.shape[1:])).astype(t.dtype) for t in model.main.input_tensors()]


def _diagnose(model: Path, port: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(invoke_cmd() + ["diagnose", "--model", str(model), "--port", port,
                                          "--samples", str(SAMPLES), "--json", *extra],
                          cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600, check=False)


# --- the emulator ---------------------------------------------------------------------------------

def test_every_tensor_read_over_hil_is_host_tflms_and_large_ones_come_in_pieces(demo_int8):
    model_path = demo_int8.quantized_model
    inputs = _inputs(model_path)
    with emulator(model_path) as port:
        device, info = capture_device_tensors(port, model_path, inputs)
        client = HilClient(port, timeout=5.0)
        try:
            client.run(inputs[0][0].tobytes())
            big = max(captured_tensor_indices(read_model(model_path)), key=lambda t: device[t][0].nbytes)
            before = client.seq
            dtype, shape, raw = client.tensor(big)
            requests = (client.seq - before) % 256
        finally:
            client.close()
    assert info["protocol"] == "2" and info["tensors"] == "preserved"
    host = capture_tensors(model_path, inputs, "tflm")
    assert sorted(device) == sorted(host)
    for t in host:
        assert device[t].dtype == host[t].dtype and np.array_equal(device[t], host[t]), t
    # the demo's conv1 output (8x8x16 int8, 1,024 bytes) is larger than the 1,024-byte reply
    # buffer the firmware has for this model once the reply's header is in it: two pieces
    assert len(raw) == 1024 and requests == 2
    assert np.array_equal(np.frombuffer(raw, dtype).reshape(shape)[0], device[big][0])


def test_tensor_errors_follow_the_protocol(demo_int8):
    model_path = demo_int8.quantized_model
    tensors = len(read_model(model_path).main.tensors)
    with emulator(model_path) as port:
        client = HilClient(port, timeout=5.0)
        try:
            with pytest.raises(DeviceError, match="device error 8: no inference to read from"):
                client.tensor(0)
            client.run(_inputs(model_path, 1)[0][0].tobytes())
            with pytest.raises(DeviceError, match="device error 7: tensor index out of range"):
                client.tensor(tensors)
            with pytest.raises(DeviceError, match="device error 3: TENSOR payload"):
                client.request(TENSOR, b"abc")
            with pytest.raises(DeviceError, match="device error 3: offset beyond"):
                client.request(TENSOR, struct.pack("<II", 0, 65))  # the input has 64 bytes
            assert client.tensor(0)[2] == _inputs(model_path, 1)[0][0].tobytes()
        finally:
            client.close()
    with emulator(model_path, "--no-tensors") as port:
        client = HilClient(port, timeout=5.0)
        try:
            assert client.info()["tensors"] == "none"
            client.run(bytes(64))
            with pytest.raises(DeviceError, match="device error 6: tensors are not preserved"):
                client.tensor(0)
        finally:
            client.close()
        with pytest.raises(DeviceError, match="does not preserve its tensors") as info:
            capture_device_tensors(port, model_path, _inputs(model_path))
        assert "-DHIL_TENSORS=ON" in info.value.fix


@pytest.mark.parametrize("op, kind, layer", [(2, "CONV_2D", "conv2"), (4, "FULLY_CONNECTED", "fc1")])
def test_diagnose_names_the_op_the_emulator_alters(demo_copy, op, kind, layer):
    """The emulator changes the first element of op K's output by 8 steps (a faulty kernel on
    a board): `invoke diagnose --port` names exactly that op and its Keras layer, with inputs
    identical to the host's, in its JSON, report.json and report.md."""
    with emulator(demo_copy, "--fault", "alter-op", "--op", str(op)) as port:
        proc = _diagnose(demo_copy, port, "--strict")
    assert proc.returncode == 1, proc.stderr  # --strict: the device parts ways
    section = json.loads(proc.stdout)
    found = section["first_divergence"]
    assert section["runtimes_compared"] == ["tflm", "device"] and section["runtime_error"] is None
    assert (found["op_index"], found["op"], found["keras_layer"]) == (op, kind, layer)
    assert found["between"] == ["tflm", "device"] and found["max_lsb"] == ALTER_XOR
    assert found["inputs_identical"] is True and found["compared_ops"] == op + 1
    # one element of each sample: the first
    shape = read_model(demo_copy).main.tensors[read_model(demo_copy).main.operators[op].outputs[0]].shape
    assert found["differing_fraction"] == pytest.approx(1 / np.prod(shape), abs=1e-6)
    assert found["first_difference"]["sample"] == 0 and found["first_difference"]["element"] == 0
    assert found["kernel"]["runtimes"]["device"] == DEVICE_DESCRIPTION
    assert section["device"]["board"].startswith("emulator") and section["device"]["protocol"] == "2"
    report = json.loads((demo_copy.parent / "report.json").read_text())["diagnose"]
    assert report["first_divergence"] == found
    md = (demo_copy.parent / "report.md").read_text()
    assert f"First divergence tflm vs device: op {op} {kind} (layer `{layer}`" in md
    assert "The device: emulator (TFLM Python interpreter)" in md


def test_diagnose_port_refuses_what_cannot_work_with_one_line(demo_copy):
    with emulator(demo_copy, "--no-tensors") as port:
        proc = _diagnose(demo_copy, port)
    assert proc.returncode == 2 and "does not preserve its tensors" in proc.stderr
    assert "-DHIL_TENSORS=ON" in proc.stderr and "Traceback" not in proc.stderr
    no_port = subprocess.run(invoke_cmd() + ["diagnose", "--model", str(demo_copy), "--runtimes", "tflm,device"],
                             cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120,
                             check=False)
    assert no_port.returncode == 2 and "pass --port" in no_port.stderr and "Traceback" not in no_port.stderr
    unknown_op = subprocess.run(invoke_cmd() + ["emulate", "--model", str(demo_copy), "--fault", "alter-op",
                                                "--op", "99"], cwd=ROOT, capture_output=True, text=True,
                                stdin=subprocess.DEVNULL, timeout=120, check=False)
    assert unknown_op.returncode == 2 and "--op" in unknown_op.stderr and "0..6" in unknown_op.stderr


# --- the real firmware, built for the host, over a pty ---------------------------------------------

@pytest.fixture(scope="module")
def tensor_firmware(demo_int8, tflm_tree, tmp_path_factory):
    """The demo's generated firmware built for the host twice: with -DHIL_TENSORS=ON, and as
    normal firmware (the same TFLM library; only the application differs)."""
    from pipeline.stages.firmware import build_and_run, generate_firmware

    root = tmp_path_factory.mktemp("hiltensors")
    model = root / "demo" / "model_int8.tflite"
    model.parent.mkdir()
    shutil.copy2(demo_int8.quantized_model, model)
    project = generate_firmware(model, out=root / "demo" / "firmware").output_dir
    builds = {}
    for kind, tensors in (("tensors", True), ("plain", False)):
        built = build_and_run(project, tflm_tree, root / f"build-{kind}", hil_tensors=tensors)
        assert built["passed"], built.get("output")
        builds[kind] = Path(built["build_dir"]) / "selftest"
    return model, project, builds


@contextmanager
def firmware_on_pty(selftest: Path):
    proc, port, slave = serve_on_pty([str(selftest), "--serve"])
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait()
        os.close(slave)


def _preserved_host_arena(project: Path) -> int:
    """kPreservedTensorArenaSize of the 64-bit host (the first of model_arena.h's two figures)."""
    return int(re.search(r"kPreservedTensorArenaSize = (\d+);", (project / "model_arena.h").read_text()).group(1))


def test_real_firmware_returns_host_tflms_tensors_and_diagnose_finds_no_divergence(tensor_firmware, demo_copy):
    model, project, builds = tensor_firmware
    inputs = _inputs(model)
    with firmware_on_pty(builds["tensors"]) as port:
        device, info = capture_device_tensors(port, model, inputs)
    assert info["board"] == "host" and info["protocol"] == "2" and info["tensors"] == "preserved"
    assert int(info["arena_bytes"]) == _preserved_host_arena(project)
    host = capture_tensors(model, inputs, "tflm")
    assert sorted(device) == sorted(host)
    for t in host:  # the same reference kernels: bit exact, every tensor
        assert np.array_equal(device[t], host[t]), t
    # through the task, on the demo's samples (`demo_copy` is the same model, its float twin beside)
    assert demo_copy.read_bytes() == model.read_bytes()
    with firmware_on_pty(builds["tensors"]) as port:
        proc = _diagnose(demo_copy, port, "--strict")
    assert proc.returncode == 0, proc.stderr
    section = json.loads(proc.stdout)
    assert section["first_divergence"] is None and section["runtimes_compared"] == ["tflm", "device"]
    assert section["device"]["board"] == "host" and section["runtime_error"] is None
    assert "tflm and device agree on every op within 0 LSB." in (demo_copy.parent / "report.md").read_text()


def test_normal_firmware_answers_tensor_with_error_6_and_keeps_its_arena(tensor_firmware):
    model, project, builds = tensor_firmware
    with firmware_on_pty(builds["plain"]) as port:
        client = HilClient(port, timeout=5.0)
        try:
            info = client.info()
            client.run(_inputs(model, 1)[0][0].tobytes())
            with pytest.raises(DeviceError, match="device error 6: tensors are not preserved"):
                client.tensor(0)
        finally:
            client.close()
    assert info["tensors"] == "none" and info["protocol"] == "2"
    assert int(info["arena_bytes"]) < _preserved_host_arena(project)
