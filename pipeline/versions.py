"""Installed tool versions, for reports and stage cache keys (no imports of the tools)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_version(*names: str) -> str:
    """`name version` of the first installed distribution among `names` (alternatives such as
    tensorflow-cpu / tensorflow), or "not installed"."""
    for name in names:
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            continue
    return "not installed"
