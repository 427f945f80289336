"""Board presets (`boards.toml`), a user's own board file, and whether a model fits a board.

A board's fields become compiler flags, linker-script numbers and C strings, so every field is
validated here, strictly (identifiers and integers where code is generated from them), and a
wrong one is a one-line error naming the file, the field and the fix.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from .errors import NotDeployableError, PipelineError

BOARDS_PATH = Path(__file__).with_name("boards.toml")
_KEY = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_MACHINE = re.compile(r"[a-z0-9][a-z0-9.-]{0,63}")
_U32 = 1 << 32


@dataclass(frozen=True)
class Board:
    key: str
    name: str
    mcu: str
    cpu: str
    clock_mhz: int
    flash_origin: int
    flash_bytes: int
    ram_origin: int
    ram_bytes: int
    source: str
    fpu: str | None = None
    qemu_machine: str | None = None
    uart_base: int | None = None
    measure_on: str | None = None
    board_file: str | None = None  # where a user's board came from; None for a preset

    @property
    def is_cortex_m(self) -> bool:
        return self.cpu.startswith("cortex-m")

    @property
    def dwt_cycle_counter(self) -> bool:
        return bool(cpus()[self.cpu]["dwt_cycle_counter"])

    @property
    def toolchain(self) -> str:
        """The C compiler that builds for this board (the arm-none-eabi one for every Cortex-M)."""
        return cpus()[self.cpu].get("toolchain", "arm-none-eabi-gcc")

    def arm_flags(self) -> str:
        """gcc flags for the core and its float ABI: the same for the library and the app."""
        if not self.is_cortex_m:
            return ""
        flags = [f"-mcpu={self.cpu}", "-mthumb"]
        flags += ["-mfloat-abi=hard", f"-mfpu={self.fpu}"] if self.fpu else ["-mfloat-abi=soft"]
        return " ".join(flags)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


# Field -> (type, required, what it must be): one table for presets and user board files.
_FIELDS: dict[str, tuple[type, bool, str]] = {
    "name": (str, True, "a display name"),
    "mcu": (str, True, "the MCU's part name"),
    "cpu": (str, True, "a core: {cpus}"),
    "clock_mhz": (int, True, "the core clock in MHz, a whole number 1..10000"),
    "flash_origin": (int, True, "the flash (code) start address, e.g. 0x08000000"),
    "flash_bytes": (int, True, "the flash the application may use, in bytes"),
    "ram_origin": (int, True, "the RAM start address, e.g. 0x20000000"),
    "ram_bytes": (int, True, "the RAM the application may use, in bytes"),
    "source": (str, True, "where the numbers come from (datasheet URL and section)"),
    "fpu": (str, False, "the FPU for -mfpu (omit for soft float)"),
    "qemu_machine": (str, False, "a qemu-system-arm -M machine name"),
    "uart_base": (int, False, "the CMSDK UART0 base address for HIL over serial"),
    "measure_on": (str, False, "a QEMU preset with the same compiler flags"),
}


@cache
def _data() -> dict[str, Any]:
    return tomllib.loads(BOARDS_PATH.read_text())


def cpus() -> dict[str, dict[str, Any]]:
    return _data()["cpus"]


def defaults() -> dict[str, Any]:
    return dict(_data()["defaults"])


def _bad(problem: str, path, field: str, fix: str) -> PipelineError:
    return PipelineError(problem, path=path, field=field, fix=fix)


def parse_board(key: str, entry: dict[str, Any], *, path: str | Path, prefix: str = "") -> Board:
    """Validate one board table (a preset or a user's file); `prefix` names its TOML table."""
    where = str(path)
    if not _KEY.fullmatch(key):
        raise _bad(f"board key '{key}' is not a plain name", where, f"{prefix}key",
                   "use lower-case letters, digits, '.', '_' and '-' (e.g. my-board)")
    unknown = sorted(set(entry) - set(_FIELDS) - {"key"})
    if unknown:
        raise _bad(f"unknown field '{unknown[0]}'", where, prefix + unknown[0],
                   f"board fields are: {', '.join(_FIELDS)}")
    values: dict[str, Any] = {}
    for field, (kind, required, meaning) in _FIELDS.items():
        meaning = meaning.format(cpus=", ".join(cpus()))
        if field not in entry:
            if required:
                raise _bad("missing", where, prefix + field, f"add {field} = ... ({meaning})")
            continue
        value = entry[field]
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise _bad(f"expected a whole number, got {value!r}", where, prefix + field, meaning)
        if kind is str and not isinstance(value, str):
            raise _bad(f"expected a string, got {value!r}", where, prefix + field, meaning)
        if kind is str and (len(value) > 400 or not value.strip()):
            raise _bad("empty or longer than 400 characters", where, prefix + field, meaning)
        values[field] = value
    cpu = values["cpu"]
    if cpu not in cpus():
        raise _bad(f"unknown cpu '{cpu}'", where, prefix + "cpu", f"use one of: {', '.join(cpus())}")
    fpu = values.get("fpu")
    allowed = cpus()[cpu]["fpus"]
    if fpu is not None and fpu not in allowed:
        raise _bad(f"{cpu} has no FPU '{fpu}'", where, prefix + "fpu",
                   f"use one of: {', '.join(allowed)}" if allowed else f"omit fpu: {cpu} has none")
    if not 1 <= values["clock_mhz"] <= 10000:
        raise _bad(f"{values['clock_mhz']} MHz is not a clock", where, prefix + "clock_mhz", "a whole number 1..10000")
    for region in ("flash", "ram"):
        origin, length = values[f"{region}_origin"], values[f"{region}_bytes"]
        if not 0 <= origin < _U32 or origin % 4:
            raise _bad(f"{origin:#x} is not a 32-bit, 4-byte aligned address", where, f"{prefix}{region}_origin",
                       "the start address from the datasheet's memory map")
        if length < 1024 or origin + length > _U32:
            raise _bad(f"{length} bytes from {origin:#x} is not a memory region", where, f"{prefix}{region}_bytes",
                       "at least 1024 bytes, ending below 4 GiB")
    if "uart_base" in values and (not 0 <= values["uart_base"] < _U32 or values["uart_base"] % 4):
        raise _bad("not a 32-bit, 4-byte aligned address", where, prefix + "uart_base", "the UART's base address")
    for field in ("qemu_machine", "measure_on"):
        if field in values and not _MACHINE.fullmatch(values[field]):
            raise _bad(f"'{values[field]}' is not a plain name", where, prefix + field,
                       "lower-case letters, digits, '.' and '-'")
    return Board(key=key, **values, board_file=None if prefix else str(path))


@cache
def boards() -> dict[str, Board]:
    return {key: parse_board(key, entry, path=BOARDS_PATH, prefix=f"boards.{key}.")
            for key, entry in _data()["boards"].items()}


def get_board(board: str | Board) -> Board:
    """A preset by key; a Board (a user's board file, already loaded) is returned as it is."""
    if isinstance(board, Board):
        return board
    known = boards()
    if board not in known:
        import difflib

        close = difflib.get_close_matches(str(board).lower(), list(known), n=1, cutoff=0.6)
        guess = f"did you mean '{close[0]}'? Else " if close else ""
        raise PipelineError(f"unknown board '{board}'", field="--board",
                            fix=f"{guess}use one of: {', '.join(known)} (`invoke boards` lists them), "
                                "or describe yours in a TOML file and pass --board-file")
    return known[board]


def load_board_file(path: str | Path) -> Board:
    """A user's board: one TOML table with the preset fields (README, "Boards")."""
    path = Path(path)
    try:
        entry = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError("no such file", path=path, field="--board-file",
                            fix="pass the path of your board's TOML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"cannot read it: {exc}", path=path, field="--board-file",
                            fix="pass a readable UTF-8 TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise PipelineError(f"not valid TOML: {exc}", path=path, field="--board-file",
                            fix="see README, Boards, for an example board file") from None
    key = entry.get("key", path.stem)
    if not isinstance(key, str):
        raise PipelineError(f"expected a string, got {key!r}", path=path, field="key", fix="a plain name like my-board")
    board = parse_board(key, entry, path=path)
    if board.measure_on is not None and board.measure_on not in boards():
        raise PipelineError(f"unknown preset '{board.measure_on}'", path=path, field="measure_on",
                            fix=f"a QEMU preset with the same cpu and fpu: {', '.join(k for k, b in boards().items() if b.qemu_machine)}")
    return board


def resolve_board(board: str | None, board_file: str | Path | None) -> str | Board | None:
    """--board and --board-file are two ways to name one board: at most one of them."""
    if board and board_file:
        raise PipelineError("both --board and --board-file given", field="--board-file",
                            fix="use --board for a preset or --board-file for your own board, not both")
    if board_file:
        return load_board_file(board_file)
    if board:
        get_board(board)  # an unknown preset is refused now, before any work
    return board


def measuring_board(board: Board) -> Board | None:
    """The QEMU preset whose build runs for `board`: itself, its `measure_on`, or a preset with
    exactly the same compiler flags (then the arena measured there holds for this board)."""
    if board.qemu_machine:
        return board
    if board.measure_on:
        return get_board(board.measure_on)
    flags = board.arm_flags()
    return next((b for b in boards().values() if b.qemu_machine and flags and b.arm_flags() == flags), None)


# --- the fit ---------------------------------------------------------------------------------

def _part(capacity: int, need: int | None) -> dict[str, Any]:
    if need is None:
        return {"capacity_bytes": capacity, "needed_bytes": None, "headroom_bytes": None,
                "headroom_percent": None, "fits": None}
    free = capacity - need
    return {"capacity_bytes": capacity, "needed_bytes": need, "headroom_bytes": free,
            "headroom_percent": round(100 * free / capacity, 1), "fits": free >= 0}


def board_fit(board: Board, *, model_bytes: int, arena_bytes: int | None, io_bytes: int = 0,
              hil_bytes: int = 0) -> dict[str, Any]:
    """Before a cross build: the model plus the runtime's measured code size (boards.toml
    defaults) in flash; arena + static RAM + HIL buffers + heap + stack in RAM. An arena that
    was not measured is not counted as 0: the RAM need is then unknown and `fits` is None.
    `io_bytes` is kept for callers that count the I/O tensors (they live in the arena)."""
    d = defaults()
    static = d["runtime_ram_bytes"] + hil_bytes + d["heap_bytes"] + d["stack_bytes"]
    ram_need = None if arena_bytes is None else arena_bytes + static
    return {"board": board.key, "name": board.name, "measured_with": None,
            "flash": {**_part(board.flash_bytes, model_bytes + d["runtime_flash_bytes"]),
                      "model_bytes": model_bytes, "code_bytes": d["runtime_flash_bytes"],
                      "code_source": d["runtime_source"]},
            "ram": {**_part(board.ram_bytes, ram_need), "arena_bytes": arena_bytes,
                    "arena_measured": arena_bytes is not None, "static_bytes": d["runtime_ram_bytes"],
                    "hil_buffer_bytes": hil_bytes, "heap_bytes": d["heap_bytes"],
                    "stack_bytes": d["stack_bytes"], "io_bytes": io_bytes}}


def linked_fit(board: Board, *, text: int, data: int, bss: int, model_bytes: int, arena_bytes: int,
               elf: str) -> dict[str, Any]:
    """After a cross build, from `arm-none-eabi-size` of the linked image: flash is text+data
    (data's initial values live in flash), RAM is data+bss (the arena, HIL buffers, and the
    heap and stack the linker script reserves are all in bss)."""
    d = defaults()
    return {"board": board.key, "name": board.name, "measured_with": f"arm-none-eabi-size {elf}",
            "flash": {**_part(board.flash_bytes, text + data), "model_bytes": model_bytes,
                      "code_bytes": text + data - model_bytes, "code_source": "measured (linked image)",
                      "text_bytes": text, "data_bytes": data},
            "ram": {**_part(board.ram_bytes, data + bss), "arena_bytes": arena_bytes, "arena_measured": True,
                    "data_bytes": data, "bss_bytes": bss, "heap_bytes": d["heap_bytes"],
                    "stack_bytes": d["stack_bytes"]}}


def fits(fit: dict[str, Any] | None) -> bool | None:
    """True/False, or None when the RAM need is unknown (arena not measured)."""
    if fit is None:
        return True
    parts = (fit["flash"]["fits"], fit["ram"]["fits"])
    if False in parts:
        return False
    return None if None in parts else True


def fit_line(fit: dict[str, Any]) -> str:
    """One line for people: need/capacity and headroom, or why RAM is unknown."""
    def part(label: str, p: dict[str, Any]) -> str:
        if p["needed_bytes"] is None:
            return f"{label} unknown (arena not measured) of {p['capacity_bytes']} B"
        return f"{label} {p['needed_bytes']}/{p['capacity_bytes']} B ({p['headroom_percent']}% free)"

    how = "linked image" if fit.get("measured_with") else "estimate"
    verdict = {True: "", False: "  DOES NOT FIT", None: "  fit not known: measure the arena"}[fits(fit)]
    return f"{fit['name']}: {part('flash', fit['flash'])}, {part('RAM', fit['ram'])} [{how}]{verdict}"


def raise_if_too_big(fit: dict[str, Any], board: Board) -> None:
    problems = []
    for kind in ("flash", "ram"):
        p = fit[kind]
        if p["fits"] is False:
            problems.append(f"{kind} needs {p['needed_bytes']} B of {p['capacity_bytes']} B "
                            f"({-p['headroom_bytes']} B over)")
    if problems:
        raise NotDeployableError(f"the model does not fit {board.name}: {'; '.join(problems)}",
                                 field="--board-file" if board.board_file else "--board",
                                 fix="a smaller model (fewer/narrower layers), int8 everywhere, or a bigger board")
