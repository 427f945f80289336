"""The one Jinja2 environment for everything the pipeline generates (C/C++, CMake, Markdown).

StrictUndefined turns a missing variable into an error instead of an empty string in a header.
"""

from __future__ import annotations

import re
from functools import cache

from markupsafe import Markup

from . import PROJECT_DIR

TEMPLATE_DIR = PROJECT_DIR / "templates"
_NOT_IDENT = re.compile(r"[^A-Za-z0-9_]")


def c_ident(name: str) -> str:
    """Any string -> a valid C identifier (never starting with a digit, never empty)."""
    ident = _NOT_IDENT.sub("_", name)
    if not ident or ident[0].isdigit():
        ident = f"m_{ident}"
    return ident


def _text(value) -> str:
    """`value` as valid Unicode: a file name that is not UTF-8 arrives with surrogate escapes
    (os.fsdecode); those become U+FFFD instead of failing when the output is encoded."""
    return str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def c_string(text: str) -> Markup:
    """Escape for the inside of a C string literal (octal escapes: no hex run-on). Bytes that are
    not UTF-8 keep their exact value."""
    out = []
    for ch in str(text).encode("utf-8", "surrogateescape"):
        c = chr(ch)
        if c in '"\\':
            out.append("\\" + c)
        elif 32 <= ch < 127 and c != "?":  # "?" could start a trigraph
            out.append(c)
        else:
            out.append(f"\\{ch:03o}")
    return Markup("".join(out))


def comment_text(text: str) -> Markup:
    """Text for one line of a `//`, `/* */` or `#` comment: no line breaks (they would end the
    comment: the rest of a file name would become code), no backslash (it splices the next
    line into a `//` comment), no `*/`, and no invisible characters: a bidi control (U+202E)
    reorders how the code around it reads (gcc -Werror=bidi-chars refuses it), so each one is
    written as its code point, `<U+202E>`."""
    cleaned = "".join(_code_point(ch) if _is_invisible(ch) else "/" if ch == "\\" else ch for ch in _text(text))
    return Markup(cleaned.replace("*/", "*_/").replace("??", "?_?"))


def cmake_string(text: str) -> Markup:
    """Escape for the inside of a quoted CMake argument: no variable references, list
    separators or quotes from the data, one line, invisible characters as `<U+XXXX>`."""
    out = []
    for ch in _text(text):
        if ch in '\\"$;@':
            out.append("\\" + ch)
        elif _is_invisible(ch):
            out.append(_code_point(ch))
        else:
            out.append(ch)
    return Markup("".join(out))


def c_float(value) -> Markup:
    """A float literal for C; a NaN or infinite value is refused, never written as `nanf`."""
    import math

    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"not a finite number for generated C: {value!r}")
    return Markup(f"{value!r}f")


_MD_SPECIAL = str.maketrans({"\\": "\\\\", "[": "\\[", "]": "\\]", "|": "\\|",
                             "&": "&amp;", "<": "&lt;", ">": "&gt;"})
# Inside an inline HTML element Markdown still parses links, code spans and escapes: every
# character that could start one is an entity too.
_HTML_CODE = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "|": "&#124;", "[": "&#91;", "]": "&#93;",
                            "`": "&#96;", "\\": "&#92;", "*": "&#42;", "_": "&#95;", "!": "&#33;"})


def _one_line(value) -> str:
    """One line of visible text: breaks become spaces, other invisible characters (bidi
    controls that reorder the rendered line, zero-width ones) `<U+XXXX>`."""
    return "".join(" " if _is_break(ch) else _code_point(ch) if _is_invisible(ch) else ch for ch in _text(value))


def md_text(value) -> Markup:
    """Plain text in Markdown (prose or a table cell): no raw HTML (entities), no links or
    images, no cell or line breaks from the data. Backticks stay: a code span cannot break out
    of its cell."""
    return Markup(_one_line(value).translate(_MD_SPECIAL))


