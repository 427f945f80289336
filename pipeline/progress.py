"""One progress helper for long work (calibration, arena search, evaluation): a bar on a
terminal, plain lines in CI logs, nothing at all when the work is quick."""

from __future__ import annotations

import time

from .runtime.tf import real_stderr

_BAR = 30
_QUIET_FOR_S = 1.0  # work that finishes sooner shows nothing
_LINE_STEPS = (25, 50, 75)  # percent marks printed when stderr is not a terminal


class Progress:
    def __init__(self, label: str, total: int, stream=None):
        self.label = label
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream or real_stderr()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self._shown = False
        self._next_mark = 0

    def __enter__(self) -> Progress:
        return self

    def advance(self, n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        if time.perf_counter() - self.start < _QUIET_FOR_S:
            return
        pct = 100 * self.done // self.total
        if self.tty:
            filled = _BAR * self.done // self.total
            self.stream.write(f"\r  {self.label} [{'#' * filled}{'.' * (_BAR - filled)}] {pct:3d}%")
            self.stream.flush()
            self._shown = True
        else:
            while self._next_mark < len(_LINE_STEPS) and pct >= _LINE_STEPS[self._next_mark]:
                self.stream.write(f"  {self.label}: {_LINE_STEPS[self._next_mark]}% ({self.done}/{self.total})\n")
                self._next_mark += 1

    def __exit__(self, *exc) -> None:
        if self._shown:
            self.stream.write("\r" + " " * (len(self.label) + _BAR + 12) + "\r")
            self.stream.flush()
