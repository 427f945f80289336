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
