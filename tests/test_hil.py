"""The HIL protocol (framing, CRC, resync) and `invoke hil` against the emulator on a
pseudo-terminal, with every injected fault detected and given the right exit code."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ROOT, invoke_cmd, running_emulator
from pipeline.errors import NotDeployableError, PipelineError
from pipeline.runtime.device import MAGIC, FrameError, FrameParser, encode, parse_info
from pipeline.stages.hil import run_hil


# --- framing ----------------------------------------------------------------------------------

def test_frame_layout_matches_the_protocol_document():
    frame = encode(0x02, 7, b"\x01\x02\x03")
    assert frame[:2] == MAGIC and frame[2] == 0x02 and frame[3] == 7
    assert int.from_bytes(frame[4:8], "little") == 3 and frame[8:11] == b"\x01\x02\x03"
    assert int.from_bytes(frame[11:15], "little") == zlib.crc32(frame[2:11])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=5), st.binary(max_size=20), st.data())
def test_frames_survive_any_chunking_and_leading_garbage(payloads, garbage, data):
    stream = garbage.replace(MAGIC, b"") + b"".join(encode(0x82, i, p) for i, p in enumerate(payloads))
    parser, frames, pos = FrameParser(), [], 0
    while pos < len(stream):
        step = data.draw(st.integers(1, 64))
        parser.feed(stream[pos:pos + step])
        pos += step
        while (frame := parser.next()) is not None:
            frames.append(frame)
    assert [(f.seq, f.payload) for f in frames] == list(enumerate(payloads))


def test_damaged_frame_is_reported_with_its_seq_and_parsing_resumes():
    bad = bytearray(encode(0x01, 9, b"hello"))
    bad[9] ^= 0x01
    parser = FrameParser()
    parser.feed(bytes(bad) + encode(0x01, 10, b"next"))
    with pytest.raises(FrameError, match="bad CRC") as info:
        parser.next()
    assert info.value.seq == 9
    assert parser.next().payload == b"next"


def test_impossible_length_is_rejected_not_awaited():
    parser = FrameParser()
    parser.feed(MAGIC + bytes([1, 3]) + (50_000_000).to_bytes(4, "little"))
    with pytest.raises(FrameError, match="impossible length"):
        parser.next()


def test_parse_info():
    assert parse_info(b"model_sha256=ab\nboard=x = y\nnoise\n") == {"model_sha256": "ab", "board": "x = y"}


# --- against the emulator ----------------------------------------------------------------------

def emulator(model, fault=None):
    return running_emulator(model, *(["--fault", fault] if fault else []))


def test_hil_passes_against_the_emulator(demo_int8):
    with emulator(demo_int8.quantized_model) as port:
        r = run_hil(demo_int8.quantized_model, port)
    assert r.passed and len(r.vectors) == 4 and r.retries == 0
    assert all(v["max_difference"] == 0 and v["device_us"] > 0 for v in r.vectors)
    assert r.device["protocol"] == "2" and r.device["tensors"] == "preserved" and r.device["model_sha256"]


@pytest.mark.parametrize("fault", ["garble", "drop-byte"])
def test_damaged_reply_is_retried_and_recovers(demo_int8, fault):
    with emulator(demo_int8.quantized_model, fault) as port:
        r = run_hil(demo_int8.quantized_model, port, timeout=1.0)
    assert r.passed and r.retries >= 1


def test_wrong_model_hash_is_exit_1(demo_int8):
    with emulator(demo_int8.quantized_model, "wrong-hash") as port:
        with pytest.raises(NotDeployableError, match="runs another model") as info:
            run_hil(demo_int8.quantized_model, port)
    assert info.value.exit_code == 1


@pytest.mark.parametrize("fault", ["hang", "reset"])
def test_silent_device_is_exit_2_after_retries(demo_int8, fault):
    with emulator(demo_int8.quantized_model, fault) as port:
        with pytest.raises(PipelineError, match="no valid reply after 2 tries") as info:
            run_hil(demo_int8.quantized_model, port, timeout=0.5, retries=1)
    assert info.value.exit_code == 2 and "power cycle" in info.value.fix


def test_wrong_outputs_fail_the_vectors(demo_int8):
    with emulator(demo_int8.quantized_model, "wrong-output") as port:
        r = run_hil(demo_int8.quantized_model, port)
    assert not r.passed and all(v["max_difference"] >= 1 for v in r.vectors)


def test_invoke_hil_for_a_rig(demo_int8):
    with emulator(demo_int8.quantized_model) as port:
        ok = subprocess.run(invoke_cmd() + ["hil", "--port", port, "--model", str(demo_int8.quantized_model),
                                            "--json"], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["passed"] is True and len(doc["vectors"]) == 4
    with emulator(demo_int8.quantized_model, "wrong-output") as port:
        bad = subprocess.run(invoke_cmd() + ["hil", "--port", port, "--model", str(demo_int8.quantized_model)],
                             cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 1 and "HIL FAIL 0/4" in bad.stdout
    missing = subprocess.run(invoke_cmd() + ["hil", "--port", "/dev/nonexistent-tty", "--model",
                                             str(demo_int8.quantized_model)], cwd=ROOT, capture_output=True, text=True)
    assert missing.returncode == 2 and "cannot open the serial port" in missing.stderr
    assert "Traceback" not in missing.stderr
    unknown = subprocess.run(invoke_cmd() + ["emulate", "--model", str(demo_int8.quantized_model), "--fault", "x"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and "unknown fault" in unknown.stderr


def test_emulator_rejects_a_run_of_the_wrong_size(demo_int8):
    from pipeline.runtime.device import HilClient

    with emulator(demo_int8.quantized_model) as port:
        client = HilClient(port, timeout=2.0)
        try:
            with pytest.raises(PipelineError, match="device error 3: RUN needs 64 input bytes, got 3"):
                client.run(b"abc")
        finally:
            client.close()


if sys.platform != "linux":  # pragma: no cover
    pytestmark = pytest.mark.skip("pseudo-terminals as used here are Linux-only")


def test_deploy_runs_hil_last_with_a_port(demo_int8, tmp_path):
    import shutil

    from pipeline.deploy import DeployRequest, deploy

    out = tmp_path / "out"
    shutil.copytree(demo_int8.output_dir.parent / ".cache", out / ".cache")
    with emulator(demo_int8.quantized_model) as port:
        result = deploy(DeployRequest(out=out, port=port))
    hil = result.stage("hil")
    assert hil.status == "ran" and hil.result["passed"] and result.deployable
    report = json.loads((out / "demo" / "report.json").read_text())
    assert report["hil"]["passed"] is True and report["deploy"]["stages"]["hil"]["status"] == "done"


# --- the emulator's TFLM interpreter runs in a worker process ------------------------------------

def test_the_emulator_survives_its_interpreter_crashing(tmp_path):
    """TFLM can abort() the process it runs in: the emulator's interpreter is a worker. A RUN
    whose worker dies mid-call is an ERROR frame (E_INVOKE) naming the signal; the RUN after
    it gets a fresh worker and the right outputs, as a board after a reboot."""
    import threading

    import numpy as np
    from tflite_builder import ModelBuilder

    from pipeline.runtime.device import E_INVOKE, ERROR, RUN, RUN_OK, Emulator, Frame

    mb = ModelBuilder()
    x, y = mb.tensor("x", (1, 8)), mb.tensor("y", (1, 8))
    mb.op("RELU", [x], [y])
    path = tmp_path / "relu.tflite"
    path.write_bytes(mb.build([x], [y]))
    data = np.arange(-4, 4, dtype=np.int8)

    def run(emulator, seq):
        parser = FrameParser()
        parser.feed(emulator.handle(Frame(RUN, seq, data.tobytes())))
        return parser.next()

    emulator = Emulator(path)
    try:
        assert np.array_equal(np.frombuffer(run(emulator, 1).payload[8:], np.int8), np.maximum(data, 0))
        first = emulator.interpreter.proc
        first.send_signal(signal.SIGSTOP)  # frozen: the next RUN's request waits in its pipe
        abort = threading.Timer(0.5, lambda: (first.send_signal(signal.SIGABRT), first.send_signal(signal.SIGCONT)))
        abort.start()  # as TFLM's abort() in the middle of that call
        reply = run(emulator, 2)
        abort.join()
        assert reply.kind == ERROR and int.from_bytes(reply.payload[:2], "little") == E_INVOKE
        assert b"SIGABRT" in reply.payload, reply.payload
        assert first.returncode == -signal.SIGABRT
        again = run(emulator, 3)
        assert again.kind == RUN_OK and emulator.interpreter.proc.pid != first.pid
        assert np.array_equal(np.frombuffer(again.payload[8:], np.int8), np.maximum(data, 0))
    finally:
        emulator.close()
