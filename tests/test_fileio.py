from __future__ import annotations

import pytest

from pipeline.errors import PipelineError
from pipeline.fileio import check_writable, safe_name, write_bytes_atomic


@pytest.mark.parametrize("raw,safe", [("my model v2", "my_model_v2"), ("../../etc/passwd", "etc_passwd"),
                                      ("", "model"), ("...", "model"), ("ok-name_1.2", "ok-name_1.2")])
def test_safe_name(raw, safe):
    assert safe_name(raw) == safe


def test_atomic_write_leaves_no_temp_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    write_bytes_atomic(target, b"old")
    import os

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_check_writable_leaves_nothing_behind(tmp_path):
    check_writable(tmp_path / "a" / "b" / "c")
    assert list(tmp_path.iterdir()) == []


def test_check_writable_names_the_option(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(PipelineError, match="cannot write the output directory") as info:
        check_writable(tmp_path / "file" / "sub", option="--out")
    assert info.value.field == "--out" and "--out" in info.value.fix


def test_outputs_get_umask_permissions_not_private_temp_ones(tmp_path):
    import os
    import stat

    from pipeline.fileio import replace_dir

    old = os.umask(0o022)
    try:
        f = write_bytes_atomic(tmp_path / "model.tflite", b"x")
        staging = tmp_path / "staging"
        staging.mkdir(mode=0o700)
        replace_dir(staging, tmp_path / "edgetpu")
    finally:
        os.umask(old)
    assert stat.S_IMODE(f.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "edgetpu").stat().st_mode) == 0o755
