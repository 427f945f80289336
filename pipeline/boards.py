"""Board presets (`boards.toml`) and whether a model fits one."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from .errors import PipelineError

BOARDS_PATH = Path(__file__).with_name("boards.toml")


@dataclass(frozen=True)
class Board:
    key: str
    name: str
    mcu: str
    cpu: str
    flash_bytes: int
    ram_bytes: int
    clock_mhz: int
    source: str
    fpu: str | None = None
    qemu_machine: str | None = None


@cache
def _data() -> dict[str, Any]:
    return tomllib.loads(BOARDS_PATH.read_text())


def boards() -> dict[str, Board]:
    return {key: Board(key=key, **entry) for key, entry in _data()["boards"].items()}


def defaults() -> dict[str, int]:
    return dict(_data()["defaults"])


def get_board(key: str) -> Board:
    known = boards()
    if key not in known:
        raise PipelineError(f"unknown board '{key}'", field="--board",
                            fix=f"use one of: {', '.join(known)} (`invoke boards` lists them)")
    return known[key]


def _headroom(capacity: int, need: int) -> dict[str, Any]:
    free = capacity - need
    return {"capacity_bytes": capacity, "needed_bytes": need, "headroom_bytes": free,
            "headroom_percent": round(100 * free / capacity, 1), "fits": free >= 0}


def board_fit(board: Board, *, model_bytes: int, arena_bytes: int | None, io_bytes: int) -> dict[str, Any]:
    d = defaults()
    flash_need = model_bytes + d["runtime_flash_bytes"]
    ram_need = (arena_bytes or 0) + io_bytes + d["stack_bytes"]
    return {"board": board.key, "name": board.name,
            "flash": {**_headroom(board.flash_bytes, flash_need),
                      "model_bytes": model_bytes, "runtime_estimate_bytes": d["runtime_flash_bytes"]},
            "ram": {**_headroom(board.ram_bytes, ram_need), "arena_bytes": arena_bytes,
                    "io_bytes": io_bytes, "stack_bytes": d["stack_bytes"],
                    "arena_measured": arena_bytes is not None}}
