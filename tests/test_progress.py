from __future__ import annotations

import io

import pipeline.console as progress_module
from pipeline.console import Progress


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_quick_work_shows_nothing():
    out = io.StringIO()
    with Progress("x", 10, stream=out) as p:
        for _ in range(10):
            p.advance()
    assert out.getvalue() == ""


def test_plain_lines_when_not_a_terminal(monkeypatch):
    monkeypatch.setattr(progress_module, "_QUIET_FOR_S", 0.0)
    out = io.StringIO()
    with Progress("calibrating", 8, stream=out) as p:
        for _ in range(8):
            p.advance()
    assert out.getvalue().splitlines() == ["  calibrating: 25% (2/8)", "  calibrating: 50% (4/8)",
                                           "  calibrating: 75% (6/8)"]


def test_bar_on_a_terminal_is_cleared_at_the_end(monkeypatch):
    monkeypatch.setattr(progress_module, "_QUIET_FOR_S", 0.0)
    out = FakeTTY()
    with Progress("arena", 4, stream=out) as p:
        for _ in range(4):
            p.advance()
    text = out.getvalue()
    # rich draws the bar in place (carriage return, erase line) and erases it when done
    assert "\r\x1b[2K  arena " in text and "100%" in text and text.endswith("\x1b[2K")
