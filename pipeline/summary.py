"""What the tasks print on stdout after a stage: short, aligned, and pointing at the files."""

from __future__ import annotations

from typing import Any

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


def stage_line(run) -> str:
    note = f" ({run.note})" if run.note else ""
    return f"{run.name:<9} {run.status:<15} {run.seconds:7.2f} s{note}"


def deploy_summary(result) -> str:
    """What was produced where, and the numbers a CI log or a rig needs at a glance."""
    out = result.output_dir
    q = (result.stage("quantize").result if result.stage("quantize") else {}) or {}
    c = (result.stage("check").result if result.stage("check") else {}) or {}
    k = (result.stage("compile").result if result.stage("compile") else {}) or {}
    f = (result.stage("firmware").result if result.stage("firmware") else {}) or {}
    lines = [f"deploy {result.name} (target {result.target}): "
             f"{'DEPLOYABLE' if result.deployable else 'NOT deployable'}"]
    if q:
        files = q["files"]
        lines.append(f"  model      {out / files['quantized']['path']}: {files['quantized']['bytes']} B "
                     f"({q['size_ratio']:.3f}x of float)")
        e = q.get("evaluation") or {}
        if e.get("labelled"):
            lines.append(f"  accuracy   float {100 * e['float_accuracy']:.2f}% -> int8 "
                         f"{100 * e['quantized_accuracy']:.2f}% on {e['samples']} samples of {e['source']}")
        elif e:
            lines.append(f"  agreement  top-1 {100 * e['top1_agreement']:.2f}% float vs int8 on {e['samples']} samples")
    if c.get("edgetpu"):
        e = c["edgetpu"]
        compiled = _compiled_line(k)
        lines.append(f"  Edge TPU   {e['mapped_ops']}/{e['total_ops']} ops mapped (predicted){compiled}")
    if c.get("tflm"):
        t = c["tflm"]
        lines.append(f"  TFLM       {'runs' if t['compatible'] else 'does NOT run'}; "
                     f"arena {t['arena_bytes']} B measured" if t["arena_bytes"] else
                     f"  TFLM       {'runs' if t['compatible'] else 'does NOT run'}")
    if c.get("board"):
        b = c["board"]
        from .boards import fit_line

        lines.append(f"  board      {fit_line(b)}")
    if f:
        lines.append(f"  firmware   {out / f['output_dir']}/ ({len(f['files'])} files, arena {f['arena_bytes']} B, "
                     f"{f['test_vectors']} golden vectors)")
    v = (result.stage("verify").result if result.stage("verify") else {}) or {}
    if v:
        ident = v.get("comparisons", {}).get("litert_vs_tflm", {})
        lines.append(f"  verify     {'PASS' if v['passed'] else 'FAIL'} on {v['samples']} samples: LiteRT vs TFLM "
                     f"{'bit-exact' if ident.get('identical') else 'max %s LSB' % ident.get('max_lsb_difference')}")
    h = (result.stage("hil").result if result.stage("hil") else {}) or {}
    if h:
        ok = sum(v["passed"] for v in h["vectors"])
        lines.append(f"  hil        {'PASS' if h['passed'] else 'FAIL'} {ok}/{len(h['vectors'])} on "
                     f"{h['device'].get('board', '?')}")
    for reason in result.reasons:
        lines.append(f"  why        {reason}")
    lines.append(f"  report     {out / 'report.md'}")
    return "\n".join(lines)


def _compiled_line(k: dict[str, Any]) -> str:
    if not k:
        return ""
    if not k.get("compiled"):
        return "; not compiled (no edgetpu_compiler)"
    models = k.get("compiled_models") or [{}]
    return f"; compiled: {models[0].get('mapped_ops')} mapped by edgetpu_compiler {k.get('compiler_version')}"


def verify_summary(r) -> str:
    lines = [f"verify: {r.samples} samples of {r.source}: {'PASS' if r.passed else 'FAIL'}"]
    for b in r.backends:
        if b.ran:
            acc = f"accuracy {100 * b.accuracy:6.2f}%" if b.accuracy is not None else ""
            lat = f"{b.latency_ms:8.3f} ms" if b.latency_ms is not None else ""
            lines.append(f"  {b.name:<20} {lat:>11}  {acc:<17} {b.library}, delegate: {b.delegate or 'none'}"
                         + (f" ({b.note})" if b.note else ""))
        else:
            lines.append(f"  {b.name:<20} {'not run':>11}  {b.note}")
    for c in r.checks:
        lines.append(f"  {'ok  ' if c['passed'] else 'FAIL'} {c['check']}: {c['detail']}")
    return "\n".join(lines)
