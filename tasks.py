"""Invoke tasks: parse options, call one `pipeline` function, print the result, map errors to
exit codes (0 ok, 1 not deployable, 2 bad input or a failing tool). No heavy imports here:
`invoke --list` must not load TensorFlow."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from invoke import Collection, Exit, task

from pipeline.errors import PipelineError

DEFAULTS = {"model": "demo", "out": "build", "samples": 200}


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s: %(message)s" if verbose else "%(message)s",
                        stream=sys.stderr, force=True)


def _run(fn, *args, **kwargs):
    """Call the library; a PipelineError becomes one line on stderr and its exit code."""
    try:
        return fn(*args, **kwargs)
    except PipelineError as exc:
        raise Exit(f"error: {exc.message}", code=exc.exit_code) from None
    except KeyboardInterrupt:
        raise Exit("interrupted: previous outputs are intact", code=130) from None


@task(help={
    "model": "Keras model (.keras, .h5), SavedModel directory, or 'demo' (default)",
    "data": "representative data: .npy/.npz, image folder, or module:function (demo: built in)",
    "eval_data": "labelled held-out data (.npz with x and y, or image folder of class folders)",
    "io_type": "model input/output type for --mode int8: int8 (default) or uint8",
    "mode": "int8 (default), int16x8, or the non-deployable comparison modes dynamic, float16",
    "samples": "representative samples to calibrate with (default 200; 100-500 recommended)",
    "name": "output name: build/<name>/ (default: the model file's stem)",
    "out": "output root directory (default build)",
    "verbose": "debug logging",
})
def quantize(c, model=None, data=None, eval_data=None, io_type=None, mode="int8", samples=None,
             name=None, out=None, verbose=False):
    """Full-integer post-training quantization of a Keras model to TFLite, with a report."""
    _setup_logging(verbose)
    from pipeline.quantize import QuantizeRequest, quantize as run_quantize

    cfg = c.config.get("pipeline", {})
    request = QuantizeRequest(
        model=model or cfg.get("model", DEFAULTS["model"]), data=data, eval_data=eval_data,
        mode=mode, io_type=io_type, samples=int(samples or cfg.get("samples", DEFAULTS["samples"])),
        name=name, out=Path(out or cfg.get("out", DEFAULTS["out"])))
    result = _run(run_quantize, request)
    from pipeline.summary import quantize_summary

    print(quantize_summary(result))
    return result


@task(help={
    "model": "Keras model (.keras, .h5), SavedModel directory, or 'demo' (default)",
    "data": "representative data (see `invoke --help quantize`)",
    "io_type": "int8 (default) or uint8 model I/O",
    "samples": "representative samples (default 200)",
    "name": "output name (default: the model file's stem)",
    "out": "output root directory (default build)",
    "verbose": "debug logging",
})
def deploy(c, model=None, data=None, io_type=None, samples=None, name=None, out=None, verbose=False):
    """Run the whole chain; with no arguments, on the built-in demo model."""
    # The chain grows stage by stage; today it is quantize (check, compile, firmware and
    # verify join as they land).
    quantize(c, model=model, data=data, io_type=io_type, samples=samples, name=name, out=out,
             verbose=verbose)


ns = Collection(quantize, deploy)
ns.configure({"pipeline": dict(DEFAULTS)})
