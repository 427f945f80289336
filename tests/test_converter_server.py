"""pipeline/runtime/converter_server.py: `invoke quantize` runs from separate processes share one
TensorFlow import, get the bytes a converter of their own makes, and a crash, a hang-up or a
client that differs is handled as without the server. Each test has a server of its own."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time

import numpy as np
import pytest

from conftest import ROOT, invoke_cmd
from pipeline.runtime import convert, converter_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A small Keras classifier, and an LSTM as a SavedModel with a batch of 1 (the calibrator
    crashes on its while loop: a real segfault in the converter child)."""
    import keras
    import tensorflow as tf

    from pipeline.runtime.tf import captured_stderr, import_tensorflow

    import_tensorflow()
    keras.utils.set_random_seed(3)
    d = tmp_path_factory.mktemp("server_models")
    inp = keras.Input((8,), name="features")
    keras.Model(inp, keras.layers.Dense(3, activation="softmax")(keras.layers.Dense(6, activation="relu")(inp))) \
        .save(d / "small.keras")
    np.save(d / "small.npy", np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32))
    seq = keras.Input((6, 3), name="sequence")
    lstm = keras.Model(seq, keras.layers.Dense(2)(keras.layers.LSTM(4, name="lstm")(seq)))
    with captured_stderr():
        lstm.export(str(d / "lstm_batch1"), format="tf_saved_model", verbose=False,
                    input_signature=[tf.TensorSpec((1, 6, 3), tf.float32, name="sequence")])
    np.save(d / "seq.npy", np.random.default_rng(1).normal(size=(20, 6, 3)).astype(np.float32))
    return d


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A socket path of this test's own; the server started there is stopped afterwards."""
    path = tmp_path / "conv.sock"
    monkeypatch.setenv(converter_server.ENV_VAR, str(path))
    monkeypatch.setenv(converter_server.IDLE_VAR, "120")
    yield path
    converter_server.stop(str(path))


def quantize(models, out, *, model="small.keras", data="small.npy", env=None):
    return subprocess.run(invoke_cmd() + ["-r", str(ROOT), "quantize", "--model", model, "--data", data,
                                          "--out", str(out)],
                          cwd=models, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          env=env or dict(os.environ), timeout=600)


def served(path) -> list[tuple[int, int]]:
    """(client pid, converter pid) for each client the server forked a converter for."""
    log = path.with_name(path.name + ".log")
    text = log.read_text() if log.exists() else ""
    return [(int(a), int(b)) for a, b in re.findall(r"^client (\d+): converter (\d+)$", text, re.M)]


def test_quantize_runs_from_two_processes_share_one_server_and_match_a_converter_of_their_own(
        models, server, tmp_path):
    first = quantize(models, tmp_path / "a")
    second = quantize(models, tmp_path / "b")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    clients = served(server)
    assert len(clients) == 2 and clients[0][0] != clients[1][0]  # two invoke processes, one server
    alone = dict(os.environ)
    alone.pop(converter_server.ENV_VAR)
    own = quantize(models, tmp_path / "own", env=alone)
    assert own.returncode == 0, own.stderr
    assert len(served(server)) == 2
    made = [(tmp_path / d / "small" / "model_int8.tflite").read_bytes() for d in ("a", "b", "own")]
    assert made[0] == made[1] == made[2]


def test_a_crash_in_a_served_converter_is_one_line_and_the_server_serves_on(models, server, tmp_path):
    crash = quantize(models, tmp_path / "crash", model="lstm_batch1", data="seq.npy")
    assert crash.returncode == 2 and "Traceback" not in crash.stderr, crash.stderr
    assert "crashed (SIGSEGV)" in crash.stderr and "`lstm`" in crash.stderr
    after = quantize(models, tmp_path / "after")
    assert after.returncode == 0, after.stderr
    assert len(served(server)) == 2


def test_a_client_whose_environment_differs_gets_a_converter_of_its_own(models, server, tmp_path):
    assert quantize(models, tmp_path / "a").returncode == 0
    other = {**os.environ, "TF_NUM_INTEROP_THREADS": "1"}  # read when TensorFlow starts
    run = quantize(models, tmp_path / "b", env=other)
    assert run.returncode == 0, run.stderr
    assert len(served(server)) == 1


def _hello(path) -> tuple[socket.socket, dict]:
    env = convert._child_env()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    sock.sendall(json.dumps({"identity": converter_server.identity(env, converter_server.code_digest()),
                             "env": env, "cwd": os.getcwd(), "path": []}).encode() + b"\n")
    return sock, json.loads(sock.makefile("r").readline())


def _gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[1].startswith("Z"):
                    return True  # dead, not yet reaped
        except OSError:
            return True
        time.sleep(0.05)
    return False


def test_a_client_that_hangs_up_gets_its_converter_killed_and_shutdown_ends_the_server(models, server, tmp_path):
    assert quantize(models, tmp_path / "start").returncode == 0  # starts the server
    sock, answer = _hello(server)
    assert answer["ok"] and not _gone(answer["pid"], 0.5)  # the converter waits for a job
    sock.close()
    assert _gone(answer["pid"], 5)
    (server_pid,) = {int(p) for p in os.listdir("/proc") if p.isdigit() and _cmdline(p).endswith(str(server))}
    converter_server.stop(str(server))
    assert _gone(server_pid, 30) and not server.exists()


def _cmdline(pid: str) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def test_a_server_that_cannot_start_is_a_warning_and_the_run_converts_without_it(models, tmp_path, monkeypatch):
    monkeypatch.setenv(converter_server.ENV_VAR, str(tmp_path / "no-such-folder" / "conv.sock"))
    run = quantize(models, tmp_path / "out")
    assert run.returncode == 0, run.stderr
    assert "no converter server at" in run.stderr and "converting without it" in run.stderr
    assert (tmp_path / "out" / "small" / "model_int8.tflite").is_file()
