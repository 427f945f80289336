"""`invoke deploy`: every stage of the registry in order, skipping those whose inputs are
unchanged, then one report. The single-stage tasks run the same entries through `run_stage`.

Nothing here knows a particular stage: each declares its cache key, outputs, when it does not
apply and what makes a model not deployable (`pipeline.stages.base.Stage`). A stage's record
(`.stages/<stage>.json`, `pipeline.cache`) is written after its outputs, so an interrupted run
is redone where it stopped; the report is written once, at the end, also when a stage failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cache import content_hash, stage_key, up_to_date, write_record  # noqa: F401 (content_hash: tests, bench)
from .errors import NotDeployableError, PipelineError
from .fileio import check_output_folder, is_pipeline_output, safe_name
from .report import read_report, write_report
from .stages import REGISTRY
from .stages.base import TARGETS, DeployRequest, Job, Stage, StageRun

log = logging.getLogger(__name__)

__all__ = ["DeployRequest", "DeployResult", "deploy", "raise_if_not_deployable", "run_stage", "record"]


@dataclass
class DeployResult:
    name: str
    output_dir: Path
    target: str
    stages: list[StageRun]
    deployable: bool
    reasons: list[str]
    failure: PipelineError | None = None  # the stage error that ended the chain, if one did

    def stage(self, name: str) -> StageRun | None:
        return next((s for s in self.stages if s.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "deployable": self.deployable, "reasons": self.reasons,
                "stages": {s.name: s.to_json() for s in self.stages}}


def validate_request(req: DeployRequest) -> None:
    """What can be refused before anything is read or written."""
    from .data import precheck_data_spec
    from .stages.quantize import QuantizeRequest, check_options

    if req.target not in TARGETS:
        raise PipelineError(f"unknown target '{req.target}'", field="--target", fix="use edgetpu, tflm or all")
    if req.board:
        from .boards import get_board

        get_board(req.board)
    check_options(QuantizeRequest(model=req.model, data=req.data, eval_data=req.eval_data, mode=req.mode,
                                  io_type=req.io_type, samples=req.samples, name=req.name, out=req.out))
    precheck_data_spec(req.data, "--data")
    precheck_data_spec(req.eval_data, "--eval-data")


def deploy(req: DeployRequest, on_stage: Callable[[StageRun], None] = lambda run: None) -> DeployResult:
    validate_request(req)
    job = job_for_request(req)
    check_output_folder(job.out_dir)
    name = job.name
    runs: list[StageRun] = []
    sections: dict[str, dict[str, Any]] = {}
    failure = None
    for stage in REGISTRY.values():
        if not stage.applies(job):
            continue
        start = time.perf_counter()
        try:
            run = _run_cached(stage, job)
        except PipelineError as exc:
            if not is_pipeline_output(job.out_dir):
                raise  # nothing of this run exists yet: nothing to report into
            if not stage.explains_only:
                failure = exc
            run = StageRun(stage.name, "failed", time.perf_counter() - start, exc.message)
        runs.append(run)
        on_stage(run)
        if failure:
            break
        if run.status not in ("not applicable", "failed"):
            job.results[stage.name] = run.result
            sections[stage.name] = stage.section(run.result)
    reasons = [p for stage in REGISTRY.values() if stage.name in job.results
               for p in stage.problems(job, job.results[stage.name])]
    if failure:
        reasons.append(f"{runs[-1].name}: {failure.message}")
    result = DeployResult(name=name, output_dir=job.out_dir, target=req.target, stages=runs,
                          deployable=not reasons, reasons=reasons, failure=failure)
    write_report(job.out_dir, name, {**sections, "deploy": result.to_json()})
    return result


def _run_cached(stage: Stage, job: Job) -> StageRun:
    start = time.perf_counter()
    reason = stage.not_applicable(job)
    if reason:
        return StageRun(stage.name, "not applicable", 0.0, reason)
    inputs = stage.cache_key(job) if stage.cache_key else None
    key = stage_key(stage.name, inputs) if inputs is not None else None
    if key is not None and not job.request.force:
        record = up_to_date(job.out_dir, stage.name, key, stage.outputs(job))
        if record is not None:
            return StageRun(stage.name, "skipped", time.perf_counter() - start, "inputs unchanged", record["result"])
    result = stage.run(job).to_json()
    if key is not None:
        write_record(job.out_dir, stage.name, key, stage.outputs(job), result)
    status, note = stage.status(job, result) or ("ran", "")
    if inputs is not None and key is None and not note:
        note = "not cached: a module:function's samples cannot be hashed"
    return StageRun(stage.name, status, time.perf_counter() - start, note, result)


# --- one stage, from its task ------------------------------------------------------------------

def job_for_model(model: Path, request: DeployRequest, borrow: tuple[str, ...] = ()) -> Job:
    """A job for a task that works on an existing .tflite: its folder is the output folder, and
    `borrow` names report sections of earlier runs the stage may use (e.g. quantize's labels)."""
    out_dir = model.parent
    earlier = read_report(out_dir) if borrow and is_pipeline_output(out_dir) else {}
    return Job(request=request, out_dir=out_dir, name=out_dir.name, model_path=model,
               results={k: earlier[k] for k in borrow if isinstance(earlier.get(k), dict)})


def run_stage(name: str, job: Job) -> Any:
    """Run one registry entry (no cache: a task asked for it) and record its section."""
    result = REGISTRY[name].run(job)
    record(job, name, result)
    return result


def record(job: Job, name: str, result: Any) -> None:
    """The stage's section into the report, when the job's folder is a pipeline output."""
    if is_pipeline_output(job.out_dir):
        write_report(job.out_dir, job.out_dir.name, {name: REGISTRY[name].section(result.to_json())})


def job_for_request(request: DeployRequest) -> Job:
    """The job of a chain that starts from a Keras model: build/<name>/ as deploy names it."""
    name = safe_name(request.name or Path(request.model).stem)
    return Job(request=request, out_dir=request.out / name, name=name)


def resolve_model(model: str, out: Path) -> Path:
    """A task's --model; `demo` is the demo's int8 model, quantized first when it does not exist
    yet."""
    if model == "demo":
        path = out / "demo" / "model_int8.tflite"
        if not path.is_file():
            log.info("no %s yet: quantizing the demo first", path)
            run_stage("quantize", job_for_request(DeployRequest(out=out)))
        return path.absolute()
    return Path(model).expanduser().absolute()


def raise_if_not_deployable(result: DeployResult) -> None:
    if result.failure is not None:
        raise result.failure
    if not result.deployable:
        # the summary printed each reason on a `why` line; the last line counts them, so a
        # reason is not shown twice (a long one filled half a screen again)
        count = len(result.reasons)
        raise NotDeployableError(f"not deployable to {result.target}: {count} reason{'s' if count != 1 else ''} "
                                 f"(the `why` lines above; report.json `deploy.reasons`)",
                                 path=result.output_dir / "report.md", field="--target",
                                 fix="see the report for each op's status and fix")
