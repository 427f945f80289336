"""What each target can run, as rules applied to a `.tflite`: the Edge TPU compiler's op table and
limits (edgetpu.py), TFLite Micro's kernels and resolver methods (tflm.py). The facts live in
data tables next to this file (`edgetpu_ops.json`, `tflm_ops.json`), each stamped with its source
and version; the modules apply them generically. The check stage reports them; compile compares
the compiler with them; firmware refuses what TFLM cannot run.
"""
