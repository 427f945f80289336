"""Invoke tasks: parse options, call one `pipeline` function, print the result, map errors to
exit codes (0 ok, 1 not deployable, 2 bad input or a failing tool). No heavy imports here:
`invoke --list` must not load TensorFlow."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

from invoke import Collection, Exit, Program, Task
from invoke import task as _invoke_task

from pipeline import __version__
from pipeline.errors import PipelineError
from pipeline.settings import invoke_defaults


# The short flags, the same letter for the same option in every task; the other options are
# long only. (Invoke's automatic ones took the first free character of each name, so -i was
# --build in one task and --min-agreement in the next, and the dash of --max-drop once the
# letters ran out: `--=STRING`.)
SHORT_FLAGS = {"model": "m", "data": "d", "out": "o", "board": "b", "target": "t"}


class _Task(Task):
    def arg_opts(self, name, default, taken_names):
        opts = super().arg_opts(name, default, taken_names)
        short = SHORT_FLAGS.get(name)
        opts["names"] = [opts["names"][0]] + ([short] if short and short not in taken_names else [])
        return opts


def task(*args, **kwargs):
    return _invoke_task(*args, klass=_Task, **kwargs)


def _invoked_from_the_command_line() -> bool:
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return name in ("invoke", "inv") or sys.argv[0].endswith(f"invoke{os.sep}__main__.py")


def _check_configuration(argv: list[str], project_dir: Path | None = None) -> None:
    """invoke.yaml, a -f file and INVOKE_PIPELINE_* are input like any other: a malformed one is
    one clear line and exit 2, before Invoke's own loader would end in a traceback."""
    from pipeline.settings import check_cli

    try:
        check_cli(argv, Path.cwd(), project_dir)
    except PipelineError as exc:
        sys.stderr.write(f"error: {exc.message}\n")
        raise SystemExit(2) from None


def _bad_arguments_are_bad_input(parse_tasks):
    """Invoke ends a task line it cannot parse (an unknown option, an option without its value)
    with exit 1, which here means "not deployable": a CI job would read a typo as a verdict. It
    is bad input: one `error:` line with a fix, exit 2."""
    from functools import wraps

    from invoke.exceptions import ParseError

    if getattr(parse_tasks, "bad_input_is_exit_2", False):
        return parse_tasks

    @wraps(parse_tasks)
    def parse(self, *args, **kwargs):
        try:
            return parse_tasks(self, *args, **kwargs)
        except ParseError as exc:
            words = [w for w in getattr(self.core, "unparsed", []) or [] if not w.startswith("-")]
            task_name = words[0] if words and words[0] in ns.task_names else "<task>"
            raise Exit(f"error: {exc} (fix: `invoke --help {task_name}` lists its options)", code=2) from None

    parse.bad_input_is_exit_2 = True
    return parse


if _invoked_from_the_command_line():
    if hasattr(signal, "SIGPIPE"):  # `invoke --list | head` too ends quietly
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    _check_configuration(sys.argv[1:])
    Program.parse_tasks = _bad_arguments_are_bad_input(Program.parse_tasks)  # Invoke's own program runs us


def _setup_logging(verbose: bool) -> None:
    if hasattr(signal, "SIGPIPE"):  # `invoke deploy | head` ends quietly, like any Unix tool
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s: %(message)s" if verbose else "%(message)s",
                        stream=sys.stderr, force=True)


def _setting(c, key: str, value):
    """A task option, else the collection's configuration (invoke.yaml, INVOKE_PIPELINE_*), else
    the built-in default (pipeline/settings.py holds the table)."""
    from pipeline import settings

    if value is not None:
        return value
    configured = c.config.get("pipeline", {}).get(key)
    source = f"pipeline.{key} (invoke.yaml) or {settings.ENV_PREFIX}_{key.upper()}"
    parsed = _run(settings.value, key, configured, source)
    return settings.default(key) if parsed is None else parsed


def _path(value) -> Path:
    """Paths are made absolute once, here at the edge: workers (the TFLM interpreter, CMake) run
    in other folders, and a relative path would name another file there."""
    return Path(value).expanduser().absolute()


