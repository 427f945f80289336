"""pipeline.runtime.process.run_tool: external tools (compilers, firmware under QEMU) run to
their end, a limit, a flood, or the line that says they now serve."""

from __future__ import annotations

import sys
import time

import pytest

from pipeline.runtime.process import ToolFlood, ToolTimeout, run_tool


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_tools_output_and_exit_code_are_returned():
    output, code = run_tool(python("import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"), 30)
    assert code == 3 and "out" in output and "err" in output


def test_a_tool_that_serves_forever_is_stopped_at_its_ready_line_and_counts_as_exit_0():
    """The ready line comes in two writes (a board's UART gives no line at a time), after a
    line that only mentions it; then the tool would serve for an hour."""
    serve = ("import sys, time\n"
             "print('SELFTEST PASS 4/4; next: HIL: serving', flush=True)\n"
             "sys.stdout.write('HIL: ser'); sys.stdout.flush(); time.sleep(0.2)\n"
             "print('ving on UART0', flush=True); time.sleep(3600)\n")
    start = time.monotonic()
    output, code = run_tool(python(serve), 60, stop_at="HIL: serving")
    assert code == 0 and time.monotonic() - start < 30
    assert output.splitlines()[:2] == ["SELFTEST PASS 4/4; next: HIL: serving", "HIL: serving on UART0"]


def test_a_ready_line_printed_just_before_the_exit_still_counts_as_ready():
    output, code = run_tool(python("import sys; print('HIL: serving'); sys.exit(7)"), 30, stop_at="HIL: serving")
    assert code == 0 and output.startswith("HIL: serving")


def test_without_the_ready_line_the_exit_code_stands():
    output, code = run_tool(python("import sys; print('SELFTEST FAIL 1/4'); sys.exit(1)"), 30, stop_at="HIL: serving")
    assert code == 1 and "FAIL" in output


def test_a_tool_past_its_limit_is_killed_with_what_it_started(tmp_path):
    marker = tmp_path / "grandchild-alive"
    grandchild = f"import time, pathlib; time.sleep(1.5); pathlib.Path({str(marker)!r}).write_text('x')"
    code = f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', {grandchild!r}])\ntime.sleep(3600)\n"
    with pytest.raises(ToolTimeout):
        run_tool(python(code), 0.5, stop_at="never")
    time.sleep(2)
    assert not marker.exists(), "the tool's own child outlived the time limit"


def test_a_flooding_tool_is_killed():
    with pytest.raises(ToolFlood):
        run_tool(python("import sys\nwhile True: sys.stdout.write('x' * 65536)"), 60, max_output=1 << 20)
