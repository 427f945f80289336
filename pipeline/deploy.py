"""`invoke deploy`: quantize -> check -> compile -> firmware -> verify (-> hil with a port),
skipping every stage whose inputs are unchanged.

A stage's key is a hash of what decides its result: the content of its input files, the
options that matter, the versions of the tools and fact tables involved. After a stage has
written its outputs (each atomically), its record `.stages/<stage>.json` is written last: a run
interrupted mid-stage leaves the old record, which no longer matches, so the next run redoes
the stage; the outputs of stages that finished stay as they were.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import PACKAGE_DIR, PROJECT_DIR, __version__
from .errors import NotDeployableError
from .fileio import safe_name, write_json_atomic
from .report import check_output_folder, read_report, update_report
from .versions import package_version

log = logging.getLogger(__name__)

STAGE_DIR = ".stages"
TARGETS = ("edgetpu", "tflm", "all")
_FACT_TABLES = ("stages/check/edgetpu_ops.json", "stages/check/tflm_ops.json", "boards.toml")


@dataclass(frozen=True)
class DeployRequest:
    model: str = "demo"
    data: str | None = None
    eval_data: str | None = None
    io_type: str | None = None
    samples: int = 200
    name: str | None = None
    out: Path = field(default_factory=lambda: Path("build"))
    target: str = "all"
    board: str | None = None
    compiler: str | None = None
    port: str | None = None  # a device (or `invoke emulate`) to run the golden vectors on
    baud: int = 115200
    force: bool = False


@dataclass
class StageRun:
    name: str
    status: str  # ran | skipped | not applicable | no compiler
    seconds: float
    note: str = ""
    result: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        # The outcome only: whether it was recomputed or reused, and how long it took, depend on
        # the cache and the machine, not on the inputs; the report must not (same inputs, same
        # bytes). Those go to the terminal and the stage records.
        if self.status in ("ran", "skipped"):
            return {"status": "done", "note": ""}
        return {"status": self.status, "note": self.note}


@dataclass
class DeployResult:
    name: str
    output_dir: Path
    target: str
    stages: list[StageRun]
    deployable: bool
    reasons: list[str]

    def stage(self, name: str) -> StageRun | None:
        return next((s for s in self.stages if s.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "deployable": self.deployable, "reasons": self.reasons,
                "stages": {s.name: s.to_json() for s in self.stages}}


# --- content hashing ----------------------------------------------------------------------

def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_hash(spec: str | Path | None) -> str | None:
    """A file's or a directory tree's content; for `module:function`, the module's source."""
    if spec is None:
        return None
    path = Path(spec)
    if path.is_file():
        return file_digest(path)
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(path)).encode() + b"\0" + file_digest(f).encode())
        return h.hexdigest()
    if ":" in str(spec):
        module = str(spec).partition(":")[0]
        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            found = None
        if found and found.origin and Path(found.origin).is_file():
            return f"{spec}:{file_digest(Path(found.origin))}"
    return f"unhashable:{spec}"