def _int_option(value, option: str) -> int:
    """A whole number within the option's range (pipeline/settings.py OPTION_RANGES)."""
    from pipeline.settings import in_range

    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise Exit(f"error: {option}: expected a whole number, got '{value}'", code=2) from None
    if problem := in_range(option, number):
        raise Exit(f"error: {option}: {problem}", code=2)
    return number


def _float_option(value, option: str, default: float) -> float:
    """A finite number within the option's range; `default` when the option is not given."""
    from pipeline.settings import in_range

    if value is None:
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise Exit(f"error: {option}: expected a number, got '{value}'", code=2) from None
    if problem := in_range(option, number):
        raise Exit(f"error: {option}: {problem}", code=2)
    return number


def _board(c, board, board_file, *, configured: bool = True):
    """--board (a preset) or --board-file (your board's TOML); on the command line either one
    overrides both of invoke.yaml's `board` and `board_file`."""
    if configured and board is None and board_file is None:
        board, board_file = _setting(c, "board", None), _setting(c, "board_file", None)
    from pipeline.boards import resolve_board

    return _run(resolve_board, board, _path(board_file) if board_file else None)


# verify's thresholds, one definition for `invoke verify` and `invoke deploy` (same names)
THRESHOLD_HELP = {
    "max_lsb": "allowed difference between LiteRT's reference kernels and TFLM, in quantized steps at 8 bits "
               "(scaled by 2^(bits-8) for 16-bit outputs; default 32)",
    "min_agreement": "classification outputs: minimum top-1 agreement with float, 0..1 (default 0.95)",
    "max_drop": "classification outputs with labels: maximum accuracy drop from float, in points (default 1.0)",
    "max_rel_error": "regression/reconstruction outputs: maximum RMSE vs float relative to the output's "
                     "spread (default 0.1)",
    "max_clipped": "regression/reconstruction outputs: maximum share of float values clipped at the quantized "
                   "range, 0..1 (default 0.01)",
    "max_auc_drop": "reconstruction outputs with anomaly labels: maximum AUC drop from float (default 0.01)",
}
TASK_HELP = ("an output's task, OUTPUT=classification|regression|reconstruction (repeatable; OUTPUT is the "
             "Keras output name or output_<k>); default: detected per output")


def _thresholds(max_lsb=None, min_agreement=None, max_drop=None, max_rel_error=None, max_clipped=None,
                max_auc_drop=None):
    """The verify thresholds from the command line, each checked against its range
    (pipeline/settings.py OPTION_RANGES: a ratio is 0..1, nothing negative or NaN)."""
    from pipeline.model import Thresholds

    d = Thresholds()
    return Thresholds(
        max_lsb_litert_vs_tflm=_int_option(max_lsb, "--max-lsb") if max_lsb is not None else d.max_lsb_litert_vs_tflm,
        min_top1_agreement=_float_option(min_agreement, "--min-agreement", d.min_top1_agreement),
        max_accuracy_drop_points=_float_option(max_drop, "--max-drop", d.max_accuracy_drop_points),
        max_error_vs_spread=_float_option(max_rel_error, "--max-rel-error", d.max_error_vs_spread),
        max_clipped_fraction=_float_option(max_clipped, "--max-clipped", d.max_clipped_fraction),
        max_auc_drop=_float_option(max_auc_drop, "--max-auc-drop", d.max_auc_drop))


def _tasks(values) -> tuple[str, ...]:
    from pipeline.evaluation import parse_task_overrides

    values = tuple(values or ())
    _run(parse_task_overrides, values)  # refused here, before any work
    return values


def _run(fn, *args, **kwargs):
    """Call the library; a PipelineError becomes one line on stderr and its exit code."""
    try:
        return fn(*args, **kwargs)
    except PipelineError as exc:
        raise Exit(f"error: {exc.message}", code=exc.exit_code) from None
    except KeyboardInterrupt:
        raise Exit("interrupted: previous outputs are intact", code=130) from None


def _keras_model(model: str, keras_model, root: Path) -> str | None:
    """--keras-model as an absolute path; for the demo, its trained Keras model when cached."""
    if keras_model:
        return str(_path(keras_model))
    if model == "demo":
        from pipeline.demo import cached_model_path

        path = cached_model_path(root / ".cache")
        return str(path) if path.is_file() else None
    return None


