"""The stages, in the order `invoke deploy` runs them: adding a stage is one entry here plus its
module (which declares its `STAGE`: name, cache key, outputs, when it applies, its run).

A stage's module is imported when the stage is first looked up: a single-stage task (`invoke
check`) loads only its own stage, not every stage's imports (numpy, the runtimes, Jinja2), which
is most of an `invoke` start."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from .base import Stage

_MODULES = {"quantize": "quantize", "check": "check", "compile": "compile", "firmware": "firmware",
            "verify": "verify", "diagnose": "diagnose", "hil": "hil"}


class _Registry(Mapping[str, Stage]):
    def __getitem__(self, name: str) -> Stage:
        stage = importlib.import_module(f"{__name__}.{_MODULES[name]}").STAGE
        assert stage.name == name, f"{_MODULES[name]}.STAGE is named {stage.name!r}"
        return stage

    def __iter__(self) -> Iterator[str]:
        return iter(_MODULES)

    def __len__(self) -> int:
        return len(_MODULES)


REGISTRY: Mapping[str, Stage] = _Registry()
