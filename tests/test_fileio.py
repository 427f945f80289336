from __future__ import annotations

import os

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
    with pytest.raises(PipelineError, match="cannot write"):  # one line for the user, no traceback
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

    from pipeline.fileio import replace_owned_dir

    old = os.umask(0o022)
    try:
        f = write_bytes_atomic(tmp_path / "model.tflite", b"x")
        staging = tmp_path / "staging"
        staging.mkdir(mode=0o700)
        replace_owned_dir(staging, tmp_path / "edgetpu")
    finally:
        os.umask(old)
    assert stat.S_IMODE(f.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "edgetpu").stat().st_mode) == 0o755


# --- folders the tool owns: replaced only when it made them, user files never lost ------------

from pipeline.fileio import (MANIFEST, ensure_replaceable, recover_interrupted, replace_owned_dir,  # noqa: E402
                             staging_dir, write_manifest)


def _generated(tmp_path, final, files: dict[str, str]):
    staging = staging_dir(final)
    for rel, text in files.items():
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        (staging / rel).write_text(text)
    write_manifest(staging, "edge-deploy test")
    return staging


def test_a_users_folder_is_never_replaced(tmp_path):
    final = tmp_path / "mine"
    final.mkdir()
    (final / "notes.txt").write_text("precious")
    staging = _generated(tmp_path, final, {"a.h": "new"})
    with pytest.raises(PipelineError, match="did not make") as info:
        replace_owned_dir(staging, final)
    assert info.value.exit_code == 2 and "new or empty folder" in info.value.fix
    assert (final / "notes.txt").read_text() == "precious" and not (final / "a.h").exists()


def test_a_file_is_never_replaced_by_a_folder(tmp_path):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(PipelineError, match="not a folder"):
        ensure_replaceable(tmp_path / "out")
    assert (tmp_path / "out").read_text() == "a file"


def test_an_empty_folder_and_our_own_folder_are_replaced(tmp_path):
    final = tmp_path / "fw"
    final.mkdir()
    replace_owned_dir(_generated(tmp_path, final, {"a.h": "1", "b/c.h": "1"}), final)
    replace_owned_dir(_generated(tmp_path, final, {"a.h": "2"}), final)
    assert (final / "a.h").read_text() == "2" and not (final / "b").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fw"], "no staging or old folder left"


def test_a_file_written_again_with_the_same_bytes_keeps_its_time(tmp_path):
    """make goes by time: regenerating a project must not make it recompile what did not change."""
    final = tmp_path / "fw"
    replace_owned_dir(_generated(tmp_path, final, {"main.cc": "same", "arena.h": "1"}), final)
    old = 1_000_000_000 * 10**9
    for name in ("main.cc", "arena.h"):
        os.utime(final / name, ns=(old, old))
    replace_owned_dir(_generated(tmp_path, final, {"main.cc": "same", "arena.h": "2"}), final)
    assert (final / "main.cc").stat().st_mtime_ns == old
    assert (final / "arena.h").read_text() == "2" and (final / "arena.h").stat().st_mtime_ns > old


def test_files_a_user_added_are_carried_into_the_new_folder(tmp_path):
    final = tmp_path / "fw"
    replace_owned_dir(_generated(tmp_path, final, {"a.h": "1", "board/x.c": "1"}), final)
    (final / "build-host").mkdir()
    (final / "build-host" / "CMakeCache.txt").write_text("user build")
    (final / "board" / "my.ld").write_text("user linker script")
    replace_owned_dir(_generated(tmp_path, final, {"a.h": "2", "board/x.c": "2"}), final)
    assert (final / "build-host" / "CMakeCache.txt").read_text() == "user build"
    assert (final / "board" / "my.ld").read_text() == "user linker script"
    assert (final / "a.h").read_text() == "2"


def test_a_clash_with_a_user_file_is_refused_before_anything_moves(tmp_path):
    final = tmp_path / "fw"
    replace_owned_dir(_generated(tmp_path, final, {"a.h": "1"}), final)
    (final / "b.h").write_text("the user's b.h")
    with pytest.raises(PipelineError, match="b.h"):
        replace_owned_dir(_generated(tmp_path, final, {"a.h": "2", "b.h": "generated"}), final)
    assert (final / "b.h").read_text() == "the user's b.h" and (final / "a.h").read_text() == "1"


def test_an_interrupted_swap_is_recovered_by_the_next_run(tmp_path):
    """The two-rename fallback interrupted between its renames: the previous folder sits aside
    under a dead process's name and `final` is missing. The next run puts it back."""
    final = tmp_path / "fw"
    replace_owned_dir(_generated(tmp_path, final, {"a.h": "previous"}), final)
    (final / "user.txt").write_text("mine")
    aside = tmp_path / ".fw.old-999999999-x"
    final.rename(aside)
    half = tmp_path / ".fw.staging-999999999-y"  # a render that never got its manifest
    half.mkdir()
    (half / "a.h").write_text("half")
    recover_interrupted(final)
    assert (final / "a.h").read_text() == "previous" and (final / "user.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fw"]


def test_an_exchanged_but_unsettled_old_folder_gives_back_the_users_files(tmp_path):
    """Interrupted right after the atomic exchange: the previous folder (with a user file) is at
    the staging name. The next run moves the user's file into the new folder, deletes the rest."""
    final = tmp_path / "fw"
    replace_owned_dir(_generated(tmp_path, final, {"a.h": "new"}), final)
    old = tmp_path / ".fw.staging-999999999-z"
    old.mkdir()
    (old / "a.h").write_text("old")
    (old / "notes.txt").write_text("mine")
    (old / MANIFEST).write_text('{"files": ["a.h"]}')
    recover_interrupted(final)
    assert (final / "notes.txt").read_text() == "mine" and (final / "a.h").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fw"]


def test_a_manifest_cannot_make_the_tool_delete_outside_the_folder(tmp_path):
    final = tmp_path / "fw"
    final.mkdir()
    (tmp_path / "outside.txt").write_text("keep")
    (final / MANIFEST).write_text('{"files": ["../outside.txt", "/etc/hostname", "a.h"]}')
    (final / "a.h").write_text("1")
    replace_owned_dir(_generated(tmp_path, final, {"a.h": "2"}), final)
    assert (tmp_path / "outside.txt").read_text() == "keep" and (final / "a.h").read_text() == "2"
