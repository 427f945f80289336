"""What the tasks print on stdout after a stage: short, aligned, and pointing at the files."""

from __future__ import annotations

from .model import QuantizeResult


def quantize_summary(r: QuantizeResult) -> str:
    io = ", ".join(f"{t.name} {t.dtype} {list(t.shape)} scale={t.scale:.6g} zp={t.zero_point}"
                   if t.scale is not None else f"{t.name} {t.dtype} {list(t.shape)}"
                   for t in r.inputs + r.outputs)
    lines = [
        f"quantize ({r.mode}): {r.quantized_model}",
        f"  size      {r.float_bytes} B float -> {r.quantized_bytes} B ({r.size_ratio:.3f}x)",
        f"  I/O       {io}",
    ]
    if not r.deployable_to:
        lines.append(f"  NOTE      --mode {r.mode} is for comparison only: not deployable to Edge TPU or TFLM")
    e = r.evaluation
    if e is not None:
        if e.labelled:
            lines.append(f"  accuracy  float {100 * e.float_accuracy:.2f}% -> {r.mode} "
                         f"{100 * e.quantized_accuracy:.2f}% ({e.accuracy_drop_points:+.2f} points drop) "
                         f"on {e.samples} samples of {e.source}")
        lines.append(f"  agreement top-1 {100 * e.top1_agreement:.2f}%, max |float-{r.mode}| "
                     f"{e.max_abs_error:.4f}")
    lines.append(f"  report    {r.output_dir / 'report.md'}")
    return "\n".join(lines)
