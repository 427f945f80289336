"""The console's one-line summaries (pipeline.console)."""

from __future__ import annotations

from pipeline.console import build_line


def test_a_build_that_never_ran_says_where_its_arena_was_measured():
    """A link-only board's image never runs here: its smallest arena comes from the QEMU preset
    with the same flags, and the line says so instead of passing it off as its own."""
    line = build_line({"built": True, "ran": False, "reason": "no QEMU machine for this board",
                       "smallest_arena_bytes": 9932, "arena_measured_on": "qemu-mps2-an386",
                       "size": {"text": 1, "data": 2, "bss": 3}})
    assert line.startswith("built, not run (no QEMU machine for this board)")
    assert "smallest arena 9932 B (measured on qemu-mps2-an386)" in line
    own = build_line({"built": True, "selftest": "SELFTEST PASS 4/4", "smallest_arena_bytes": 9932})
    assert own == "SELFTEST PASS 4/4, smallest arena 9932 B"