@task(help={
    "model": "Keras model (.keras, .h5), SavedModel directory, or 'demo' (default)",
    "data": "representative data: .npy/.npz, image folder, or module:function (demo: built in)",
    "eval_data": "labelled held-out data (.npz with x and y, or image folder of class folders)",
    "io_type": "model input/output type for --mode int8: int8 (default) or uint8",
    "mode": "int8 (default), int16x8, or the non-deployable comparison modes dynamic, float16",
    "samples": "representative samples to calibrate with (default 200; 100-500 recommended)",
    "name": "output name: build/<name>/ (default: the model file's stem)",
    "out": "output root directory (default build)",
    "task": TASK_HELP,
    "verbose": "debug logging",
}, iterable=["task"])
def quantize(c, model=None, data=None, eval_data=None, io_type=None, mode="int8", samples=None,
             name=None, out=None, task=None, verbose=False):
    """Full-integer post-training quantization of a Keras model to TFLite, with a report."""
    _setup_logging(verbose)
    from pipeline.deploy import DeployRequest, job_for_request, run_stage

    request = DeployRequest(
        model=_setting(c, "model", model), data=data, eval_data=eval_data, mode=mode, io_type=io_type,
        samples=_int_option(_setting(c, "samples", samples), "--samples"), name=name,
        out=_path(_setting(c, "out", out)), tasks=_tasks(task))
    result = _run(run_stage, "quantize", job_for_request(request))
    from pipeline.console import quantize_summary, show

    show(quantize_summary(result))
    if result.float_ops:  # written, so `invoke check` can show the rest, but not full-integer
        first = result.float_ops[0]
        raise Exit(f"error: not deployable as a full-integer model: {first['label']} stayed float "
                   f"(fix: {first['replacement']})", code=1)
    return result


@task(help={
    "model": "Keras model (.keras, .h5), SavedModel directory, or 'demo' (default)",
    "data": "representative data (see `invoke --help quantize`)",
    "eval_data": "labelled held-out data for the accuracy report",
    "io_type": "int8 (default) or uint8 model I/O",
    "samples": "representative samples (default 200)",
    "name": "output name (default: the model file's stem)",
    "out": "output root directory (default build)",
    "target": "edgetpu, tflm or all (default)",
    "board": "board preset for the TFLM fit and the firmware (`invoke boards`; default: no fit check, "
             "firmware for qemu-mps2-an386)",
    "board_file": "your own board as a TOML file (fields as in pipeline/boards.toml; README, Boards)",
    "compiler": "path of edgetpu_compiler (default: $EDGETPU_COMPILER, then PATH; absent: skipped)",
    "port": "a device's serial port (or `invoke emulate`'s): run the golden vectors on it last",
    "baud": "baud rate for --port (default 115200)",
    "force": "rerun every stage even when its inputs are unchanged",
    "diagnose": "diagnose layer by layer even when every verify check passed (it runs when one fails)",
    "recommend": "with the diagnosis, measure remedies even without an accuracy loss (slow)",
    "mode": "int8 (default; both targets) or int16x8 (16-bit activations: TFLM only)",
    "task": TASK_HELP,
    "verify_samples": "evaluation samples verify runs on each host runtime (default 200)",
    **THRESHOLD_HELP,
    "verbose": "debug logging",
}, iterable=["task"])
def deploy(c, model=None, data=None, eval_data=None, io_type=None, samples=None, name=None, out=None,
           target=None, board=None, board_file=None, compiler=None, port=None, baud=None, force=False,
           diagnose=False, recommend=False, mode=None, task=None, verify_samples=None, max_lsb=None,
           min_agreement=None, max_drop=None, max_rel_error=None, max_clipped=None, max_auc_drop=None,
           verbose=False):
    """Run the whole chain (skipping unchanged stages); with no arguments, on the built-in demo."""
    _setup_logging(verbose)
    from pipeline.deploy import DeployRequest, deploy as run_deploy, raise_if_not_deployable
    from pipeline.console import deploy_summary, show, stage_line
    from pipeline.stages.base import DiagnoseOptions

    thresholds = _thresholds(max_lsb, min_agreement, max_drop, max_rel_error, max_clipped, max_auc_drop)
    request = DeployRequest(
        model=_setting(c, "model", model), data=_setting(c, "data", data),
        eval_data=_setting(c, "eval_data", eval_data), io_type=_setting(c, "io_type", io_type),
        samples=_int_option(_setting(c, "samples", samples), "--samples"), name=_setting(c, "name", name),
        out=_path(_setting(c, "out", out)), target=_setting(c, "target", target),
        board=_board(c, board, board_file), compiler=_setting(c, "compiler", compiler),
        port=_setting(c, "port", port), baud=_int_option(_setting(c, "baud", baud), "--baud"), force=force,
        diagnose=diagnose, diagnose_options=DiagnoseOptions(recommend=recommend),
        mode=_setting(c, "mode", mode), tasks=_tasks(task), thresholds=thresholds,
        verify_samples=_positive(verify_samples, "--verify-samples", 200))
    result = _run(run_deploy, request, on_stage=lambda run: show(stage_line(run)))
    print()
    show(deploy_summary(result))
    _run(raise_if_not_deployable, result)
    return result


