"""pipeline/runtime/convert.py: what is decided after TF's converter returns. The converter itself
runs in the quantize and zoo tests; here its results are real models built with the schema,
because the run-to-run variation of TF's MLIR quantizer (an unrolled LSTM's SPLIT float in
about one run in three) cannot be produced on demand."""

from __future__ import annotations

import pytest
from tflite_builder import chain

from pipeline.runtime.convert import MLIR_ATTEMPTS, ChildError, _float_ops, _retried

INTEGER = chain("RELU", (1, 4), (1, 4))
FLOAT_LEFT = chain("RELU", (1, 4), (1, 4), dtype="float32")


def test_float_ops_are_named_by_index_and_op():
    assert _float_ops(INTEGER) == []
    assert _float_ops(FLOAT_LEFT) == ["op 0 RELU"]


def _converter(results: list[bytes | Exception]):
    calls: list[bool] = []

    def convert(mlir: bool) -> bytes:
        calls.append(mlir)
        result = results[len(calls) - 1]
        if isinstance(result, Exception):
            raise result
        return result
    return convert, calls


def test_the_mlir_quantizer_is_rerun_when_the_older_one_shows_the_op_can_be_integer():
    convert, calls = _converter([INTEGER, FLOAT_LEFT, INTEGER])
    data, quantizer = _retried(convert, FLOAT_LEFT, ["op 0 RELU"])
    assert data == INTEGER and calls == [False, True, True]
    assert quantizer["name"] == "mlir" and quantizer["attempts"] == 3 and "op 0 RELU" in quantizer["note"]


def test_the_older_quantizers_model_is_kept_when_every_mlir_run_leaves_the_op_float():
    legacy = chain("RELU", (1, 8), (1, 8))
    convert, calls = _converter([legacy] + [FLOAT_LEFT] * (MLIR_ATTEMPTS - 1))
    data, quantizer = _retried(convert, FLOAT_LEFT, ["op 0 RELU"])
    assert data == legacy and calls == [False] + [True] * (MLIR_ATTEMPTS - 1)
    assert quantizer["name"] == "legacy" and quantizer["attempts"] == MLIR_ATTEMPTS


@pytest.mark.parametrize("legacy", [FLOAT_LEFT, ChildError("Quantization not yet supported for op: 'SIN'")],
                         ids=["float too", "refused"])
def test_ops_float_for_both_quantizers_are_the_models_and_cost_no_retries(legacy):
    convert, calls = _converter([legacy])
    assert _retried(convert, FLOAT_LEFT, ["op 0 RELU"]) == (FLOAT_LEFT, None)
    assert calls == [False]


def test_tensorflow_is_imported_without_scikit_learn_which_still_imports():
    """pipeline/runtime/tf.py: Keras's scikit-learn wrappers cost a fifth of every TF import."""
    import subprocess
    import sys

    from conftest import ROOT

    code = ("import sys; from pipeline.runtime.tf import import_tensorflow; tf = import_tensorflow(); "
            "import keras; print('sklearn' in sys.modules); import sklearn.datasets; print(sklearn.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "sklearn"]
