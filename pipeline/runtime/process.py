"""Child processes the pipeline runs (interpreters that can abort, compilers, firmware): how their
end is named for a user."""

from __future__ import annotations

import os


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


def run_tool(argv: list[str], timeout_s: float, *, cwd=None, max_output: int = MAX_TOOL_OUTPUT_BYTES,
             stop_at: str | None = None) -> tuple[str, int]:
    """Run an external tool with stdout and stderr in a file (not pipes: a daemon child that
    keeps them open must not make us wait past the limit), in its own session, so a timeout,
    a flood or Ctrl-C kills it and everything it started. Returns (output, exit code); the
    output is decoded as UTF-8 with replacement (tools print what they like). `stop_at`: a
    tool that serves forever once ready (firmware with a HIL server) is stopped at the first
    line that starts with it, which counts as exit 0."""
    import subprocess
    import tempfile
    import time

    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=cwd)
        deadline = time.monotonic() + timeout_s
        watch = _LineWatch(log, stop_at.encode()) if stop_at else None
        stopped = False
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise ToolTimeout()
                size = os.fstat(log.fileno()).st_size
                if size > max_output:
                    raise ToolFlood()
                if watch and watch.seen(size):
                    stopped = True
                    break
                time.sleep(0.02)
        except BaseException:
            _kill_session(proc.pid)
            proc.wait()
            raise
        _kill_session(proc.pid)  # leftovers of a tool that exited but left children running
        proc.wait()
        log.seek(0)
        raw = log.read(max_output + 1)
    if len(raw) > max_output:
        raise ToolFlood()
    if not stopped and watch and watch.seen(len(raw), raw):  # printed just before it exited
        stopped = True
    return raw.decode("utf-8", "replace"), 0 if stopped else proc.returncode


class _LineWatch:
    """Whether a line starting with `prefix` has appeared in a growing log file, reading each
    byte once."""

    def __init__(self, log, prefix: bytes):
        self.log, self.prefix = log, prefix
        self.scanned = 0
        self.partial = b""

    def seen(self, size: int, whole: bytes | None = None) -> bool:
        if whole is None:
            if size <= self.scanned:
                return False
            new = os.pread(self.log.fileno(), size - self.scanned, self.scanned)
        else:
            new = whole[self.scanned:]
        self.scanned += len(new)
        lines = (self.partial + new).split(b"\n")
        self.partial = lines.pop()  # not ended yet: looked at again with the rest of it
        return any(line.startswith(self.prefix) for line in lines) or self.partial.startswith(self.prefix)


def _kill_session(pid: int) -> None:
    import os
    import signal

    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
