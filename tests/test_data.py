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


# --- reading with limits (issue 16): headers first, only the samples asked for ---------------

def _npy_header_only(path, shape, payload=1024):
    from numpy.lib import format as npformat

    with path.open("wb") as f:
        npformat.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
        f.write(b"\0" * payload)
    return path


def test_a_header_declaring_more_than_the_file_holds_is_refused_before_allocating(tmp_path):
    path = _npy_header_only(tmp_path / "cal.npy", (10 ** 12, 8, 8, 1))
    with pytest.raises(PipelineError, match=r"declares shape \(1000000000000, 8, 8, 1\).* only 1 KiB") as info:
        load_samples(str(path), [IMAGE], limit=4)
    assert info.value.field == "--data" and info.value.path == str(path)


def test_more_than_the_memory_limit_is_refused(tmp_path, monkeypatch):
    from pipeline import data

    monkeypatch.setattr(data, "MAX_DATA_BYTES", 3 * 256)  # 3 samples of 8x8x1 float32
    np.save(tmp_path / "cal.npy", np.zeros((10, 8, 8, 1), np.float32))
    assert load_samples(str(tmp_path / "cal.npy"), [IMAGE], limit=3).count == 3
    with pytest.raises(PipelineError, match="more than the .* one data source may take"):
        load_samples(str(tmp_path / "cal.npy"), [IMAGE], limit=4)


def test_only_the_samples_asked_for_are_read(tmp_path):
    """The header says 1000 samples but only 4 are there: a reader that took the header's word
    and read 4 finds them; the file-size check still sees the truncation."""
    values = np.random.default_rng(0).random((1000, 8, 8, 1), dtype=np.float32)
    np.save(tmp_path / "cal.npy", values)
    s = load_samples(str(tmp_path / "cal.npy"), [IMAGE], limit=4)
    np.testing.assert_array_equal(s.inputs["image"], values[:4])
    np.savez_compressed(tmp_path / "cal.npz", x=values, y=np.arange(1000), unused=np.zeros(10))
    s = load_samples(str(tmp_path / "cal.npz"), [IMAGE], limit=5)
    np.testing.assert_array_equal(s.inputs["image"], values[:5])
    assert s.labels.tolist() == [0, 1, 2, 3, 4]


def test_column_major_and_big_endian_arrays_load(tmp_path):
    values = np.random.default_rng(1).random((6, 8, 8, 1)).astype(">f4")
    np.save(tmp_path / "f.npy", np.asfortranarray(values))
    np.testing.assert_array_equal(load_samples(str(tmp_path / "f.npy"), [IMAGE], limit=2).inputs["image"],
                                  values[:2])


def test_object_arrays_and_truncated_members_are_bad_input(tmp_path):
    np.save(tmp_path / "o.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    with pytest.raises(PipelineError, match="holds Python objects"):
        load_samples(str(tmp_path / "o.npy"), [IMAGE])
    (tmp_path / "cut.npz").write_bytes((tmp_path / "o.npy").read_bytes()[:20])
    with pytest.raises(PipelineError, match="not a readable .npz archive"):
        load_samples(str(tmp_path / "cut.npz"), [IMAGE])


def test_special_files_and_symlink_loops_are_named(tmp_path):
    import os

    os.mkfifo(tmp_path / "cal.npy")
    with pytest.raises(PipelineError, match="not a regular file"):
        precheck_data_spec(str(tmp_path / "cal.npy"))
    (tmp_path / "loop.npz").symlink_to("loop.npz")
    with pytest.raises(PipelineError, match="symlink loop"):
        load_samples(str(tmp_path / "loop.npz"), [IMAGE])
    (tmp_path / "imgs").mkdir()
    os.mkfifo(tmp_path / "imgs" / "a.png")
    with pytest.raises(PipelineError, match="not a regular file") as info:
        load_samples(str(tmp_path / "imgs"), [IMAGE])
    assert info.value.path.endswith("a.png")


def test_an_image_larger_than_the_pixel_limit_is_refused_from_its_header(tmp_path, monkeypatch):
    from PIL import Image

    from pipeline import data

    (tmp_path / "imgs").mkdir()
    Image.new("L", (100, 100)).save(tmp_path / "imgs" / "big.png")
    monkeypatch.setattr(data, "MAX_IMAGE_PIXELS", 99 * 100)
    with pytest.raises(PipelineError, match="more than the .* Mpixel") as info:
        load_samples(str(tmp_path / "imgs"), [IMAGE])
    assert info.value.path.endswith("big.png")


# --- module:function specs -------------------------------------------------------------------

@pytest.mark.parametrize("spec, problem", [
    (":samples", "no module name"), (".okmod:samples", "not an importable module name"),
    ("a..b:samples", "not an importable module name"), ("okmod:", "no function name"),
])
def test_function_specs_python_cannot_import_are_refused_before_importing(spec, problem):
    with pytest.raises(PipelineError, match=problem):
        load_samples(spec, [IMAGE])


@pytest.mark.parametrize("spec", ["cal:2024.npy", "evil:samples.npy", "data/x:y", "a:b c"])
def test_a_missing_file_name_with_a_colon_is_a_missing_file(tmp_path, monkeypatch, spec):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.py").write_text("import pathlib\npathlib.Path('IMPORTED').write_text('ran')\n")
    with pytest.raises(PipelineError, match="no such file"):
        load_samples(spec, [IMAGE])
    assert not (tmp_path / "IMPORTED").exists()


@pytest.mark.parametrize("source, problem", [
    ("raise RuntimeError('boom\\nsecond line')\n", "importing it raised RuntimeError: boom second line"),
    ("def samples(:\n    pass\n", r"syntax error \(m_.*\.py, line 1\)"),
    ("import sys\nsys.exit(3)\n", r"calls sys.exit\(3\) when imported"),
    ("import sys\ndef samples():\n    sys.exit(4)\n", r"called sys.exit\(4\)"),
    ("import sys\ndef samples():\n    yield from ()\n    sys.exit(5)\n", r"called sys.exit\(5\)"),
], ids=["raises", "syntax", "exit-at-import", "exit-in-function", "exit-in-generator"])
def test_a_broken_data_module_is_bad_input(tmp_path, monkeypatch, request, source, problem):
    name = f"m_{request.node.callspec.id.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError, match=problem) as info:
        load_samples(f"{name}:samples", [IMAGE])
    assert "\n" not in info.value.message and info.value.field == "--data"
