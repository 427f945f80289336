"""Drive Google's `edgetpu_compiler` when it is installed, and explain what it did.

The compiler only exists for x86-64 Debian/Ubuntu (Coral's package repository). Without it the
stage is a clear skip and `invoke check`'s prediction stands in. With it: run it into a staging
directory, parse its stdout and `.log` (every line either understood or kept as unknown), read
the compiled model back, compare with the prediction op by op, and only then replace
`build/<name>/edgetpu/` as a whole.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import TOOL_NAME, __version__
from ..errors import NotDeployableError, PipelineError
from ..fileio import ensure_replaceable, replacing_owned_dir
from ..layers import map_layers
from ..runtime.edgetpu import edgetpu_device_status, run_on_device
from ..cache import content_hash
from ..model import CompileOptions
from ..tflite_model import read_model
from .base import Job, Stage

log = logging.getLogger(__name__)

COMPILER_NAME = "edgetpu_compiler"
ENV_VAR = "EDGETPU_COMPILER"
EDGETPU_CUSTOM_OP = "CUSTOM:edgetpu-custom-op"
MAPPED_STATUS = "Mapped to Edge TPU"
DEFAULT_WALL_TIMEOUT_S = 600
INSTALL_HINT = ("install it on x86-64 Debian/Ubuntu from Coral's package repository "
                "(https://coral.ai/docs/edgetpu/compiler/): apt-get install edgetpu-compiler")

# Per-op statuses from the compiler's table, with the fix a user can apply (EDGETPU.md (d)).
STATUS_FIXES = {
    MAPPED_STATUS: None,
    "More than one subgraph is not supported":
        "an earlier op runs on the CPU and cuts the graph here: fix that op, or compile with "
        "--enable-multiple-subgraphs (-a) / --intermediate-tensors (-i)",
    "Operation is otherwise supported, but not mapped due to some unspecified limitation":
        "a hidden limit of this instance (tensor size, quantization, resize ratio, a float-I/O "
        "QUANTIZE): change the shapes, use int8/uint8 I/O, or try -a / --search-delegate",
    "Operation not supported": "replace the op with one the Edge TPU supports (e.g. LEAKY_RELU -> RELU/PRELU)",
    "Operation version not supported":
        "the op version is newer than this compiler knows: convert with an older TF or use compiler 16",
    "Operation is working on an unsupported data type":
        "float/int32/int16 tensors: quantize fully to int8 (`invoke quantize`), or move the op out of the model",
    "Tensor has unsupported rank (up to 3 innermost dimensions mapped)":
        "reshape so that only the 3 innermost dimensions exceed 1",
    "Only Strided-Slice with unitary strides supported": "use strides of 1 and subsample on the CPU",
    "Filter, bias, or other param is not constant at compile-time": "re-export with constant weights",
}


@dataclass(frozen=True)
class FailureKind:
    key: str
    pattern: str
    cause: str
    fix: str
    model_problem: bool  # the model cannot be compiled (exit 1), versus a failing tool (exit 2)


# Failure messages the compiler prints (EDGETPU.md (d) "Failure messages"), matched per line.
FAILURES = (
    FailureKind("not_quantized", r"^Model not quantized$", "the model is not fully quantized",
                "full-integer int8 quantization: `invoke quantize`", True),
    FailureKind("invalid_model", r"^Invalid model: (?P<detail>.*)$", "the compiler rejected the file",
                "check it loads in `invoke check` and re-convert", True),
    FailureKind("internal_error", r"^Internal compiler error\. Aborting!$",
                "the compiler crashed internally (sometimes nondeterministic)",
                "retry; with compiler 16 use --search-delegate; simplify the model", False),
    FailureKind("op_version", r"^ERROR: Didn't find op for builtin opcode '(?P<detail>[^']+)' version '\d+'$",
                "an op version this compiler's TFLite does not know",
                "convert with an older TensorFlow, or use compiler 16", True),
    FailureKind("registration", r"^ERROR: Registration failed\.$", "op registration failed",
                "convert with an older TensorFlow, or use compiler 16", True),
    FailureKind("builtin_out_of_range", r"^ERROR: Op builtin_code out of range: (?P<detail>\d+)\.",
                "the model uses an op newer than the compiler", "avoid ops added after TF 2.5", True),
    FailureKind("dynamic_tensors", r"^ERROR: Attempting to use a delegate that only supports static-sized tensors",
                "the model has dynamic-sized tensors", "fix every dimension, batch 1 (`invoke quantize` does)", True),
    FailureKind("interpreter_failed", r"^Compilation failed: Model failed in Tflite interpreter",
                "the model does not load in the compiler's TFLite interpreter",
                "check it with `invoke check`; fix dynamic shapes", True),
    FailureKind("large_activations", r"^Compilation failed: Compilation failed due to large activation tensors",
                "activation tensors too large for the Edge TPU",
                "--search-delegate or --intermediate-tensors to keep the big tail on the CPU; a smaller input", True),
    FailureKind("delegate_failed", r"^ERROR: Restored original execution plan after delegate application failure\.$",
                "the Edge TPU delegate could not be applied (the reason follows)",
                "--search-delegate, or --intermediate-tensors", False),
    FailureKind("delegate_internal", r"^Compilation failed: Internal error\.$",
                "the compiler could not build the delegate", "--search-delegate, or --intermediate-tensors", False),
    FailureKind("intermediate_lists", r"^The number of lists given to intermediate_tensors doesn't match",
                "--intermediate-tensors has a different number of lists than models (a ':' in a tensor name?)",
                "rename tensors containing ':'", False),
    FailureKind("segfault", r"Segmentation fault", "the compiler crashed (segmentation fault)",
                "fewer --num-segments; a newer compiler", False),
)

_SIZE_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3}


def parse_size(text: str) -> int | None:
    m = re.fullmatch(r"([\d.]+)\s*(B|KiB|MiB|GiB)", text.strip())
    return round(float(m.group(1)) * _SIZE_UNITS[m.group(2)]) if m else None


@dataclass(frozen=True)
class OpRow:
    op: str  # as the compiler prints it: builtin name, or CUSTOM for every custom op
    count: int
    status: str

    @property
    def mapped(self) -> bool:
        return self.status == MAPPED_STATUS

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, "count": self.count, "status": self.status, "mapped": self.mapped,
                "fix": STATUS_FIXES.get(self.status, "unknown status: see the compiler's log"),
                "known_status": self.status in STATUS_FIXES}


@dataclass
class ModelBlock:
    """One `Model compiled successfully` block: one input model (or segment)."""

    compile_ms: int | None = None
    input_model: str | None = None
    input_size: int | None = None
    output_model: str | None = None
    output_size: int | None = None
    on_chip_available: int | None = None  # compiler 2.0 only
    on_chip_used: int | None = None
    on_chip_remaining: int | None = None
    off_chip_streamed: int | None = None
    subgraphs: int | None = None
    total_ops: int | None = None
    operation_log: str | None = None
    tpu_ops: int | None = None
    cpu_ops: int | None = None
    ops: list[OpRow] = field(default_factory=list)
    only_unmapped_rows: bool = False  # "... All other operators were mapped successfully."

    def to_json(self) -> dict[str, Any]:
        return {"compile_ms": self.compile_ms, "input_model": self.input_model,
                "input_bytes": self.input_size, "output_model": self.output_model,
                "output_bytes": self.output_size, "on_chip_available_bytes": self.on_chip_available,
                "on_chip_used_bytes": self.on_chip_used, "on_chip_remaining_bytes": self.on_chip_remaining,
                "off_chip_streamed_bytes": self.off_chip_streamed, "edgetpu_subgraphs": self.subgraphs,
                "total_ops": self.total_ops, "tpu_ops": self.tpu_ops, "cpu_ops": self.cpu_ops,
                "operation_log": self.operation_log, "only_unmapped_rows": self.only_unmapped_rows,
                "ops": [r.to_json() for r in self.ops]}


@dataclass(frozen=True)
class Failure:
    kind: FailureKind
    line: str
    detail: str | None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind.key, "message": self.line, "detail": self.detail,
                "cause": self.kind.cause, "fix": self.kind.fix, "model_problem": self.kind.model_problem}


@dataclass
class CompilerOutput:
    version: str | None = None
    blocks: list[ModelBlock] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    search_step: int | None = None
    search_attempts: list[int] = field(default_factory=list)  # "Try to compile segment with N ops"
    intermediate_tensors: list[str] = field(default_factory=list)
    timeout_sec: int | None = None
    unknown_lines: list[str] = field(default_factory=list)
    _last_event: str = ""  # "block" or "failure": a failure after the last block fails the run

    @property
    def succeeded(self) -> bool:
        return bool(self.blocks) and self._last_event == "block"

    def to_json(self) -> dict[str, Any]:
        return {"compiler_version": self.version, "succeeded": self.succeeded,
                "models": [b.to_json() for b in self.blocks],
                "failures": [f.to_json() for f in self.failures], "warnings": self.warnings,
                "search_step": self.search_step, "search_attempts": self.search_attempts,
                "intermediate_tensors": self.intermediate_tensors, "timeout_sec": self.timeout_sec,
                "unknown_lines": self.unknown_lines}


_ROW = re.compile(r"^(\S+)\s+(\d+)\s+(.+?)\s*$")
_TABLE_HEADER = re.compile(r"^Operator\s+Count\s+Status$")
_PARTIAL_NOTICE = "Model successfully compiled but not all operations are supported"
_QUIET_LINES = (  # understood, nothing to record
    "See the operation log file for individual operation details.",
    "Compilation child process completed within timeout period.",
    "Compilation succeeded!",
    "Compilation failed!",
)
# (pattern, block field, converter): the summary lines of a compiled-model block
_BLOCK_FIELDS = (
    (r"^Input model: (.*)$", "input_model", str),
    (r"^Input size: (\S+)$", "input_size", parse_size),
    (r"^Output model: (.*)$", "output_model", str),
    (r"^Output size: (\S+)$", "output_size", parse_size),
    (r"^On-chip memory available for caching model parameters: (\S+)$", "on_chip_available", parse_size),
    (r"^On-chip memory used for caching model parameters: (\S+)$", "on_chip_used", parse_size),
    (r"^On-chip memory remaining for caching model parameters: (\S+)$", "on_chip_remaining", parse_size),
    (r"^Off-chip memory used for streaming uncached model parameters: (\S+)$", "off_chip_streamed", parse_size),
    (r"^Number of Edge TPU subgraphs: (\d+)$", "subgraphs", int),
    (r"^Total number of operations: (\d+)$", "total_ops", int),
    (r"^Operation log: (.*)$", "operation_log", str),
    (r"^Number of operations that will run on Edge TPU: (\d+)$", "tpu_ops", int),
    (r"^Number of operations that will run on CPU: (\d+)$", "cpu_ops", int),
)


def parse_compiler_output(text: str) -> CompilerOutput:
    out = CompilerOutput()
    block: ModelBlock | None = None
    in_table = in_notice = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if in_notice:  # compiler 14.1 wraps the partial-mapping paragraph
            in_notice = not line.endswith("model-reqs.")
            continue
        if m := re.match(r"^Edge TPU Compiler version (\S+)$", line):
            out.version = m.group(1)
            continue
        if m := re.match(r"^Models? compiled successfully in (\d+) ms\.$", line):
            block = ModelBlock(compile_ms=int(m.group(1)))
            out.blocks.append(block)
            out._last_event = "block"
            in_table = False
            continue
        if _TABLE_HEADER.match(line):
            in_table = True
            if block is None:  # a table with no summary (a .log file): one implicit block
                block = ModelBlock()
                out.blocks.append(block)
                out._last_event = "block"
            continue
        if line.startswith(_PARTIAL_NOTICE):
            in_notice = not line.endswith("model-reqs.")
            continue
        if line.startswith("... All other operators were mapped successfully"):
            if block is not None:
                block.only_unmapped_rows = True
            continue
        if line in _QUIET_LINES:
            continue
        if _match_failure(out, line):
            in_table = False
            continue
        if _match_run_line(out, line):
            continue
        if _match_block_field(block or ModelBlock(), line, out):
            block = out.blocks[-1]
            in_table = False
            continue
        if in_table and block is not None and (m := _ROW.match(line)):
            block.ops.append(OpRow(m.group(1), int(m.group(2)), m.group(3)))
            continue
        if line.startswith("Warning:"):
            out.warnings.append(line)
            continue
        out.unknown_lines.append(line)
    return out


def _match_failure(out: CompilerOutput, line: str) -> bool:
    for kind in FAILURES:
        if m := re.search(kind.pattern, line):
            detail = m.groupdict().get("detail")
            if kind.key == "not_quantized" and out.failures and out.failures[-1].kind.key == "invalid_model":
                detail = out.failures.pop().detail  # "Invalid model: <file>" then the reason
            out.failures.append(Failure(kind, line, detail))
            out._last_event = "failure"
            return True
    return False


def _match_run_line(out: CompilerOutput, line: str) -> bool:
    if m := re.match(r"^Searching for valid delegate with step (\d+)$", line):
        out.search_step = int(m.group(1))
    elif m := re.match(r"^Try to compile segment with (\d+) ops$", line):
        out.search_attempts.append(int(m.group(1)))
    elif m := re.match(r"^Intermediate tensors: (.*)$", line):
        out.intermediate_tensors = [t for t in m.group(1).split(",") if t]
    elif m := re.match(r"^Started a compilation timeout timer of (\d+) seconds\.$", line):
        out.timeout_sec = int(m.group(1))
    elif line.startswith(("Input: ", "Output: ")):  # the .log header
        pass
    else:
        return False
    return True


def _match_block_field(block: ModelBlock, line: str, out: CompilerOutput) -> bool:
    """A summary line; one with no block open (a paste that starts mid-run) opens one."""
    for pattern, name, convert in _BLOCK_FIELDS:
        if m := re.match(pattern, line):
            if not out.blocks or out.blocks[-1] is not block:
                out.blocks.append(block)
                out._last_event = "block"
            setattr(block, name, convert(m.group(1)))
            return True
    return False


# --- discovery ---------------------------------------------------------------------------

def find_compiler(explicit: str | None = None) -> Path | None:
    """`--compiler`, then $EDGETPU_COMPILER, then PATH. An explicit path that is not there is
    an error; nothing found on PATH is a skip."""
    for source, value in (("--compiler", explicit), (f"${ENV_VAR}", os.environ.get(ENV_VAR))):
        if value:
            path = Path(value)
            if not path.is_file() or not os.access(path, os.X_OK):
                raise PipelineError("not an executable file", path=path, field=source,
                                    fix=f"point {source} at edgetpu_compiler, or unset it to search PATH")
            return path
    found = shutil.which(COMPILER_NAME)
    return Path(found) if found else None


VERSION_TIMEOUT_S = 30


def compiler_version(path: Path, timeout_s: float = VERSION_TIMEOUT_S) -> str:
    text = _run(path, ["--version"], min(timeout_s, VERSION_TIMEOUT_S), what="`--version`")[0]
    m = re.search(r"Edge TPU Compiler version (\S+)", text)
    if not m:
        raise PipelineError("does not print 'Edge TPU Compiler version' for --version: not edgetpu_compiler?",
                            path=path, field="--compiler", fix=INSTALL_HINT)
    return m.group(1)


# --- the stage ---------------------------------------------------------------------------

@dataclass
class CompileResult:
    compiled: bool
    message: str
    compiler: str | None = None
    compiler_version: str | None = None
    output_dir: Path | None = None
    parsed: CompilerOutput | None = None
    compiled_models: list[dict[str, Any]] = field(default_factory=list)
    comparison: list[dict[str, Any]] = field(default_factory=list)
    explanations: list[str] = field(default_factory=list)
    device: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"compiled": self.compiled, "message": self.message, "compiler": self.compiler,
                "compiler_version": self.compiler_version,
                "output_dir": self.output_dir.name if self.output_dir else None,
                "result": self.parsed.to_json() if self.parsed else None,
                "compiled_models": self.compiled_models, "prediction_disagreements": self.comparison,
                "explanations": self.explanations, "device": self.device}


def compile_edgetpu(model_path: Path, *, compiler: str | None = None, options: CompileOptions = CompileOptions(),
                    wall_timeout_s: float = DEFAULT_WALL_TIMEOUT_S, require: bool = False) -> CompileResult:
    model = read_model(model_path)  # bad input fails here, before any tool runs
    out_dir = model_path.parent / "edgetpu"
    exe = find_compiler(compiler)
    if exe is None:
        message = (f"Edge TPU model not compiled: {COMPILER_NAME} not found (--compiler, ${ENV_VAR}, PATH); "
                   f"{INSTALL_HINT}. The prediction of `invoke check` stands in.")
        if require:
            raise PipelineError(f"{COMPILER_NAME} not found", field="--require", fix=INSTALL_HINT)
        return CompileResult(compiled=False, message=message, device=edgetpu_device_status())
    ensure_replaceable(out_dir, option="edgetpu/", legacy=legacy_edgetpu_files)  # before the tool runs
    version = compiler_version(exe, wall_timeout_s)
    with replacing_owned_dir(out_dir, f"{TOOL_NAME} {__version__}", option="edgetpu/",
                             legacy=legacy_edgetpu_files) as staging:
        text, code = _run(exe, options.arguments(staging) + [str(model_path.resolve())], wall_timeout_s)
        (staging / "compiler_stdout.txt").write_text(text)
        parsed = parse_compiler_output(text)
        result = CompileResult(compiled=False, message="", compiler=str(exe), compiler_version=version,
                               parsed=parsed)
        _check_run(result, parsed, code, text)
        _read_back(result, parsed, staging, model)
        for block in parsed.blocks:  # name the files where they will live, not the staging dir
            block.output_model = str(out_dir / Path(block.output_model).name)
            if block.operation_log:
                block.operation_log = str(out_dir / Path(block.operation_log).name)
        result.compiled = True
        result.output_dir = out_dir
        result.message = _summary(result)
        result.device = edgetpu_device_status()
        if result.device.get("present"):
            result.device.update(run_on_device(staging / Path(parsed.blocks[0].output_model).name, model_path))
        (staging / "compile.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return result


def legacy_edgetpu_files(folder: Path) -> set[str] | None:
    """An edgetpu/ folder written before folders carried a manifest: it has our compile.json,
    and only the compiler's outputs and ours count as ours."""
    try:
        record = json.loads((folder / "compile.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or "compiled" not in record:
        return None
    return {f.name for f in folder.iterdir() if f.is_file() and (
        f.name in ("compile.json", "compiler_stdout.txt") or f.name.endswith(("_edgetpu.tflite", "_edgetpu.log")))}


def _run(exe: Path, args: list[str], wall_timeout_s: float, what: str = COMPILER_NAME) -> tuple[str, int]:
    from ..runtime.process import ToolFlood, ToolTimeout, run_tool

    try:
        return run_tool([str(exe), *args], wall_timeout_s)
    except OSError as exc:
        raise PipelineError(f"cannot start {what}: {exc.strerror or exc}", path=exe, field="--compiler",
                            fix=INSTALL_HINT) from None
    except ToolTimeout:
        raise PipelineError(f"{what} did not finish within {wall_timeout_s:g} s and was stopped",
                            path=exe, field="--timeout",
                            fix="raise --timeout, or pass --search-delegate to give up on hard segments") from None
    except ToolFlood:
        raise PipelineError(f"{what} printed more than 64 MiB and was stopped: not edgetpu_compiler, or broken",
                            path=exe, field="--compiler", fix=INSTALL_HINT) from None


def _check_run(result: CompileResult, parsed: CompilerOutput, code: int, text: str) -> None:
    if code < 0:
        from ..runtime.process import signal_name

        raise PipelineError(f"{COMPILER_NAME} crashed ({signal_name(code)}); last output: {_last_line(text)}",
                            field="compile", fix="retry; a newer compiler; fewer --num-segments")
    if parsed.failures and not parsed.succeeded:
        f = parsed.failures[-1]
        error = NotDeployableError if f.kind.model_problem else PipelineError
        raise error(f"{COMPILER_NAME} failed: {f.line} ({f.kind.cause})", field="compile", fix=f.kind.fix)
    if not parsed.succeeded:
        raise PipelineError(f"{COMPILER_NAME} exited {code} without a result; unrecognised output: "
                            f"{_last_line(text)}", field="--compiler", fix="run it by hand to see why")
    if code != 0:
        raise PipelineError(f"{COMPILER_NAME} exited {code} after printing a result", field="--compiler",
                            fix="run it by hand to see why")


def _last_line(text: str) -> str:
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    return repr(lines[-1][:200]) if lines else "(nothing)"


def _read_back(result: CompileResult, parsed: CompilerOutput, staging: Path, source_model) -> None:
    from ..rules.edgetpu import check_edgetpu

    predicted = check_edgetpu(source_model)
    for block in parsed.blocks:
        name = Path(block.output_model or "").name
        path = staging / name
        if not name or not path.is_file():
            raise PipelineError(f"the compiler reported {name or 'no output model'} but did not write it",
                                path=staging, field="compile", fix="run it by hand to see why")
        compiled = read_model(path)  # a garbage file is a ModelFormatError (exit 2)
        ops = [op.op for op in compiled.main.operators]
        tpu_nodes = ops.count(EDGETPU_CUSTOM_OP)
        cpu_left = [op for op in ops if op != EDGETPU_CUSTOM_OP]
        log_path = staging / Path(block.operation_log or "").name
        if block.operation_log and log_path.is_file() and not block.ops:  # run without -s
            log_blocks = parse_compiler_output(log_path.read_text()).blocks
            block.ops = log_blocks[0].ops if log_blocks else []
        result.compiled_models.append({
            "file": name, "bytes": path.stat().st_size, "edgetpu_custom_ops": tpu_nodes,
            "cpu_ops": cpu_left,
            "mapped_ops": (block.total_ops - len(cpu_left)) if block.total_ops is not None else None})
    if len(parsed.blocks) == 1:
        result.comparison = compare_with_prediction(parsed.blocks[0], predicted)
    result.explanations = explain(parsed, predicted, map_layers(source_model))


def compare_with_prediction(block: ModelBlock, predicted) -> list[dict[str, Any]]:
    """Per op name: ops the compiler mapped vs ops `invoke check` predicted mapped."""
    if not block.ops or block.only_unmapped_rows:
        return []
    compiled: dict[str, list[int]] = {}
    for row in block.ops:
        m = compiled.setdefault(row.op, [0, 0])
        m[0 if row.mapped else 1] += row.count
    guessed: dict[str, list[int]] = {}
    for v in predicted.ops:
        name = "CUSTOM" if v.op.startswith("CUSTOM:") else v.op
        g = guessed.setdefault(name, [0, 0])
        g[0 if v.mapped else 1] += 1
    out = []
    for op in sorted(set(compiled) | set(guessed)):
        c, g = compiled.get(op, [0, 0]), guessed.get(op, [0, 0])
        if c != g:
            out.append({"op": op, "compiled_mapped": c[0], "compiled_cpu": c[1],
                        "predicted_mapped": g[0], "predicted_cpu": g[1],
                        "predicted_statuses": sorted({v.status for v in predicted.ops
                                                      if ("CUSTOM" if v.op.startswith("CUSTOM:") else v.op) == op}),
                        "compiled_statuses": sorted({r.status for r in block.ops if r.op == op})})
    return out


def explain(parsed: CompilerOutput, predicted, layers=None) -> list[str]:
    """One line per op kind the compiler left on the CPU: why, what to do, and the Keras
    layers those ops came from (`layers`: `pipeline.layers.map_layers` of the source model)."""
    lines = []
    cut = predicted.cut_at
    for block in parsed.blocks:
        for row in block.ops:
            if row.mapped:
                continue
            fix = STATUS_FIXES.get(row.status, "unknown status: read the compiler's log")
            where = ""
            if row.status.startswith("More than one subgraph") and cut is not None:
                where = f" (the graph is cut at op {cut}: everything fed by it runs on the CPU)"
            lines.append(f"{row.count} x {row.op}: {row.status}{where} -> {fix}"
                         f"{_row_layers(row, predicted, layers)}")
    return lines


_LAYERS_NAMED = 4  # a compiler row may stand for dozens of ops: name a few of their layers


def _row_layers(row: OpRow, predicted, layers) -> str:
    """`; layers `leaky_1`, `leaky_2` and 9 more`: the compiler's log counts ops per kind and
    status, so its row is matched to the predicted CPU ops of that kind (the same status
    first), whose layers the converter's tensor names give."""
    if not layers:
        return ""
    by_index = {layer.op_index: layer for layer in layers}
    same = [v for v in predicted.ops if ("CUSTOM" if v.op.startswith("CUSTOM:") else v.op) == row.op]
    picked = [v for v in same if not v.mapped and v.status == row.status] or \
        [v for v in same if not v.mapped] or same
    names = list(dict.fromkeys(by_index[v.index].keras_layer for v in picked
                               if v.index in by_index and by_index[v.index].keras_layer))
    if not names:
        return ""
    shown = ", ".join(f"`{n}`" for n in names[:_LAYERS_NAMED])
    more = f" and {len(names) - _LAYERS_NAMED} more" if len(names) > _LAYERS_NAMED else ""
    return f"; layer{'s' if len(names) > 1 else ''} {shown}{more}"


def _summary(result: CompileResult) -> str:
    parts = []
    for block, model in zip(result.parsed.blocks, result.compiled_models):
        mapped = model["mapped_ops"]
        parts.append(f"{model['file']}: {mapped}/{block.total_ops} ops on the Edge TPU "
                     f"({model['edgetpu_custom_ops']} edgetpu-custom-op), "
                     f"{len(model['cpu_ops'])} on the CPU")
    return "; ".join(parts)


# --- registry entry ----------------------------------------------------------------------------

def _compile_not_applicable(job: Job) -> str | None:
    if not job.request.targets("edgetpu"):
        return "target is tflm"
    if not (job.results.get("check", {}).get("edgetpu") or {}).get("compatible"):
        return "the Edge TPU check failed"
    return None


def _compile_key(job: Job) -> dict[str, Any] | None:
    exe = find_compiler(job.request.compiler)
    if exe is None:
        return None  # the skip is recorded, never cached: a compiler may be installed next time
    return {"model": content_hash(job.model), "compiler": str(exe), "version": compiler_version(exe),
            "options": job.request.compile_options}


def _compile_job(job: Job) -> CompileResult:
    r = job.request
    return compile_edgetpu(job.model, compiler=r.compiler, options=r.compile_options,
                           wall_timeout_s=r.compile_timeout_s, require=r.require_compiler)


def _compile_status(job: Job, result: dict[str, Any]) -> tuple[str, str] | None:
    if not result["compiled"] and result["compiler"] is None:
        return "no compiler", f"{COMPILER_NAME} not found: the check's prediction stands in"
    return None


STAGE = Stage("compile", run=_compile_job, cache_key=_compile_key, outputs=lambda job: ("edgetpu",),
              not_applicable=_compile_not_applicable, status=_compile_status)
