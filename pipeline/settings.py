"""The settings a team commits once (`pipeline:` in invoke.yaml, `INVOKE_PIPELINE_<KEY>`
variables): one typed table, and the checks that turn a malformed file or variable into one
clear error instead of a traceback from deep inside the configuration loader.

Invoke casts an environment variable to the type of the value it overrides and raises on a
mismatch, and it merges an invoke.yaml whose `pipeline:` is not a mapping with an exception of
its own; both happen before any task runs. So the files and variables are validated first,
here, and the defaults handed to Invoke are all None (a string is then taken as it is and
parsed by `value`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from .errors import PipelineError

# key: (type, default). The one table of configurable settings; tasks read them through `value`.
SETTINGS: dict[str, tuple[type, Any]] = {
    "model": (str, "demo"), "out": (str, "build"), "samples": (int, 200), "data": (str, None),
    "eval_data": (str, None), "io_type": (str, None), "name": (str, None), "target": (str, "all"),
    "board": (str, None), "board_file": (str, None), "compiler": (str, None), "port": (str, None),
    "baud": (int, 115200), "mode": (str, "int8"),
}
ENV_PREFIX = "INVOKE_PIPELINE"
FIX = "see README.md, 'Configuration, committed once'"


def invoke_defaults() -> dict[str, None]:
    return {key: None for key in SETTINGS}


def default(key: str):
    return SETTINGS[key][1]


def value(key: str, raw: Any, source: str) -> Any:
    """A setting as its type; `source` names where it came from (an option, invoke.yaml, a
    variable) for the error."""
    kind = SETTINGS[key][0]
    if raw is None:
        return None
    if kind is int:
        if isinstance(raw, bool) or isinstance(raw, float) and not math.isfinite(raw):
            raise PipelineError(f"expected a whole number, got {raw!r}", field=source, fix=FIX)
        try:
            number = int(raw) if not isinstance(raw, float) or raw.is_integer() else None
        except (TypeError, ValueError):
            number = None
        if number is None:
            raise PipelineError(f"expected a whole number, got {raw!r}", field=source, fix=FIX)
        return number
    if not isinstance(raw, str):
        raise PipelineError(f"expected text, got {type(raw).__name__} {raw!r}", field=source, fix=FIX)
    return raw


def check_file(path: Path) -> None:
    """An invoke.yaml (or a -f file) that Invoke will read: valid YAML, a mapping, and its
    `pipeline:` a mapping of known settings of the right types."""
    import yaml

    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PipelineError(f"not UTF-8 text (byte {exc.start})", path=path, field="invoke.yaml",
                            fix="save the file as UTF-8") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PipelineError(f"not valid YAML{at}: {problem}", path=path, field="invoke.yaml",
                            fix="indent with spaces (YAML forbids tabs) and close every bracket") from None
    except OSError as exc:
        raise PipelineError(f"cannot read: {exc.strerror or exc}", path=path, field="invoke.yaml") from None
    if data is None:
        return
    if not isinstance(data, dict):
        raise PipelineError(f"the file is a {type(data).__name__}, not a mapping of settings", path=path,
                            field="invoke.yaml", fix="write `pipeline:` with the settings below it")
    if "pipeline" not in data:
        return
    section = data["pipeline"]
    if not isinstance(section, dict):
        raise PipelineError(f"pipeline: is {type(section).__name__} {section!r}, not a mapping", path=path,
                            field="pipeline", fix="indent the settings under `pipeline:` (e.g. `  target: tflm`)")
    for key, raw in section.items():
        if key not in SETTINGS:
            raise PipelineError(f"unknown setting pipeline.{key}", path=path, field=str(key),
                                fix=f"use one of {', '.join(SETTINGS)}")
        value(key, raw, f"pipeline.{key}")


def check_environment(environ=os.environ) -> None:
    for name, raw in environ.items():
        if name != ENV_PREFIX and not name.startswith(ENV_PREFIX + "_"):
            continue
        key = name[len(ENV_PREFIX) + 1:].lower()
        if key not in SETTINGS:
            raise PipelineError(f"unknown setting {name}={raw!r}", field=name,
                                fix=f"use {ENV_PREFIX}_<SETTING> with one of {', '.join(k.upper() for k in SETTINGS)}")
        if SETTINGS[key][0] is int:
            value(key, raw, name)


def project_config(tasks_dir: Path) -> Path | None:
    """The invoke.yaml Invoke reads for a tasks.py in `tasks_dir` (it tries these suffixes)."""
    for suffix in (".yaml", ".yml", ".json", ".py"):
        candidate = tasks_dir / f"invoke{suffix}"
        if candidate.is_file():
            return candidate
    return None


def check_cli(argv: list[str], cwd: Path, project_dir: Path | None = None) -> None:
    """Before Invoke parses anything: the runtime file (-f) must exist and be valid, the
    project's invoke.yaml (next to the tasks.py Invoke finds from -r or the current folder)
    valid, and the INVOKE_PIPELINE_* variables known and parseable."""
    runtime, root = None, None
    for i, arg in enumerate(argv):
        for flags, setter in ((("-f", "--config"), "runtime"), (("-r", "--search-root"), "root")):
            for flag in flags:
                if arg == flag and i + 1 < len(argv):
                    found = argv[i + 1]
                elif arg.startswith(flag + "="):
                    found = arg.split("=", 1)[1]
                else:
                    continue
                if setter == "runtime":
                    runtime = found
                else:
                    root = found
    if runtime is not None:
        path = Path(runtime)
        if not path.is_file():
            raise PipelineError("no such configuration file", path=path, field="-f",
                                fix="check the path given to -f/--config")
        if path.suffix in (".yaml", ".yml"):
            check_file(path)
    if project_dir is None:  # plain invoke: the invoke.yaml beside the tasks.py it will find
        start = (cwd / root) if root else cwd
        project_dir = next((f for f in (start, *start.parents) if (f / "tasks.py").is_file()), None)
    config = project_config(project_dir) if project_dir else None
    if config is not None and config.suffix in (".yaml", ".yml"):
        check_file(config)
    check_environment()


# The range of every numeric option, checked where the option is parsed (tasks.py), before any
# work: (lowest, highest, whether the lowest itself is allowed).
OPTION_RANGES: dict[str, tuple[float, float, bool]] = {
    "--samples": (1, 100_000, True),
    "--vectors": (1, 1_000, True),
    "--tolerance": (0, 65_535, True),
    "--max-lsb": (0, 65_535, True),
    "--min-agreement": (0.0, 1.0, True),
    "--max-drop": (0.0, 100.0, True),
    "--max-rel-error": (0.0, 1_000.0, True),
    "--max-clipped": (0.0, 1.0, True),
    "--max-auc-drop": (0.0, 1.0, True),
    "--verify-samples": (1, 100_000, True),
    "--timeout": (0.0, 86_400.0, False),
    "--retries": (0, 100, True),
    "--baud": (50, 10_000_000, True),
    "--num-segments": (1, 64, True),
    "--delegate-search-step": (1, 100_000, True),
    "--timeout-sec": (1, 86_400, True),
    "--min-runtime-version": (1, 100, True),
}


def in_range(option: str, number: float) -> str | None:
    """Why `number` is not acceptable for `option`, or None."""
    if not math.isfinite(number):
        return f"expected a finite number, got {number}"
    low, high, inclusive = OPTION_RANGES.get(option, (-math.inf, math.inf, True))
    if number < low or (number == low and not inclusive):
        return f"must be {'at least' if inclusive else 'more than'} {low:g}, got {number:g}"
    if number > high:
        return f"must be at most {high:g}, got {number:g}"
    return None
