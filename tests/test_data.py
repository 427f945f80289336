"""Representative-data loading and validation, without TensorFlow (specs built by hand)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data import load_samples, precheck_data_spec, validated
from pipeline.errors import PipelineError
from pipeline.model import TensorSpec

IMAGE = TensorSpec("image", (1, 8, 8, 1), "float32")
EXTRA = TensorSpec("extra", (1, 4), "float32")


def test_npy_limit_and_dtype(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((10, 8, 8, 1), np.float64))
    s = load_samples(str(tmp_path / "a.npy"), [IMAGE], limit=4)
    assert s.count == 4 and s.inputs["image"].dtype == np.float32 and s.labels is None
    assert s.batch(2)["image"].shape == (1, 8, 8, 1)


def test_npz_keyed_by_name_with_labels(tmp_path):
    np.savez(tmp_path / "a.npz", image=np.zeros((6, 8, 8, 1), np.float32),
             extra=np.zeros((6, 4), np.float32), y=np.arange(6))
    s = load_samples(str(tmp_path / "a.npz"), [IMAGE, EXTRA])
    assert s.count == 6 and list(s.labels) == list(range(6))


def test_npz_with_wrong_keys_lists_expected(tmp_path):
    np.savez(tmp_path / "a.npz", foo=np.zeros((6, 8, 8, 1), np.float32), bar=np.zeros((6, 4)))
    with pytest.raises(PipelineError, match=r"\['bar', 'foo'\] do not match the model inputs \(image, extra\)"):
        load_samples(str(tmp_path / "a.npz"), [IMAGE, EXTRA])


def test_inputs_with_different_counts(tmp_path):
    with pytest.raises(PipelineError, match="different sample counts"):
        validated({"image": np.zeros((3, 8, 8, 1), np.float32), "extra": np.zeros((4, 4), np.float32)},
                  None, [IMAGE, EXTRA], source="x", option="--data")


def test_label_count_mismatch():
    with pytest.raises(PipelineError, match="2 labels for 3 samples"):
        validated({"image": np.zeros((3, 8, 8, 1), np.float32)}, np.array([1, 2]), [IMAGE],
                  source="x", option="--data")


def test_corrupt_npy(tmp_path):
    (tmp_path / "a.npy").write_bytes(b"garbage")
    with pytest.raises(PipelineError, match="not a readable .npy"):
        load_samples(str(tmp_path / "a.npy"), [IMAGE])


def test_unknown_suffix(tmp_path):
    (tmp_path / "a.csv").write_text("1,2")
    with pytest.raises(PipelineError, match="unsupported data file type '.csv'"):
        load_samples(str(tmp_path / "a.csv"), [IMAGE])


def test_image_folder_rgb_and_errors(tmp_path):
    from PIL import Image

    rgb = TensorSpec("rgb", (1, 16, 12, 3), "float32")
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        Image.new("RGB", (40, 30), (255, 0, 0)).save(tmp_path / "imgs" / f"{i}.jpg")
    s = load_samples(str(tmp_path / "imgs"), [rgb])
    assert s.inputs["rgb"].shape == (3, 16, 12, 3)
    assert s.inputs["rgb"][..., 0].min() > 0.9 and s.labels is None
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(PipelineError, match="not a readable image"):
        load_samples(str(tmp_path / "imgs"), [rgb])
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match="no images found"):
        load_samples(str(tmp_path / "empty"), [rgb])


def test_function_source_dicts_tuples_and_errors(tmp_path, monkeypatch):
    (tmp_path / "gen_mod.py").write_text(
        "import numpy as np\n"
        "def dicts():\n"
        "    return [{'image': np.zeros((1, 8, 8, 1), np.float32), 'extra': np.ones(4, np.float32)}] * 3\n"
        "def tuples():\n"
        "    return [(np.zeros((8, 8, 1), np.float32), np.ones(4, np.float32))] * 2\n"
        "def nothing():\n"
        "    return []\n"
        "def boom():\n"
        "    raise RuntimeError('disk on fire')\n"
        "NOT_CALLABLE = 3\n")
    monkeypatch.chdir(tmp_path)
    assert load_samples("gen_mod:dicts", [IMAGE, EXTRA]).count == 3
    assert load_samples("gen_mod:tuples", [IMAGE, EXTRA], tuple_order=["image", "extra"]).count == 2
    with pytest.raises(PipelineError, match="yielded no samples"):
        load_samples("gen_mod:nothing", [IMAGE])
    with pytest.raises(PipelineError, match="raised RuntimeError: disk on fire"):
        load_samples("gen_mod:boom", [IMAGE])
    with pytest.raises(PipelineError, match="has no function 'NOT_CALLABLE'"):
        load_samples("gen_mod:NOT_CALLABLE", [IMAGE])
    with pytest.raises(PipelineError, match="cannot import module 'no_such_mod'"):
        load_samples("no_such_mod:f", [IMAGE])


def test_precheck_only_checks_paths():
    precheck_data_spec(None)
    precheck_data_spec("some.module:fn")  # resolved later
    with pytest.raises(PipelineError, match="no such file") as info:
        precheck_data_spec("missing.npz", "--eval-data")
    assert info.value.field == "--eval-data"


UNIT = TensorSpec("unit", (1, 16), "float32")
PERCENT = TensorSpec("percent", (1, 16), "float32")


def test_tuples_follow_the_keras_input_order_not_the_tflite_order(tmp_path, monkeypatch):
    """Two equally shaped inputs: the TFLite file lists `percent` first, Keras built (unit,
    percent). Matched by position in the file's order, the [0, 100] data fed the [0, 1] input."""
    (tmp_path / "pairs.py").write_text(
        "import numpy as np\n"
        "def pairs():\n"
        "    return [(np.full(16, 0.5, np.float32), np.full(16, 50.0, np.float32))] * 3\n")
    monkeypatch.chdir(tmp_path)
    s = load_samples("pairs:pairs", [PERCENT, UNIT], tuple_order=["unit", "percent"])
    assert s.inputs["unit"].max() == 0.5 and s.inputs["percent"].max() == 50.0
    with pytest.raises(PipelineError, match="order of this model's inputs .* is not known") as info:
        load_samples("pairs:pairs", [PERCENT, UNIT])
    assert "dicts keyed by input name" in info.value.fix


def test_labels_per_output(tmp_path):
    np.savez(tmp_path / "e.npz", unit=np.zeros((5, 16), np.float32), percent=np.zeros((5, 16), np.float32),
             y=np.arange(5), y_value=np.linspace(0, 1, 5).reshape(5, 1), y_kind=np.arange(5) % 3)
    s = load_samples(str(tmp_path / "e.npz"), [UNIT, PERCENT], limit=4)
    assert sorted(s.output_labels) == ["y_kind", "y_value"] and s.output_labels["y_value"].shape == (4,)
    assert sorted(s.label_arrays()) == ["y", "y_kind", "y_value"]
    np.savez(tmp_path / "bad.npz", unit=np.zeros((5, 16), np.float32), percent=np.zeros((5, 16), np.float32),
             y_value=np.zeros(3))
    with pytest.raises(PipelineError, match="'y_value' has 3 labels for 5 samples"):
        load_samples(str(tmp_path / "bad.npz"), [UNIT, PERCENT])