@task(help={
    "model": "a .tflite model, or 'demo' (default: build/demo/model_int8.tflite)",
    "target": "edgetpu, tflm or all (default)",
    "board": "board preset to check flash and RAM against (`invoke boards`)",
    "board_file": "your own board as a TOML file (instead of --board)",
    "json": "print exactly one JSON object on stdout",
    "strict": "exit 1 when the model is not fully deployable",
    "no_interpreter": "skip the TFLM interpreter run and arena search",
    "keras_model": "the .keras/.h5 the model came from: confirms each op's layer (read, never loaded)",
    "out": "output root for the demo (default build)",
})
def check(c, model=None, target="all", board=None, board_file=None, json=False, strict=False,
          no_interpreter=False, keras_model=None, out=None):
    """Operator compatibility for the Edge TPU and TFLM, the predicted partition and board fit."""
    import json as json_module

    from pipeline.deploy import DeployRequest, job_for_model, resolve_model, run_stage, validate_request
    from pipeline.console import check_table, show

    _setup_logging(False)
    root = _path(_setting(c, "out", out))
    request = DeployRequest(target=target, board=_board(c, board, board_file, configured=False),
                            run_interpreter=not no_interpreter,
                            keras_model=_keras_model(_setting(c, "model", model), keras_model, root))
    _run(validate_request, request)  # before the demo would be quantized for nothing
    path = _run(resolve_model, _setting(c, "model", model), root)
    result = _run(run_stage, "check", job_for_model(path, request))
    if json:
        print(json_module.dumps(result.to_json()))
    else:
        show(check_table(result))
    if strict and not result.deployable:
        raise Exit(code=1)
    return result