def _key(stage: str, **inputs: Any) -> str:
    blob = json.dumps({"stage": stage, "pipeline": __version__, **inputs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


# --- stage records --------------------------------------------------------------------------

def _record_path(out_dir: Path, stage: str) -> Path:
    return out_dir / STAGE_DIR / f"{stage}.json"


def _outputs_digest(out_dir: Path, outputs: list[str]) -> dict[str, str | None]:
    return {rel: content_hash(out_dir / rel) for rel in outputs}


def _up_to_date(out_dir: Path, stage: str, key: str) -> dict[str, Any] | None:
    try:
        record = json.loads(_record_path(out_dir, stage).read_text())
    except (OSError, ValueError):
        return None
    if record.get("key") != key:
        return None
    if _outputs_digest(out_dir, list(record.get("outputs", {}))) != record.get("outputs"):
        return None  # an output was changed or removed by hand
    return record


def _run_stage(out_dir: Path, stage: str, key: str, force: bool, outputs: list[str],
               work: Callable[[], dict[str, Any]]) -> StageRun:
    start = time.perf_counter()
    record = None if force else _up_to_date(out_dir, stage, key)
    if record is not None:
        return StageRun(stage, "skipped", time.perf_counter() - start, "inputs unchanged", record["result"])
    result = work()
    write_json_atomic(_record_path(out_dir, stage), {"key": key, "outputs": _outputs_digest(out_dir, outputs),
                                                     "result": result})
    return StageRun(stage, "ran", time.perf_counter() - start, "", result)


# --- the chain -------------------------------------------------------------------------------

def deploy(req: DeployRequest, on_stage: Callable[[StageRun], None] = lambda run: None) -> DeployResult:
    from .stages.check.run import check as run_check
    from .stages.compile import compile_edgetpu, compiler_version, find_compiler
    from .data import precheck_data_spec
    from .demo import DEMO_NAME, DEMO_VERSION
    from .stages.firmware import DEFAULT_BOARD, generate_firmware
    from .stages.quantize import QuantizeRequest, check_options, quantize

    if req.target not in TARGETS:
        from .errors import PipelineError

        raise PipelineError(f"unknown target '{req.target}'", field="--target", fix="use edgetpu, tflm or all")
    if req.board:
        from .boards import get_board

        get_board(req.board)
    q_request = QuantizeRequest(model=req.model, data=req.data, eval_data=req.eval_data, io_type=req.io_type,
                                samples=req.samples, name=req.name, out=req.out)
    check_options(q_request)
    precheck_data_spec(req.data, "--data")
    precheck_data_spec(req.eval_data, "--eval-data")
    name = safe_name(req.name or Path(req.model).stem)
    out_dir = check_output_folder(req.out / name)
    tables = {t: content_hash(PACKAGE_DIR / t) for t in _FACT_TABLES}
    runs: list[StageRun] = []

    def done(run: StageRun) -> StageRun:
        runs.append(run)
        on_stage(run)
        return run

    # quantize
    model_key = (f"demo-v{DEMO_VERSION}-{package_version('keras')}" if req.model == DEMO_NAME
                 else content_hash(req.model))
    key = _key("quantize", model=model_key, data=content_hash(req.data), eval=content_hash(req.eval_data),
               io_type=req.io_type, samples=req.samples,
               tools=[package_version("tensorflow-cpu", "tensorflow"), package_version("ai-edge-litert")])
    done(_run_stage(out_dir, "quantize", key, req.force, ["model_float.tflite", "model_int8.tflite"],
                    lambda: quantize(q_request).to_json()))
    model_path = out_dir / "model_int8.tflite"
    model_hash = content_hash(model_path)

    # check
    key = _key("check", model=model_hash, target=req.target, board=req.board, tables=tables,
               tflm=package_version("tflite-micro"))
    check_run = done(_run_stage(out_dir, "check", key, req.force, [],
                                lambda: run_check(str(model_path), target=req.target, board=req.board,
                                                  out=req.out).to_json()))
    checked = check_run.result
    edgetpu_ok = bool(checked.get("edgetpu") and checked["edgetpu"]["compatible"])
    tflm_ok = bool(checked.get("tflm") and checked["tflm"]["compatible"])

    # compile (Edge TPU)
    if req.target in ("edgetpu", "all") and edgetpu_ok:
        start = time.perf_counter()
        exe = find_compiler(req.compiler)
        if exe is None:
            result = compile_edgetpu(model_path, compiler=req.compiler).to_json()  # records the skip
            done(StageRun("compile", "no compiler", time.perf_counter() - start,
                          "edgetpu_compiler not found: the check's prediction stands in", result))
        else:
            key = _key("compile", model=model_hash, compiler=str(exe), version=compiler_version(exe))
            done(_run_stage(out_dir, "compile", key, req.force, ["edgetpu"],
                            lambda: compile_edgetpu(model_path, compiler=str(exe)).to_json()))
    else:
        done(StageRun("compile", "not applicable", 0.0,
                      "target is tflm" if req.target == "tflm" else "the Edge TPU check failed"))

    # firmware (TFLite Micro)
    if req.target in ("tflm", "all") and tflm_ok:
        arena = checked["tflm"]["arena_bytes"]  # the check stage's binary search: not run twice
        measured = (arena, "the TFLM Python interpreter") if arena else None
        skeleton = content_hash(PROJECT_DIR / "firmware")
        templates = content_hash(PROJECT_DIR / "templates" / "firmware")
        key = _key("firmware", model=model_hash, board=req.board or DEFAULT_BOARD, data=content_hash(req.data),
                   skeleton=skeleton, templates=templates, tables=tables, tflm=package_version("tflite-micro"))
        done(_run_stage(out_dir, "firmware", key, req.force, ["firmware"],
                        lambda: generate_firmware(model_path, board=req.board, data=req.data,
                                                  smallest_arena=measured).to_json()))
    else:
        done(StageRun("firmware", "not applicable", 0.0,
                      "target is edgetpu" if req.target == "edgetpu" else "the TFLM check failed"))

    # verify: the host interpreters stand in for the hardware
    from .stages.verify import verify

    key = _key("verify", model=model_hash, data=content_hash(req.eval_data or req.data),
               float=content_hash(out_dir / "model_float.tflite"),
               tools=[package_version("ai-edge-litert"), package_version("tflite-micro")])
    verified = done(_run_stage(out_dir, "verify", key, req.force, [],
                               lambda: verify(model_path, data=req.eval_data or req.data).to_json())).result

    # hil: only with a device attached; never cached (the device is not an input we can hash)
    hil_result: dict[str, Any] = {}
    if req.port:
        from .stages.hil import run_hil

        start = time.perf_counter()
        hil_result = run_hil(model_path, req.port, baud=req.baud, data=req.data).to_json()
        done(StageRun("hil", "ran", time.perf_counter() - start, f"on {req.port}", hil_result))

    reasons = _not_deployable_reasons(checked, req.target)
    if hil_result and not hil_result["passed"]:
        reasons.append("hil: the device's outputs differ from the host TFLM")
    reasons += [f"verify: {c['check']}: {c['detail']}" for c in verified.get("checks", []) if not c["passed"]]
    result = DeployResult(name=name, output_dir=out_dir, target=req.target, stages=runs,
                          deployable=not reasons, reasons=reasons)
    _write_report(out_dir, name, result, read_report(out_dir))
    return result


def _not_deployable_reasons(checked: dict[str, Any], target: str) -> list[str]:
    reasons = []
    e, t, b = checked.get("edgetpu"), checked.get("tflm"), checked.get("board")
    if target in ("edgetpu", "all") and e and not e["compatible"]:
        reasons.append(f"Edge TPU: {e['mapped_ops']}/{e['total_ops']} ops mapped"
                       + (f" ({e['model_problem']})" if e.get("model_problem") else ""))
    if target in ("tflm", "all") and t and not t["compatible"]:
        bad = [f"{o['op']}: {o['reason']}" for o in t["ops"] if not o["supported"]][:3]
        reasons.append("TFLM: " + "; ".join(bad + [x for x in (t.get("model_problem"),
                                                               t["interpreter"].get("error")) if x]))
    if b and not (b["flash"]["fits"] and b["ram"]["fits"]):
        reasons.append(f"board {b['name']}: does not fit")
    return reasons


def _write_report(out_dir: Path, name: str, result: DeployResult, report: dict[str, Any]) -> None:
    from .templating import render

    check = report.get("check")
    if check and check.get("edgetpu"):
        svg = render("edgetpu_partition.svg.j2", ops=check["edgetpu"]["ops"], name=name)
        from .fileio import write_text_atomic

        write_text_atomic(out_dir / "edgetpu_partition.svg", svg)
    update_report(out_dir, name, "deploy", result.to_json())


def raise_if_not_deployable(result: DeployResult) -> None:
    if not result.deployable:
        raise NotDeployableError(f"not deployable to {result.target}: {'; '.join(result.reasons)}",
                                 path=result.output_dir / "report.md", field="--target",
                                 fix="see the report for each op's status and fix")
