"""Importing TensorFlow quietly, and keeping its C++ chatter out of the user's terminal.

TensorFlow prints oneDNN banners, absl warnings and converter diagnostics straight to file
descriptor 2. The pipeline owns stderr (one clear line per error), so TF's output is captured
and only surfaced when it explains a failure.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator


def import_tensorflow():
    """TensorFlow, imported without scikit-learn: Keras's scikit-learn wrappers (which the
    pipeline never uses) import it and SciPy when they are installed, a fifth of the import's
    time in every process that converts. scikit-learn imports normally afterwards."""
    import sys

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # same numbers on every x86 host
    blocked = "sklearn" not in sys.modules
    if blocked:
        sys.modules["sklearn"] = None  # `import sklearn` raises ImportError: Keras goes without
    try:
        with captured_stderr():
            import tensorflow as tf
    finally:
        if blocked and sys.modules.get("sklearn", 0) is None:
            del sys.modules["sklearn"]
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)
    tf.get_logger().setLevel("ERROR")
    return tf


_real_stderr = None


def real_stderr():
    """The terminal's stderr even while `captured_stderr` redirects fd 2 (for progress)."""
    global _real_stderr
    if _real_stderr is None:
        _real_stderr = os.fdopen(os.dup(2), "w", buffering=1, closefd=True)
    return _real_stderr


class CapturedOutput:
    text: str = ""


@contextlib.contextmanager
def captured_stderr() -> Iterator[CapturedOutput]:
    """Redirect fd 2 (C++ and Python writers alike) into a buffer for the duration."""
    result = CapturedOutput()
    real_stderr()  # take a handle on the real stream before fd 2 is redirected
    with tempfile.TemporaryFile(mode="w+b") as sink, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield result
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            result.text = sink.read().decode("utf-8", "replace")