@task(help={
    "model": "a .tflite model, or 'demo' (default: build/demo/model_int8.tflite)",
    "compiler": "path of edgetpu_compiler (default: $EDGETPU_COMPILER, then PATH)",
    "timeout": "wall-clock limit for the compiler in seconds (default 600)",
    "require": "exit 2 when no compiler is found instead of skipping",
    "min_runtime_version": "oldest Edge TPU runtime the model must run on (-m)",
    "num_segments": "split for pipelining across N Edge TPUs (-n)",
    "intermediate_tensors": "comma-separated tensors where the Edge TPU part ends (-i)",
    "enable_multiple_subgraphs": "allow several Edge TPU subgraphs (-a, experimental)",
    "search_delegate": "on failure, retry with the cut moved earlier (-d, compiler 16)",
    "delegate_search_step": "ops to step back per retry with --search-delegate (-k)",
    "timeout_sec": "the compiler's own timeout (-t, compiler 16)",
    "out": "output root for the demo (default build)",
})
def compile(c, model=None, compiler=None, timeout=None, require=False, min_runtime_version=None,
            num_segments=None, intermediate_tensors=None, enable_multiple_subgraphs=False,
            search_delegate=False, delegate_search_step=None, timeout_sec=None, out=None):
    """Compile for the Edge TPU with edgetpu_compiler when installed; explain the result."""
    from pipeline.deploy import DeployRequest, job_for_model, resolve_model, run_stage
    from pipeline.model import CompileOptions
    from pipeline.stages.compile import DEFAULT_WALL_TIMEOUT_S

    _setup_logging(False)
    ints = {k: _int_option(v, f"--{k.replace('_', '-')}") if v is not None else None for k, v in
            dict(min_runtime_version=min_runtime_version, num_segments=num_segments,
                 delegate_search_step=delegate_search_step, timeout_sec=timeout_sec).items()}
    options = CompileOptions(intermediate_tensors=intermediate_tensors,
                             enable_multiple_subgraphs=enable_multiple_subgraphs,
                             search_delegate=search_delegate, **ints)
    wall = _float_option(timeout, "--timeout", DEFAULT_WALL_TIMEOUT_S)
    path = _run(resolve_model, _setting(c, "model", model), _path(_setting(c, "out", out)))
    request = DeployRequest(compiler=compiler, compile_options=options, compile_timeout_s=wall,
                            require_compiler=require)
    result = _run(run_stage, "compile", job_for_model(path, request))
    print(f"compile: {result.message}")
    for line in result.explanations:
        print(f"  {line}")
    for d in result.comparison:
        print(f"  prediction differs for {d['op']}: compiled {d['compiled_mapped']} mapped / "
              f"{d['compiled_cpu']} CPU, predicted {d['predicted_mapped']} / {d['predicted_cpu']}")
    if result.compiled:
        print(f"  outputs   {result.output_dir}")
    return result


@task(help={
    "model": "an int8 .tflite model, or 'demo' (default: build/demo/model_int8.tflite)",
    "board": "board preset: memory map, flash/RAM fit, cross-compile flags (default qemu-mps2-an386)",
    "board_file": "your own board as a TOML file (fields as in pipeline/boards.toml; README, Boards)",
    "out": "project directory (default: firmware/ next to the model)",
    "vectors": "golden test vectors to embed (default 4)",
    "tolerance": "accepted output difference in quantized steps (default 0: bit-exact)",
    "data": "samples for the golden inputs (.npy/.npz/images/module:function)",
    "build": "also build and run the self-test: on the host, and cross-compiled (under QEMU when possible)",
    "tflm_tree": "TFLite Micro tree for --build (default $TFLM_TREE)",
})
def firmware(c, model=None, board=None, board_file=None, out=None, vectors=None, tolerance=None, data=None,
             build=False, tflm_tree=None):
    """Render a TFLite Micro firmware project (CMake) that tests itself at boot."""
    from pipeline.boards import fit_line
    from pipeline.deploy import DeployRequest, job_for_model, record, resolve_model, run_stage
    from pipeline.stages.firmware import DEFAULT_VECTORS, build_and_verify, firmware_options, tflm_tree_path

    _setup_logging(False)
    # every option first: a wrong one is refused before the demo would be quantized
    chosen = _board(c, board, board_file)
    tree = _run(tflm_tree_path, _path(tflm_tree) if tflm_tree else None) if build else None
    if build and tree is None:
        raise Exit("error: --build: no TFLite Micro tree (fix: pass --tflm-tree DIR or set TFLM_TREE)", code=2)
    tolerance = _int_option(tolerance, "--tolerance") if tolerance is not None else 0
    request = DeployRequest(board=chosen, firmware_out=_path(out) if out else None, tolerance=tolerance, data=data,
                            vectors=_int_option(vectors, "--vectors") if vectors is not None else DEFAULT_VECTORS,
                            firmware_build=build)  # with --build, the linked image decides the fit
    path = _run(resolve_model, _setting(c, "model", model), _path(_setting(c, "out", None)))
    job = job_for_model(path, request, borrow=("quantize",))
    result = _run(run_stage, "firmware", job)
    print(f"firmware: {result.output_dir} ({len(result.files)} files)")
    print(f"  resolver  MicroMutableOpResolver<{len(result.resolver_methods)}>: {', '.join(result.resolver_methods)}")
    print(f"  arena     {result.arena_bytes} B ({result.arena_measured} B measured by {result.arena_source} + margin)")
    print(f"  vectors   {result.vectors} golden vectors, checked at boot")
    if result.board:
        print(f"  board     {fit_line(result.board)}")
    if not build:
        return result
    from pipeline.console import build_line
    from pipeline.stages.firmware_build import raise_if_the_image_does_not_fit

    result = _run(build_and_verify, path, result, tree, **firmware_options(job))
    record(job, "firmware", result)
    failed = broken = too_big = False
    for run in result.builds.values():
        print(f"  {run['kind']:<28} {build_line(run)}")
        failed |= bool(run.get("ran")) and not run.get("passed")
        broken |= "error" in run
        too_big |= bool(run.get("does_not_fit"))
    a = result.arena
    print(f"  arena     host {a.host_bytes} B ({a.host_source}); board {a.board_bytes} B ({a.board_source})")
    if result.board:
        print(f"  board     {fit_line(result.board)}")
    if failed:
        raise Exit("error: the firmware self-test failed (see the lines above)", code=1)
    _run(raise_if_the_image_does_not_fit, result, chosen)
    if too_big:
        raise Exit("error: the image does not fit the board: the linker says by how much (see above)", code=1)
    if broken:
        raise Exit("error: --build: a build failed (see the lines above; the host result stands)", code=2)
    return result


