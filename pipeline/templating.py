"""The one Jinja2 environment for everything the pipeline generates (C/C++, CMake, Markdown).

StrictUndefined turns a missing variable into an error instead of an empty string in a header.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"
_NOT_IDENT = re.compile(r"[^A-Za-z0-9_]")


def c_ident(name: str) -> str:
    """Any string -> a valid C identifier (never starting with a digit, never empty)."""
    ident = _NOT_IDENT.sub("_", name)
    if not ident or ident[0].isdigit():
        ident = f"m_{ident}"
    return ident


def c_string(text: str) -> str:
    """Escape for the inside of a C string literal (octal escapes: no hex run-on)."""
    out = []
    for ch in str(text).encode("utf-8"):
        c = chr(ch)
        if c in '"\\':
            out.append("\\" + c)
        elif 32 <= ch < 127 and c != "?":  # "?" could start a trigraph
            out.append(c)
        else:
            out.append(f"\\{ch:03o}")
    return "".join(out)


def _pct(value, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f}%"


def _human_bytes(n) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@cache
def environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters.update(c_ident=c_ident, c_string=c_string, pct=_pct, human_bytes=_human_bytes)
    return env


def render(template: str, **context) -> str:
    return environment().get_template(template).render(**context)
