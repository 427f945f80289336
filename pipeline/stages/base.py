"""What a stage is, what it is given, and what a run of it leaves: the registry's vocabulary.

A stage declares its name, the inputs and options that key its cache, the outputs it writes,
when it does not apply, and a `run` that returns a typed result with `to_json()`. The
orchestrator (`pipeline.deploy`) decides skip / run / not applicable for every stage alike and
writes the report; the tasks call the same entries one at a time. Stage modules never touch
`report.json`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import PACKAGE_DIR
from ..cache import content_hash
from ..model import CompileOptions, Thresholds, quantized_file_name

TARGETS = ("edgetpu", "tflm", "all")
# the fact tables whose rules decide check, firmware and board fit: part of those stages' keys
FACT_TABLES = ("rules/edgetpu_ops.json", "rules/tflm_ops.json", "boards.toml")


def fact_tables() -> dict[str, str | None]:
    return {t: content_hash(PACKAGE_DIR / t) for t in FACT_TABLES}


@dataclass(frozen=True)
class DiagnoseOptions:
    """What `invoke diagnose` (and `invoke deploy --diagnose`) take beyond the samples."""

    samples: int = 32  # per-layer error pools every value of every sample: a few dozen suffice
    int16_model: Path | None = None  # an int16x8 model to diagnose beside the int8 one
    recommend: bool = False  # measure remedies (re-runs the converter: slow)
    runtimes: tuple[str, str] | None = ("litert", "tflm")  # the pair verify's LiteRT-vs-TFLM check compares
    tolerance_lsb: float | None = None  # None: verify's max_lsb_litert_vs_tflm
    calibration_data: str | None = None  # --recommend: the samples quantize calibrated on
    worst: int = 3


@dataclass(frozen=True)
class DeployRequest:
    """Every option a stage takes, with the defaults the tasks document: `invoke deploy` passes
    them all, a single-stage task the ones it has."""

    model: str = "demo"
    data: str | None = None
    eval_data: str | None = None
    mode: str = "int8"
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
    # single-stage options
    run_interpreter: bool = True  # check: the TFLM interpreter run and arena search
    compile_options: CompileOptions = field(default_factory=CompileOptions)
    compile_timeout_s: float = 600.0
    require_compiler: bool = False
    firmware_out: Path | None = None
    firmware_build: bool = False  # a build follows: its linked image, not the estimate, decides the fit
    vectors: int = 4
    tolerance: int = 0
    thresholds: Thresholds = field(default_factory=Thresholds)
    verify_samples: int = 200
    tasks: tuple[str, ...] = ()  # --task OUTPUT=TASK: overrides of the detected output tasks
    hil_timeout_s: float = 5.0
    hil_retries: int = 2
    keras_model: str | None = None  # confirms layer names (check, diagnose); deploy: --model
    diagnose: bool = False  # deploy: diagnose even when every verify check passed
    diagnose_options: DiagnoseOptions = field(default_factory=DiagnoseOptions)

    def targets(self, target: str) -> bool:
        return self.target in (target, "all")


@dataclass
class Job:
    """One run of the chain, or of one stage from its task: the options, the output folder, the
    deployable model, and the results (report sections) of the stages before this one."""

    request: DeployRequest
    out_dir: Path
    name: str
    model_path: Path | None = None  # the .tflite the later stages work on; None: quantize makes it
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def model(self) -> Path:
        return self.model_path or self.out_dir / quantized_file_name(self.request.mode)


def keras_model_of(job: Job) -> Path | None:
    """The Keras model that confirms layer names: --keras-model, else the deploy's --model when
    it is a .keras/.h5 file (read, never loaded), else the demo's trained model when it exists."""
    r = job.request
    if r.keras_model:
        return Path(r.keras_model)
    if job.model_path is not None:  # a task on an existing .tflite: only --keras-model says
        return None
    if r.model == "demo":
        from .. import demo

        path = demo.cached_model_path(r.out / ".cache")
        return path if path.is_file() else None
    path = Path(r.model)
    return path if path.suffix in (".keras", ".h5", ".hdf5") and path.is_file() else None


def _always(job: Job) -> bool:
    return True


def _never(job: Job) -> str | None:
    return None


def _no_problems(job: Job, result: dict[str, Any]) -> list[str]:
    return []


def _as_is(result: dict[str, Any]) -> dict[str, Any]:
    return result


def _plain(job: Job, result: dict[str, Any]) -> tuple[str, str] | None:
    return None


def _no_outputs(job: Job) -> tuple[str, ...]:
    return ()


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Job], Any]  # returns a result with to_json()
    # the inputs and options that decide the result (hashed with the stage's name and our
    # version); None never caches the stage, a function returning None skips the cache this time
    cache_key: Callable[[Job], dict[str, Any] | None] | None = None
    outputs: Callable[[Job], tuple[str, ...]] = _no_outputs  # paths under the output folder the record pins
    applies: Callable[[Job], bool] = _always  # False: not part of this run at all
    not_applicable: Callable[[Job], str | None] = _never  # the reason it does not run
    status: Callable[[Job, dict[str, Any]], tuple[str, str] | None] = _plain  # e.g. ("no compiler", why)
    problems: Callable[[Job, dict[str, Any]], list[str]] = _no_problems  # why it is not deployable
    section: Callable[[dict[str, Any]], dict[str, Any]] = _as_is  # what report.json keeps
    # explains a verdict it does not decide (diagnose): when it fails, the chain goes on and the
    # verdict and its exit code stand; its line and report.json say that it failed, and why
    explains_only: bool = False


@dataclass
class StageRun:
    name: str
    status: str  # ran | skipped | not applicable | no compiler | failed
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