@task(help={
    "model": "an int8/int16x8 .tflite model, or 'demo' (default: build/demo/model_int8.tflite)",
    "data": "samples (.npz with labels as 'y' or 'y_<output>', image class folders, .npy, module:function; "
            "demo: its test split)",
    "samples": "how many samples to run (default 200)",
    "target": "edgetpu, tflm or all (default): which target's checks decide the exit code",
    "task": TASK_HELP,
    **THRESHOLD_HELP,
}, iterable=["task"])
def verify(c, model=None, data=None, samples=None, target="all", task=None, max_lsb=None, min_agreement=None,
           max_drop=None, max_rel_error=None, max_clipped=None, max_auc_drop=None):
    """Run the model on each target's host runtime and score every output against the float model.

    TFLM for MCUs, LiteRT's built-in kernels for the Edge TPU's CPU model; LiteRT's reference
    kernels cross-check TFLM."""
    from pipeline.deploy import DeployRequest, job_for_model, resolve_model, run_stage, validate_request
    from pipeline.stages.verify import DEFAULT_SAMPLES, raise_if_failed
    from pipeline.console import show, verify_summary

    _setup_logging(False)
    thresholds = _thresholds(max_lsb, min_agreement, max_drop, max_rel_error, max_clipped, max_auc_drop)
    request = DeployRequest(data=data, thresholds=thresholds, target=target, tasks=_tasks(task),
                            verify_samples=_positive(samples, "--samples", DEFAULT_SAMPLES))
    _run(validate_request, request)
    path = _run(resolve_model, _setting(c, "model", model), _path(_setting(c, "out", None)))
    result = _run(run_stage, "verify", job_for_model(path, request, borrow=("quantize",)))
    show(verify_summary(result))
    _run(raise_if_failed, result, target)
    return result


def _positive(value, option: str, default: int) -> int:
    return default if value is None else _int_option(value, option)