def md_code(value) -> Markup:
    """`value` as one inline code span, whatever it holds: fenced with a longer run of backticks
    than it contains (CommonMark), `|` escaped (GFM tables split cells before code spans). Text
    with `<`, `>` or `&` becomes an HTML <code> element with entities instead, so no renderer
    (or reader grepping the file) ever meets a raw tag."""
    text = _one_line(value)
    if any(c in text for c in "<>&"):
        return Markup(f"<code>{text.translate(_HTML_CODE)}</code>")
    text = text.replace("|", "\\|")
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or (text.startswith(" ") and text.strip()) else ""
    return Markup(f"{fence}{pad}{text}{pad}{fence}")


def _is_break(ch: str) -> bool:
    import unicodedata

    return unicodedata.category(ch) in ("Cc", "Zl", "Zp")


# Characters that print nothing themselves but change the text around them or end a line:
# controls (Cc), format characters (Cf: the bidi embeddings and overrides U+202A-U+202E and
# isolates U+2066-U+2069, zero-width ones), private use (Co), unassigned (Cn), surrogates
# (Cs), line and paragraph separators (Zl, Zp). Unicode categories, not a list of code points,
# so a new control is covered as soon as Python's Unicode database knows it.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cn", "Cs", "Zl", "Zp"})


def _is_invisible(ch: str) -> bool:
    import unicodedata

    return unicodedata.category(ch) in _INVISIBLE_CATEGORIES


def _code_point(ch: str) -> str:
    return f"<U+{ord(ch):04X}>"


# What a value may contain when a C/C++/CMake template prints it without an escaping filter:
# anything else (quotes, backslashes, `$`, `*`, `;`, line breaks, non-ASCII) must go through
# the filter for its context. A forgotten filter is then a loud error, never an injection.
_CODE_SAFE = re.compile(r"[A-Za-z0-9 _.,:+=/()\[\]{}<>@%'!&|~^#-]*")


def _finalize_code(value):
    if isinstance(value, Markup) or not isinstance(value, str):
        if isinstance(value, (list, tuple)):
            for item in value:
                _finalize_code(item)
        return value
    if not _CODE_SAFE.fullmatch(value):
        raise ValueError(f"unescaped value in generated code: {value!r} (use c_string, comment_text or "
                         "cmake_string in the template)")
    return value


def _finalize_markdown(value):
    if isinstance(value, Markup) or value is None or isinstance(value, (bool, int, float)):
        return value
    return md_text(value)


# Characters XML 1.0 forbids even as references: a name holding one would leave the SVG malformed
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _finalize_svg(value):
    """Autoescaping makes `<&>"'` safe; what XML cannot hold at all becomes U+FFFD."""
    if isinstance(value, str):
        cleaned = _NOT_XML.sub("\ufffd", value)
        return Markup(cleaned) if isinstance(value, Markup) else cleaned
    return value


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


_FILTERS = dict(c_ident=c_ident, c_string=c_string, comment_text=comment_text, cmake_string=cmake_string,
                c_float=c_float, md_code=md_code, md_text=md_text, pct=_pct, human_bytes=_human_bytes)


@cache
def environment(kind: str = "code"):
    """`code` (C/C++/CMake): values print as they are but must be safe there or pass an escaping
    filter; `markdown`: every value is Markdown-escaped unless a filter already made it safe;
    `svg`: XML autoescaping."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=kind == "svg",
        finalize={"code": _finalize_code, "markdown": _finalize_markdown, "svg": _finalize_svg}.get(kind),
    )
    env.filters.update(_FILTERS)
    return env


_KIND_BY_SUFFIX = {".md.j2": "markdown", ".svg.j2": "svg"}


def render(template: str, **context) -> str:
    kind = next((k for suffix, k in _KIND_BY_SUFFIX.items() if template.endswith(suffix)), "code")
    return environment(kind).get_template(template).render(**context)
