"""A stateful model (variable tensors: SVDF's activation state, a fused LSTM's h and c) run sample
by sample on the host: every runtime resets the state before each sample, so a sample's output
does not depend on the samples before it (without the reset a fused LSTM scored 23.5% instead of
82%). The model is a float SVDF whose state is a variable tensor; LiteRT and TFLM both run it."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data import SampleSet
from tflite_builder import ModelBuilder


@pytest.fixture(scope="module")
def svdf(tmp_path_factory) -> tuple:
    rng = np.random.default_rng(0)
    mb = ModelBuilder()
    x = mb.tensor("x", (1, 4), "float32")
    features = mb.const("weights_feature", rng.normal(size=(2, 4)), "float32", scale=None)
    time_w = mb.const("weights_time", rng.normal(size=(2, 3)), "float32", scale=None)
    bias = mb.const("bias", np.zeros(2), "float32", scale=None)
    state = mb.tensor("state", (1, 6), "float32", variable=True)
    y = mb.tensor("y", (1, 2), "float32")
    mb.op("SVDF", [x, features, time_w, bias, state], [y], options=("SVDFOptions", {"Rank": 1}))
    path = tmp_path_factory.mktemp("stateful") / "svdf.tflite"
    path.write_bytes(mb.build([x], [y]))
    samples = rng.normal(size=(5, 1, 4)).astype(np.float32).reshape(5, 4)
    return path, samples


def alone(path, samples) -> np.ndarray:
    """Each sample in a fresh interpreter: the reference a reset must reproduce."""
    from ai_edge_litert.interpreter import Interpreter

    out = []
    for s in samples:
        it = Interpreter(model_path=str(path))
        it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], s[None])
        it.invoke()
        out.append(it.get_tensor(it.get_output_details()[0]["index"])[0].copy())
    return np.stack(out)


def test_the_model_carries_state_without_a_reset(svdf):
    from pipeline.model import is_stateful
    from pipeline.tflite_model import read_model

    path, samples = svdf
    assert is_stateful(read_model(path))
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    carried = []
    for s in samples:
        it.set_tensor(it.get_input_details()[0]["index"], s[None])
        it.invoke()
        carried.append(it.get_tensor(it.get_output_details()[0]["index"])[0].copy())
    assert not np.allclose(np.stack(carried)[1:], alone(path, samples)[1:])


def test_every_host_runtime_resets_before_each_sample(svdf):
    from pipeline.runtime.litert import LiteRTModel, run_isolated
    from pipeline.runtime.tensor_capture import capture_tensors
    from pipeline.runtime.tflm_runner import run_tflm
    from pipeline.tflite_model import read_model

    path, samples = svdf
    want = alone(path, samples)
    (tflm,) = run_tflm(path, [samples])
    np.testing.assert_allclose(tflm, want, rtol=1e-5)
    (ref,), _ = run_isolated(path, [samples], "BUILTIN_REF")
    np.testing.assert_allclose(ref, want, rtol=1e-5)
    (litert,) = LiteRTModel(path.read_bytes()).run(SampleSet({"x": samples}, None, "test"))
    np.testing.assert_allclose(litert, want, rtol=1e-5)
    out_index = read_model(path).main.outputs[0]
    for runtime in ("tflm", "litert-ref"):
        np.testing.assert_allclose(capture_tensors(path, [samples], runtime)[out_index], want, rtol=1e-5)


def test_golden_vectors_and_the_emulator_start_each_vector_from_the_reset_state(svdf, tmp_path):
    from pipeline.golden import golden_vectors
    from pipeline.runtime.device import RUN, Emulator, Frame, FrameParser
    from pipeline.tflite_model import read_model

    path, samples = svdf
    np.save(tmp_path / "x.npy", samples)
    golden = golden_vectors(read_model(path), path, 5, str(tmp_path / "x.npy"))
    np.testing.assert_allclose(golden.expected[0], alone(path, samples), rtol=1e-5)
    emulator = Emulator(path)
    try:
        def run(seq: int, x: np.ndarray) -> np.ndarray:
            parser = FrameParser()
            parser.feed(emulator.handle(Frame(RUN, seq, x.astype(np.float32).tobytes())))
            return np.frombuffer(parser.next().payload[8:], np.float32)  # after cycles and microseconds

        outs = np.stack([run(seq, s) for seq, s in enumerate(samples)])
        np.testing.assert_allclose(outs, alone(path, samples), rtol=1e-5)
    finally:
        emulator.close()  # its TFLM worker process and the pty


def _int8_svdf() -> bytes:
    """An int8 SVDF as TFLM's kernel takes it: int16 time weights and state, the bias scale the
    product of the state's and the time weights' scales (svdf_common.cc checks it)."""
    rng = np.random.default_rng(0)
    mb = ModelBuilder()
    x = mb.tensor("x", (1, 4), "int8", scale=0.05)
    features = mb.const("weights_feature", rng.integers(-100, 100, size=(2, 4)), "int8", scale=0.02)
    time_w = mb.const("weights_time", rng.integers(-3000, 3000, size=(2, 3)), "int16", scale=0.0005)
    bias = mb.const("bias", np.zeros(2), "int32", scale=0.01 * 0.0005)
    state = mb.tensor("state", (1, 6), "int16", scale=0.01, variable=True)
    y = mb.tensor("y", (1, 2), "int8", scale=0.05)
    mb.op("SVDF", [x, features, time_w, bias, state], [y], options=("SVDFOptions", {"Rank": 1}))
    return mb.build([x], [y])


def test_the_firmware_resets_a_stateful_model_before_each_vector(tmp_path):
    """The golden outputs are computed from the reset state, so the generated self-test (and its
    HIL RUN) resets the interpreter before each vector when the model has variable tensors:
    model_settings.h says so and main.cc compiles against TFLM with the reset. (A host build of
    this model's firmware: 4/4 with the reset, 3/4 vectors fail without it; too slow for here.)"""
    import shutil
    import subprocess

    from reliability_support import relu_model, tflm_includes, tflm_tree

    from pipeline.stages.firmware import generate_firmware

    for name, data, stateful in (("svdf", _int8_svdf(), "true"), ("relu", relu_model(), "false")):
        path = tmp_path / name / "model_int8.tflite"
        path.parent.mkdir()
        path.write_bytes(data)
        result = generate_firmware(path, vectors=3)
        assert f"constexpr bool kStateful = {stateful};" in (result.output_dir / "model_settings.h").read_text()
    main = (result.output_dir / "main.cc").read_text()
    assert main.count("model::kStateful && ") == 2 and "Reset()" in main  # self-test loop and HIL RunOnce
    tree, gxx = tflm_tree(), shutil.which("g++")
    if tree is None or gxx is None:
        pytest.skip("main.cc compiles only with g++ and a TFLite Micro tree (TFLM_TREE or ../shared/tflm-tree)")
    project = tmp_path / "svdf" / "firmware"
    flags = [f.replace("-I", "-isystem", 1) if f.startswith("-I") else f for f in tflm_includes(tree)]
    proc = subprocess.run([gxx, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", f"-I{project}", *flags,
                           str(project / "main.cc")], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
