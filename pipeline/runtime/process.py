"""Child processes the pipeline runs (interpreters that can abort, compilers, firmware): how their
end is named for a user."""

from __future__ import annotations


def signal_name(code: int) -> str:
    import signal

    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"


MAX_TOOL_OUTPUT_BYTES = 64 << 20  # a compiler's log is kilobytes; more is a runaway tool


class ToolTimeout(Exception):
    """The tool ran past its time limit and was killed (with everything it started)."""


class ToolFlood(Exception):
    """The tool printed more than MAX_TOOL_OUTPUT_BYTES and was killed."""


def run_tool(argv: list[str], timeout_s: float, *, cwd=None,
             max_output: int = MAX_TOOL_OUTPUT_BYTES) -> tuple[str, int]:
    """Run an external tool with stdout and stderr in a file (not pipes: a daemon child that
    keeps them open must not make us wait past the limit), in its own session, so a timeout,
    a flood or Ctrl-C kills it and everything it started. Returns (output, exit code); the
    output is decoded as UTF-8 with replacement (tools print what they like)."""
    import os
    import subprocess
    import tempfile
    import time

    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=cwd)
        deadline = time.monotonic() + timeout_s
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise ToolTimeout()
                if os.fstat(log.fileno()).st_size > max_output:
                    raise ToolFlood()
                time.sleep(0.02)
        except BaseException:
            _kill_session(proc.pid)
            proc.wait()
            raise
        _kill_session(proc.pid)  # leftovers of a tool that exited but left children running
        log.seek(0)
        raw = log.read(max_output + 1)
    if len(raw) > max_output:
        raise ToolFlood()
    return raw.decode("utf-8", "replace"), proc.returncode


def _kill_session(pid: int) -> None:
    import os
    import signal

    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
