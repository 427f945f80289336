"""Board presets and user board files: every field validated (they become compiler flags,
linker-script numbers and C strings), clear errors, and a fit that never counts an unmeasured
arena as zero."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import ROOT, invoke_cmd
from pipeline.boards import (board_fit, boards, fit_line, fits, get_board, load_board_file, measuring_board,
                             resolve_board)
from pipeline.errors import PipelineError

GOOD = """name = "My STM32H7 board"
mcu = "STM32H743ZI"
cpu = "cortex-m7"
fpu = "fpv5-d16"
clock_mhz = 480
flash_origin = 0x08000000
flash_bytes = 2097152
ram_origin = 0x24000000
ram_bytes = 524288
source = "RM0433 memory map: flash at 0x08000000, AXI SRAM at 0x24000000"
"""


def test_every_preset_has_a_memory_map_and_a_source():
    presets = boards()
    for key in ("qemu-mps2-an385", "qemu-mps2-an386", "qemu-mps2-an500", "qemu-mps2-an505", "qemu-mps3-an547"):
        assert presets[key].qemu_machine == key.removeprefix("qemu-")
    for b in presets.values():
        assert b.flash_bytes >= 1024 and b.ram_bytes >= 1024 and b.source.startswith("http")
        if b.is_cortex_m:
            assert b.arm_flags().startswith(f"-mcpu={b.cpu} -mthumb")
            runner = measuring_board(b)
            assert runner is not None and runner.qemu_machine, f"{b.key}: its arena is measured under QEMU"
    assert presets["qemu-mps3-an547"].arm_flags() == "-mcpu=cortex-m55 -mthumb -mfloat-abi=hard -mfpu=auto"
    assert presets["rpi-pico"].arm_flags() == "-mcpu=cortex-m0plus -mthumb -mfloat-abi=soft"


def test_a_board_file_loads_with_its_path_and_key(tmp_path):
    path = tmp_path / "my-h7.toml"
    path.write_text(GOOD)
    b = load_board_file(path)
    assert b.key == "my-h7" and b.board_file == str(path) and b.ram_origin == 0x24000000
    assert get_board(b) is b and measuring_board(b).key == "qemu-mps2-an500"  # same flags
    assert resolve_board(None, path) == b and resolve_board("rpi-pico", None) == "rpi-pico"


@pytest.mark.parametrize("edit, field, words", [
    (('cpu = "cortex-m7"', 'cpu = "cortex-m7 -fplugin=evil.so"'), "cpu", "unknown cpu"),
    (('fpu = "fpv5-d16"', 'fpu = "fpv4-sp-d16"'), "fpu", "has no FPU"),
    (("flash_origin = 0x08000000", 'flash_origin = "0x08000000"'), "flash_origin", "whole number"),
    (("flash_origin = 0x08000000", "flash_origin = 0x08000002"), "flash_origin", "aligned"),
    (("ram_bytes = 524288", "ram_bytes = 0"), "ram_bytes", "not a memory region"),
    (("ram_origin = 0x24000000", "ram_origin = 0xFFFFF000"), "ram_bytes", "not a memory region"),
    (("clock_mhz = 480", "clock_mhz = true"), "clock_mhz", "whole number"),
    (('name = "My STM32H7 board"\n', ""), "name", "missing"),
    (("clock_mhz = 480", "clock_mhz = 480\nqemu_machine = \"mps2; rm -rf /\""), "qemu_machine", "plain name"),
    (("clock_mhz = 480", "clock_mhz = 480\nflash_size = 3"), "flash_size", "unknown field"),
    (("clock_mhz = 480", "clock_mhz = 480\nmeasure_on = \"rpi-pico2\""), "measure_on", "unknown preset"),
])
def test_a_wrong_board_file_names_the_file_the_field_and_the_fix(tmp_path, edit, field, words):
    path = tmp_path / "board.toml"
    path.write_text(GOOD.replace(*edit))
    with pytest.raises(PipelineError) as info:
        load_board_file(path)
    err = info.value
    assert err.path == str(path) and err.field == field and words in err.problem and err.fix
    assert err.exit_code == 2


def test_unreadable_board_files(tmp_path):
    with pytest.raises(PipelineError, match="no such file"):
        load_board_file(tmp_path / "absent.toml")
    (tmp_path / "bad.toml").write_text("name = [unclosed\n")
    with pytest.raises(PipelineError, match="not valid TOML"):
        load_board_file(tmp_path / "bad.toml")
    (tmp_path / "Bad Name.toml").write_text(GOOD)
    with pytest.raises(PipelineError, match="not a plain name") as info:
        load_board_file(tmp_path / "Bad Name.toml")
    assert info.value.field == "key"
    with pytest.raises(PipelineError, match="both --board and --board-file"):
        resolve_board("rpi-pico", tmp_path / "absent.toml")


def test_an_unmeasured_arena_is_not_counted_as_zero():
    b = boards()["arduino-nano-33-ble-sense"]
    unknown = board_fit(b, model_bytes=20_000, arena_bytes=None)
    assert unknown["ram"]["fits"] is None and unknown["ram"]["needed_bytes"] is None and fits(unknown) is None
    assert "unknown (arena not measured)" in fit_line(unknown) and "fit not known" in fit_line(unknown)
    known = board_fit(b, model_bytes=20_000, arena_bytes=10_000)
    assert fits(known) is True and known["ram"]["needed_bytes"] > 10_000 + 8192  # + stack, heap, statics
    assert known["flash"]["needed_bytes"] >= 20_000 + 90_000, "measured runtime code, not 64 KiB"
    assert "linked image" not in fit_line(known) and "[estimate]" in fit_line(known)


def test_a_hostile_board_name_is_escaped_in_generated_code(tmp_path, demo_int8):
    from pipeline.stages.firmware import generate_firmware

    path = tmp_path / "evil.toml"
    path.write_text(GOOD.replace('name = "My STM32H7 board"',
                                 'name = "x\\"\\n#error injected */ \\\\ ??= $(rm) ${X};"'))
    board = load_board_file(path)
    model = tmp_path / "m" / "model_int8.tflite"
    model.parent.mkdir()
    model.write_bytes(demo_int8.quantized_model.read_bytes())
    out = generate_firmware(model, board=board, smallest_arena=(7000, "a test")).output_dir
    for rel in ("board/cortexm/board_config.h", "board/cortexm/linker.ld", "board/cortexm/startup.c",
                "cmake/arm-none-eabi.cmake", "CMakeLists.txt", "model_arena.h"):
        text = (out / rel).read_text()
        assert not any(line.startswith("#error") for line in text.splitlines()), rel
    config = (out / "board" / "cortexm" / "board_config.h").read_text()
    assert '#define BOARD_NAME "x\\"\\012#error injected */ \\\\ \\077\\077= $(rm) ${X};"' in config


def test_invoke_with_a_board_file_and_with_a_wrong_one(tmp_path, demo_int8):
    good = tmp_path / "h7.toml"
    good.write_text(GOOD)
    ok = subprocess.run(invoke_cmd() + ["check", "--model", str(demo_int8.quantized_model), "--target", "tflm",
                                        "--board-file", str(good), "--json"], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["board"]["name"] == "My STM32H7 board"
    fw = subprocess.run(invoke_cmd() + ["firmware", "--model", str(demo_int8.quantized_model), "--out",
                                        str(tmp_path / "fw"), "--board-file", str(good)],
                        cwd=ROOT, capture_output=True, text=True)
    assert fw.returncode == 0, fw.stderr
    assert "My STM32H7 board: flash" in fw.stdout
    assert "ORIGIN = 0x24000000" in (tmp_path / "fw" / "board" / "cortexm" / "linker.ld").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace('cpu = "cortex-m7"', 'cpu = "cortex-m9"'))
    for task in ("check", "firmware"):
        proc = subprocess.run(invoke_cmd() + [task, "--model", str(demo_int8.quantized_model), "--board-file", str(bad)],
                              cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert f"{bad}: cpu: unknown cpu 'cortex-m9'" in proc.stderr and "cortex-m4" in proc.stderr


def test_an_unknown_board_close_to_a_preset_is_answered_with_it():
    from pipeline.boards import get_board

    with pytest.raises(PipelineError, match="unknown board 'arduino-nano'") as info:
        get_board("arduino-nano")
    assert info.value.fix.startswith("did you mean 'arduino-nano-33-ble-sense'?")
    with pytest.raises(PipelineError) as far:
        get_board("uno")
    assert "did you mean" not in far.value.fix and "qemu-mps2-an386" in far.value.fix