@task(help={
    "model": "an int8 .tflite model with model_float.tflite beside it, or 'demo' (default)",
    "data": "samples (.npz with labels as 'y', image class folders, .npy, module:function; demo: its test split)",
    "samples": "how many samples to diagnose on (default 32: every value of every op output counts)",
    "keras_model": "the .keras/.h5 the model came from: confirms layer names (read, never loaded); "
                   "--recommend re-converts it",
    "int16": "an int16x8 .tflite of the same model (`invoke quantize --mode int16x8`) to diagnose beside",
    "recommend": "measure remedies (int16x8, per-tensor weights, other calibration, a layer in float): "
                 "re-runs the TF converter, slow",
    "calibration_data": "with --recommend: the samples quantize calibrated on (default: the report's)",
    "runtimes": "the two runtimes whose op outputs are compared (default litert,tflm, or tflm,device "
                "with --port; also litert-ref, litert-xnnpack; 'none' skips)",
    "max_lsb": "difference between the runtimes that is not a divergence, in quantized steps (default 0)",
    "strict": "exit 1 when the runtimes part ways beyond --max-lsb or cannot both run the model",
    "json": "print exactly one JSON object (the report's diagnose section)",
    "out": "output root for the demo (default build)",
    "port": "a board over serial (or `invoke emulate`'s port) as the runtime 'device': every op output "
            "read back over HIL (firmware built with -DHIL_SERVER=ON -DHIL_TENSORS=ON)",
    "baud": "with --port: baud rate (default 115200)",
    "timeout": "with --port: seconds to wait for each reply (default 5)",
})
def diagnose(c, model=None, data=None, samples=None, keras_model=None, int16=None, recommend=False,
             calibration_data=None, runtimes=None, max_lsb=None, strict=False, json=False, out=None,
             port=None, baud=None, timeout=None):
    """Which Keras layer loses the accuracy, and the first op where two runtimes part ways."""
    import json as json_module

    from pipeline.deploy import DeployRequest, job_for_model, resolve_model, run_stage
    from pipeline.runtime.device import DEVICE_RUNTIME
    from pipeline.runtime.tensor_capture import RUNTIMES
    from pipeline.stages.base import DiagnoseOptions

    _setup_logging(False)
    pair = None
    if runtimes != "none":
        pair = tuple(r.strip() for r in (runtimes or ("tflm,device" if port else "litert,tflm")).split(","))
        known = [*RUNTIMES, DEVICE_RUNTIME]
        if len(pair) != 2 or not set(pair) <= set(known):
            raise Exit(f"error: --runtimes: expected two of {', '.join(known)} separated by a comma, "
                       f"got '{runtimes}'", code=2)
        if DEVICE_RUNTIME in pair and not port:
            raise Exit(f"error: --runtimes: '{DEVICE_RUNTIME}' is a board over serial: pass --port", code=2)
    model = _setting(c, "model", model)
    root = _path(_setting(c, "out", out))
    count = _int_option(samples, "--samples") if samples is not None else DiagnoseOptions.samples
    if count < 1:
        raise Exit(f"error: --samples: at least 1 sample, got {count}", code=2)
    options = DiagnoseOptions(samples=count,
                              int16_model=_path(int16) if int16 else None, recommend=recommend, runtimes=pair,
                              tolerance_lsb=_float_option(max_lsb, "--max-lsb", 0.0),
                              calibration_data=calibration_data)
    baud = _int_option(baud, "--baud") if baud is not None else 115200
    hil_timeout_s = _float_option(timeout, "--timeout", 5.0)
    path = _run(resolve_model, model, root)
    request = DeployRequest(model="demo" if model == "demo" else str(path), data=data, out=root,
                            keras_model=_keras_model(model, keras_model, root), diagnose=True,
                            diagnose_options=options, port=port, baud=baud, hil_timeout_s=hil_timeout_s)
    result = _run(run_stage, "diagnose", job_for_model(path, request, borrow=("quantize",)))
    section = result.to_json()
    if json:
        print(json_module.dumps(section, allow_nan=False))
    else:
        from pipeline.console import diagnose_summary, show

        show(diagnose_summary(section))
    if strict and (section["first_divergence"] or section["runtime_error"]):
        raise Exit(code=1)
    return result


