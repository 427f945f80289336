"""Compatibility checks: will this `.tflite` run on the Edge TPU, on TFLite Micro, on this board?

The rules live in data tables next to this file (`edgetpu_ops.json`, `tflm_ops.json`), each
stamped with its source and version; the modules here apply them generically.
"""
