"""One exception family for everything a user can get wrong or a tool can refuse.

`tasks.py` turns a `PipelineError` into a one-line message on stderr and its `exit_code`;
anything else that escapes is a bug in this package and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path

# Exit codes are part of the task contract (DESIGN.md).
EXIT_NOT_DEPLOYABLE = 1
EXIT_BAD_INPUT = 2


class PipelineError(Exception):
    """A problem the user can fix: says where (file, field), what is wrong, and the fix."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, problem: str, *, fix: str | None = None, path: str | Path | None = None,
                 field: str | None = None):
        self.problem = problem
        self.fix = fix
        self.path = str(path) if path is not None else None
        self.field = field
        super().__init__(self.message)

    @property
    def message(self) -> str:
        where = ": ".join(part for part in (self.path, self.field) if part)
        text = f"{where}: {self.problem}" if where else self.problem
        if self.fix:
            text += f" (fix: {self.fix})"
        return text


class NotDeployableError(PipelineError):
    """The input is well-formed but the model cannot run on the asked target."""

    exit_code = EXIT_NOT_DEPLOYABLE


class ModelFormatError(PipelineError):
    """A file that claims to be a model but cannot be read as one."""