@task(help={
    "port": "serial device of the board (or the path `invoke emulate` printed)",
    "baud": "baud rate (default 115200)",
    "model": "the .tflite the device should run, or 'demo' (default)",
    "data": "samples for the vectors (default: the same golden vectors as the firmware)",
    "vectors": "how many vectors to run (default 4)",
    "tolerance": "accepted output difference in quantized steps (default 0)",
    "timeout": "seconds to wait for each reply (default 5)",
    "retries": "retries after a timeout or a damaged reply (default 2)",
    "json": "print one JSON object (for rigs)",
})
def hil(c, port, baud=None, model=None, data=None, vectors=None, tolerance=None, timeout=None, retries=None,
        json=False):
    """Run the golden vectors on a device over serial and compare with the host TFLM."""
    import json as json_module

    from pipeline.deploy import DeployRequest, job_for_model, resolve_model, run_stage

    _setup_logging(False)
    request = DeployRequest(port=port, baud=_int_option(baud, "--baud") if baud is not None else 115200, data=data,
                            vectors=_int_option(vectors, "--vectors") if vectors is not None else 4,
                            tolerance=_int_option(tolerance, "--tolerance") if tolerance is not None else 0,
                            hil_timeout_s=_float_option(timeout, "--timeout", 5.0),
                            hil_retries=_int_option(retries, "--retries") if retries is not None else 2)
    path = _run(resolve_model, _setting(c, "model", model), _path(_setting(c, "out", None)))
    result = _run(run_stage, "hil", job_for_model(path, request))
    if json:
        print(json_module.dumps(result.to_json()))
    else:
        print(f"hil: {result.device.get('board', '?')} on {port}, firmware {result.device.get('firmware', '?')}")
        for v in result.vectors:
            state = "PASS" if v["passed"] else "FAIL"
            print(f"  {v['name']}: {state} max diff {v['max_difference']}, {v['device_us']} us on the device")
        print(f"HIL {'PASS' if result.passed else 'FAIL'} {sum(v['passed'] for v in result.vectors)}/"
              f"{len(result.vectors)}" + (f" ({result.retries} retries)" if result.retries else ""))
    if not result.passed:
        raise Exit(code=1)
    return result


@task(help={
    "model": "the .tflite the emulated device runs, or 'demo' (default)",
    "fault": "misbehave on purpose, to test a rig: garble, drop-byte, wrong-hash, hang, wrong-output, reset, "
             "alter-op (op --op computes a wrong value: what `invoke diagnose --port` must find)",
    "op": "the op index alter-op alters",
    "tensors": "preserve every tensor and answer TENSOR, as firmware built with -DHIL_TENSORS=ON "
               "(default; --no-tensors: as normal firmware)",
})
def emulate(c, model=None, fault=None, op=None, tensors=True):
    """A device on a pseudo-terminal speaking the HIL protocol (TFLM interpreter behind it)."""
    from pipeline.runtime.device import Emulator

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    model = _setting(c, "model", model)
    fault_op = _int_option(op, "--op") if op is not None else None
    if model == "demo":  # the stage registry is imported only when the demo may need quantizing
        from pipeline.deploy import resolve_model

        path = _run(resolve_model, model, _path(_setting(c, "out", None)))
    else:
        path = _path(model)
    emulator = _run(Emulator, path, fault=fault, tensors=tensors,
                    fault_op=fault_op)
    print(emulator.port, flush=True)  # the first line: rigs read the port path from it
    try:
        emulator.serve(stop=lambda: bool(stopping))
    except KeyboardInterrupt:
        pass
    finally:
        emulator.close()


@task
def boards(c):
    """List the board presets (flash, RAM, CPU) that --board accepts."""
    from pipeline.boards import boards as all_boards
    from pipeline.console import boards_table, show

    show(boards_table(all_boards().values()))


ns = Collection(quantize, check, compile, firmware, verify, diagnose, hil, emulate, boards, deploy)
# Invoke's defaults are all None: it takes a variable's string as it is, and _setting parses it
ns.configure({"pipeline": invoke_defaults()})


class ProjectProgram(Program):
    """`edge-deploy`: the same tasks for users who keep no tasks.py. Invoke only looks for a
    project invoke.yaml next to a discovered tasks.py; here it is read from the current
    directory, so a team's committed deploy settings apply either way."""

    def run(self, argv=None, exit: bool = True) -> None:
        if hasattr(signal, "SIGPIPE"):
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        super().run(argv, exit)

    parse_tasks = _bad_arguments_are_bad_input(Program.parse_tasks)

    def update_config(self, merge: bool = True) -> None:
        _check_configuration(sys.argv[1:], project_dir=Path.cwd())
        self.config.set_project_location(os.getcwd())
        self.config.load_project(merge=False)
        super().update_config(merge)


program = ProjectProgram(namespace=ns, version=__version__, name="edge-deploy", binary="edge-deploy")
