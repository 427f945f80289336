"""Everything the tasks show on a terminal, rendered with `rich`: progress for long work, the
per-op tables, the stage lines and the summaries.

On a terminal: colour and a live progress bar that clears itself. Anywhere else (CI logs, pipes,
files): no colour, no control codes, lines never wrapped, and progress as a few plain lines, so
logs stay greppable. `--json` output never comes through here. No `print` in the library: the
tasks call these functions.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .boards import fit_line

_QUIET_FOR_S = 1.0  # work that finishes sooner shows no progress at all
_LINE_STEPS = (25, 50, 75)  # percent marks printed when stderr is not a terminal
_LOG_WIDTH = 10_000  # not a terminal: never wrap a line a script may grep

_STATUS_STYLE = {"ran": "green", "skipped": "cyan", "no compiler": "yellow", "not applicable": "dim",
                 "failed": "bold red"}


def make_console(stream=None) -> Console:
    stream = stream or sys.stdout
    tty = bool(getattr(stream, "isatty", lambda: False)())
    return Console(file=stream, markup=False, highlight=False, emoji=False, soft_wrap=not tty,
                   width=None if tty else _LOG_WIDTH, force_terminal=tty, color_system="auto" if tty else None)


def show(*renderables, stream=None) -> None:
    """Print to stdout (as it is now: tests and rigs redirect it). Off a terminal, cells padded
    to their column's width would leave trailing blanks on every line of a log: stripped."""
    stream = stream or sys.stdout
    console = make_console(stream)
    if console.is_terminal:
        console.print(*renderables)
        return
    with console.capture() as captured:
        console.print(*renderables)
    stream.write("\n".join(line.rstrip() for line in captured.get().split("\n")))
    stream.flush()


# --- progress ------------------------------------------------------------------------------------

class Progress:
    """Progress of `total` steps under `label`: nothing for quick work; on a terminal a rich bar,
    removed when the work ends; otherwise a plain line at 25, 50 and 75%."""

    def __init__(self, label: str, total: int, stream=None):
        from .runtime.tf import real_stderr

        self.label = label
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream or real_stderr()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self._bar = None
        self._task = None
        self._next_mark = 0

    def __enter__(self) -> Progress:
        return self

    def advance(self, n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        if time.perf_counter() - self.start < _QUIET_FOR_S:
            return
        if self.tty:
            self._show_bar()
            return
        pct = 100 * self.done // self.total
        while self._next_mark < len(_LINE_STEPS) and pct >= _LINE_STEPS[self._next_mark]:
            self.stream.write(f"  {self.label}: {_LINE_STEPS[self._next_mark]}% ({self.done}/{self.total})\n")
            self._next_mark += 1

    def _show_bar(self) -> None:
        if self._bar is None:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,
                                       TaskProgressColumn, TextColumn)

            self._bar = RichProgress(TextColumn("  {task.description}", markup=False), BarColumn(),
                                     TaskProgressColumn(), MofNCompleteColumn(), transient=True,
                                     console=make_console(self.stream), auto_refresh=False)
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total)
        self._bar.update(self._task, completed=self.done, refresh=True)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()


# --- stage lines and the deploy summary -------------------------------------------------------------

def _grid(*widths: int | None) -> Table:
    table = Table.grid(padding=(0, 1, 0, 0))
    for width in widths:
        table.add_column(width=width, no_wrap=width is not None)
    return table


def stage_line(run) -> Table:
    row = _grid(9, 15, 9, None)
    row.add_row(run.name, Text(run.status, style=_STATUS_STYLE.get(run.status, "")), f"{run.seconds:7.2f} s",
                f"({run.note})" if run.note else "")
    return row


def _summary_grid(title: Text, rows: list[tuple[str, str]]) -> Table:
    table = _grid(1, 10, None)
    table.title = None
    grid = Table.grid()
    grid.add_column()
    grid.add_row(title)
    for label, value in rows:
        table.add_row("", label, value)
    grid.add_row(table)
    return grid


def deploy_summary(result) -> Table:
    """What was produced where, and the numbers a CI log or a rig needs at a glance."""
    out_dir = result.output_dir

    def section(name: str) -> dict[str, Any]:
        run = result.stage(name)
        return (run.result if run else {}) or {}

    q, c, k, f, v, h = (section(n) for n in ("quantize", "check", "compile", "firmware", "verify", "hil"))
    g = section("diagnose")
    rows: list[tuple[str, str]] = []
    if q:
        files = q["files"]
        rows.append(("model", f"{out_dir / files['quantized']['path']}: {files['quantized']['bytes']} B "
                              f"({q['size_ratio']:.3f}x of float)"))
        # quantize's own scores (LiteRT, every evaluation sample) only when verify has none:
        # verify's per-target lines below are the gated numbers, on --verify-samples, and two
        # accuracies of one model on two sample counts read as a contradiction
        e = {} if v.get("metrics") else (q.get("evaluation") or {})
        outputs = e.get("outputs") or []
        if e.get("labelled"):
            rows.append(("accuracy", f"float {100 * e['float_accuracy']:.2f}% -> {q['mode']} "
                                     f"{100 * e['quantized_accuracy']:.2f}% on {e['samples']} samples of {e['source']}"))
        elif e and e.get("top1_agreement") is not None:
            rows.append(("agreement", f"top-1 {100 * e['top1_agreement']:.2f}% float vs {q['mode']} on "
                                      f"{e['samples']} samples"))
        if len(outputs) > 1 or any(o["task"] != "classification" for o in outputs):
            rows += [("output", f"{line} (float vs {q['mode']} on LiteRT, {e['samples']} samples)")
                     for line in output_lines(outputs, "metrics")]
        rows += [("rewrite", f"`{r['layer']}` ({r['class']}): {r['change'] or 'kept'}: {r['note']}")
                 for r in q.get("rewrites") or []]
        rows += _quantizer_rows(q.get("quantizer"))
        rows += [("fix", _fix_line(f)) for f in q.get("layer_fixes") or []]
    if c.get("edgetpu"):
        e = c["edgetpu"]
        rows.append(("Edge TPU", f"{e['mapped_ops']}/{e['total_ops']} ops mapped (predicted){_compiled_note(k)}"))
        cut = [o for o in e.get("ops", []) if not o.get("mapped") and o.get("status") != "More than one subgraph is not supported"]
        for o in cut[:3]:  # the ops that keep it off the Edge TPU, not the ones after the cut
            named = o.get("keras_layer") or _layer_of(q, o["index"])
            layer = f" (layer `{named}`)" if named else ""
            rows.append(("", f"op {o['index']} {o['op']}{layer}: {o['status']}" + (f" (fix: {o['fix']})" if o.get("fix") else "")))
    if c.get("tflm"):
        t = c["tflm"]
        state = "runs" if t["compatible"] else "does NOT run"
        rows.append(("TFLM", f"{state}; arena {t['arena_bytes']} B measured" if t["arena_bytes"] else state))
    if c.get("board"):
        b = c["board"]
        rows.append(("board", fit_line(b)))
    if f:
        rows.append(("firmware", f"{out_dir / f['output_dir']}/ ({len(f['files'])} files, arena {f['arena_bytes']} B, "
                                 f"{f['test_vectors']} golden vectors)"))
    if v:
        rows.append(("verify", f"{'PASS' if _verify_passed(v, result.target) else 'FAIL'} for {result.target} "
                               f"on {v['samples']} samples of {v['source']}"))
        for target, label in (("tflm", "on TFLM"), ("edgetpu", "Edge TPU CPU model")):
            if (v.get("metrics") or {}).get(target):
                outputs = [{**o, "metrics": v["metrics"][target].get(o["name"], {})} for o in v.get("outputs", [])]
                rows += [("", f"{label}: {line}") for line in output_lines(outputs, "metrics")]
        cross = (v.get("comparisons") or {}).get("cross_runtime")
        if cross:
            rows.append(("", f"cross-check: {_cross_line(cross)}"))
    if g.get("layers") is not None:
        worst = g.get("worst_layers") or []
        rows.append(("diagnose", (f"worst {worst[0]['label']}" if worst else "no layer beyond its rounding limit")
                                 + f"; {_divergence_line(g.get('first_divergence'), g)}"))
    if h:
        ok = sum(x["passed"] for x in h["vectors"])
        rows.append(("hil", f"{'PASS' if h['passed'] else 'FAIL'} {ok}/{len(h['vectors'])} on "
                            f"{h['device'].get('board', '?')}"))
    rows += [("why", reason) for reason in result.reasons]
    rows.append(("report", str(out_dir / "report.md")))
    verdict = Text.assemble(f"deploy {result.name} (target {result.target}): ",
                            ("DEPLOYABLE", "bold green") if result.deployable else ("NOT deployable", "bold red"))
    return _summary_grid(verdict, rows)


def _layer_of(q: dict[str, Any], op_index: int) -> str | None:
    """The Keras layer quantize found for an op (`quantize.op_layers`)."""
    for o in q.get("op_layers") or []:
        if o.get("op_index") == op_index:
            return o.get("keras_layer")
    return None


def _verify_passed(v: dict[str, Any], target: str) -> bool:
    return all(c["passed"] for c in v.get("checks", [])
               if target == "all" or c.get("target") in (target, "all", None))


def _quantizer_rows(quantizer: dict | None) -> list[tuple[str, str]]:
    """Only a quantizer other than the converter's default is worth a line."""
    if not quantizer or not quantizer.get("attempts"):
        return []
    return [("quantizer", f"{quantizer['name']}: {quantizer['note']}")]


def _fix_line(f: dict[str, Any]) -> str:
    state = "stayed float" if f.get("in_float") else "has no kernel on either target"
    return f"{f['label']} {state}: {f['replacement']}"


def _cross_line(cross: dict[str, Any]) -> str:
    if cross.get("error"):
        return f"LiteRT reference kernels could not run: {cross['error']}"
    if cross.get("identical"):
        return "LiteRT reference kernels and TFLM bit-exact"
    parts = ", ".join(f"`{r['keras_name'] or r['output']}` {r['max_lsb']:g}/{r['tolerance_lsb']:g}"
                      for r in cross.get("outputs", []))
    line = f"LiteRT reference kernels vs TFLM max LSB/tolerance {parts}"
    fd = cross.get("first_divergence")
    if fd:
        line += f"; first differs at {fd['label']}, {fd['max_lsb']:g} LSB"
    return line


def output_lines(outputs: list[dict[str, Any]], key: str = "metrics") -> list[str]:
    """One line per output: its task and the numbers its verdict uses."""
    lines = []
    for o in outputs:
        m = o.get(key) or {}
        name = f"`{o.get('keras_name') or o['name']}` {o['task']}"
        if o["task"] == "classification":
            bits = [f"top-1 agreement {_pct(m.get('top1_agreement'))}"]
            if m.get("accuracy") is not None:
                bits.insert(0, f"accuracy {_pct(m.get('accuracy_float'))} -> {_pct(m['accuracy'])} "
                               f"({m['accuracy_drop_points']:+.2f} points)")
        else:
            bits = [f"RMSE/spread {_num(m.get('error_vs_spread'))}", f"SNR {_num(m.get('snr_db'))} dB"]
            if m.get("clipped_fraction") is not None:
                bits.append(f"clipped {_pct(m['clipped_fraction'])}")
            if m.get("reconstruction_error") is not None:
                bits.append(f"reconstruction error {_num(m.get('reconstruction_error_float'))} -> "
                            f"{_num(m['reconstruction_error'])}")
            if m.get("auc") is not None:
                bits.append(f"AUC {_num(m.get('auc_float'))} -> {_num(m['auc'])}")
            if m.get("rmse_vs_labels") is not None:
                bits.append(f"RMSE vs labels {_num(m.get('rmse_float_vs_labels'))} -> {_num(m['rmse_vs_labels'])}")
        lines.append(f"{name}: {', '.join(bits)}")
    return lines


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _compiled_note(k: dict[str, Any]) -> str:
    if not k:
        return ""
    if not k.get("compiled"):
        return "; not compiled (no edgetpu_compiler)"
    models = k.get("compiled_models") or [{}]
    return f"; compiled: {models[0].get('mapped_ops')} mapped by edgetpu_compiler {k.get('compiler_version')}"


# --- quantize, check, verify ---------------------------------------------------------------------------

def quantize_summary(r) -> Table:
    io = ", ".join(f"{t.name} {t.dtype} {list(t.shape)} scale={t.scale:.6g} zp={t.zero_point}"
                   if t.scale is not None else f"{t.name} {t.dtype} {list(t.shape)}"
                   for t in r.inputs + r.outputs)
    rows = [("size", f"{r.float_bytes} B float -> {r.quantized_bytes} B ({r.size_ratio:.3f}x)"), ("I/O", io)]
    if not r.deployable_to:
        rows.append(("NOTE", f"--mode {r.mode} is for comparison only: not deployable to Edge TPU or TFLM"))
    e = r.evaluation
    if e is not None:
        if e.labelled:
            rows.append(("accuracy", f"float {100 * e.float_accuracy:.2f}% -> {r.mode} "
                                     f"{100 * e.quantized_accuracy:.2f}% ({e.accuracy_drop_points:+.2f} points drop) "
                                     f"on {e.samples} samples of {e.source}"))
        if e.top1_agreement is not None:
            rows.append(("agreement", f"top-1 {100 * e.top1_agreement:.2f}%, max |float-{r.mode}| {e.max_abs_error:.4f}"))
        if len(e.outputs) > 1 or any(o["task"] != "classification" for o in e.outputs):
            rows += [("output", line) for line in output_lines(list(e.outputs))]
    rows += [("rewrite", f"`{w['layer']}` ({w['class']}): {w['change'] or 'kept'}: {w['note']}") for w in r.rewrites]
    rows += _quantizer_rows(r.quantizer)
    rows += [("fix", _fix_line(f)) for f in r.layer_fixes]
    rows.append(("report", str(r.output_dir / "report.md")))
    return _summary_grid(Text(f"quantize ({r.mode}): {r.quantized_model}"), rows)


def _layer_cell(keras_layer: str | None, layer_class: str | None) -> str:
    if not keras_layer:
        return "-"
    return f"{keras_layer} ({layer_class})" if layer_class else keras_layer


def _op_label(v) -> str:
    """`op 3 NEG (layer `encoder/layer_norm_1`, LayerNormalization)` for a check verdict."""
    from .layers import op_label

    return op_label(v.index, v.op, v.keras_layer, v.layer_class)


def check_table(r) -> Table:
    """One row per op, in execution order, with the Keras layer it came from; then a verdict
    per target."""
    etpu = {v.index: v for v in r.edgetpu.ops} if r.edgetpu else {}
    tflm = {v.index: v for v in r.tflm.ops} if r.tflm else {}
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for name, justify in (("#", "right"), ("Operator", "left"), ("Keras layer", "left"),
                          ("Edge TPU", "left"), ("TFLM", "left")):
        table.add_column(name, justify=justify)
    for v in (r.edgetpu.ops if r.edgetpu else r.tflm.ops):
        e, t = etpu.get(v.index), tflm.get(v.index)
        e_text = e.status if e else "-"
        t_text = ("ok " + (t.resolver_method or "")) if t and t.supported else (f"NO: {t.reason}" if t else "-")
        table.add_row(str(v.index), v.op, _layer_cell(v.keras_layer, v.layer_class),
                      Text(e_text, style="green" if e_text == "Mapped to Edge TPU" else "yellow"),
                      Text(t_text, style="green" if t_text.startswith("ok") else "red"))
    lines = _grid(None)
    lines.add_row(table)
    for text in _check_verdicts(r):
        lines.add_row(text)
    return lines


def _check_verdicts(r) -> list[str]:
    lines = []
    if r.edgetpu:
        e = r.edgetpu
        where = "all ops mapped" if e.cut_at is None else f"first CPU op at index {e.cut_at}"
        lines.append(f"Edge TPU : {'compatible' if e.compatible else 'NOT fully compatible'}: "
                     f"{e.mapped_ops}/{e.total_ops} ops mapped ({where})"
                     + (f"; {e.model_problem}" if e.model_problem else ""))
        if e.off_chip_bytes:
            lines.append(f"           {e.off_chip_bytes} B of parameters will stream from off-chip memory")
        for v in e.ops:
            if not v.mapped and v.fix and v.status != "More than one subgraph is not supported":
                lines.append(f"           {_op_label(v)}: {v.fix}")
    if r.tflm:
        t = r.tflm
        arena = f"arena {t.arena_bytes} B (+{t.recommended_arena_bytes - t.arena_bytes} B margin)" \
            if t.arena_bytes else "arena not measured"
        state = "compatible" if t.compatible else "NOT compatible"
        lines.append(f"TFLM     : {state}: MicroMutableOpResolver<{len(t.resolver_methods)}>, {arena}"
                     + (f"; interpreter: {t.interpreter_error}" if t.interpreter_error else "")
                     + (f"; {t.model_problem}" if t.model_problem else ""))
        lines += [f"           note: {note}" for note in t.notes]
    if r.board:
        b = r.board
        lines.append(f"Board    : {fit_line(b)}")
    return lines


def verify_summary(r) -> Table:
    backends = Table(box=None, show_header=False, pad_edge=False, padding=(0, 2, 0, 0))
    for column in ("name", "latency", "accuracy", "details"):
        backends.add_column(column, justify="right" if column == "latency" else "left")
    for b in r.backends:
        if b.ran:
            backends.add_row(b.name, f"{b.latency_ms:.3f} ms" if b.latency_ms is not None else "",
                             f"accuracy {100 * b.accuracy:6.2f}%" if b.accuracy is not None else "",
                             f"{b.library}, delegate: {b.delegate or 'none'}" + (f" ({b.note})" if b.note else ""))
        else:
            backends.add_row(b.name, "not run", "", b.note)
    metrics = _grid(None)
    for target, label in (("tflm", "TFLM"), ("edgetpu", "Edge TPU CPU model")):
        if r.metrics.get(target):
            outputs = [{**o, "metrics": r.metrics[target].get(o["name"], {})} for o in r.outputs]
            for line in output_lines(outputs):
                metrics.add_row(f"{label}: {line}")
    cross = r.comparisons.get("cross_runtime")
    if cross:
        metrics.add_row(f"cross-check: {_cross_line(cross)}")
    checks = _grid(4, None)
    for c in r.checks:
        checks.add_row(Text("ok" if c["passed"] else "FAIL", style="green" if c["passed"] else "bold red"),
                       f"{c['check']}: {c['detail']}")
    passed = r.passed_for(r.target)
    verdict = Text.assemble(f"verify: {r.samples} samples of {r.source}: ",
                            ("PASS", "bold green") if passed else ("FAIL", "bold red"),
                            f" ({r.scheme} model, target {r.target})")
    whole = _grid(None)
    whole.add_row(verdict)
    indented = _grid(1, None)
    indented.add_row("", backends)
    indented.add_row("", metrics)
    indented.add_row("", checks)
    whole.add_row(indented)
    return whole


def boards_table(boards) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for name, justify in (("board", "left"), ("name", "left"), ("CPU", "left"), ("flash", "right"),
                          ("RAM", "right"), ("clock", "right")):
        table.add_column(name, justify=justify)
    for b in boards:
        table.add_row(b.key, b.name, b.cpu, f"{b.flash_bytes // 1024} KiB", f"{b.ram_bytes // 1024} KiB",
                      f"{b.clock_mhz} MHz")
    return table


# --- diagnose ------------------------------------------------------------------------------------

def _num(value, fmt: str = "{:.1f}", none: str = "-") -> str:
    return none if value is None else fmt.format(value)


def _divergence_line(d: dict[str, Any] | None, section: dict[str, Any]) -> str:
    between = " vs ".join(section.get("runtimes_compared") or [])
    if section.get("runtime_error"):
        return f"not compared ({between}): {section['runtime_error']}"
    if not between:
        return "not compared"
    if d is None:
        return f"{between}: every op agrees within {_num(section.get('tolerance_lsb'), '{:g}')} LSB"
    inputs = {True: "its inputs are identical", False: "its inputs already differ",
              None: "its inputs were not compared"}[d.get("inputs_identical")]
    kernel = d.get("kernel") or {}
    method = f", TFLM kernel {kernel['tflm_resolver_method']}" if kernel.get("tflm_resolver_method") else ""
    return (f"{between}: first at {d['label']}: max {_num(d['max_lsb'], '{:g}')} LSB on "
            f"{100 * d['differing_fraction']:.2f}% of its values; {inputs}{method}")


def diagnose_summary(section: dict[str, Any]) -> Table:
    """The worst layers first, where two runtimes part ways, what to do, then one row per op
    with its Keras layer and error (from the report's `diagnose` section)."""
    whole = _grid(None)
    head = (f"diagnose: {section['quantized_model']} against {section['float_model']} on "
            f"{section['samples']} samples of {section['source']}")
    whole.add_row(Text(head))
    rows: list[tuple[str, str]] = []
    snr = f"output SNR {_num(section.get('output_snr_db'))} dB"
    if section.get("int16x8"):
        snr += f" (int16x8: {_num(section['int16x8'].get('output_snr_db'))} dB)"
    rows.append(("int8", snr))
    worst = section.get("worst_layers") or []
    if not worst:
        rows.append(("worst", "none: every op is within 0.5 dB of what rounding to its scale costs"))
    for i, w in enumerate(worst, 1):
        rows.append((f"worst {i}", f"{w['label']}: SNR {_num(w.get('snr_db'))} dB; {w['why']}"))
    rows.append(("runtimes", _divergence_line(section.get("first_divergence"), section)))
    if section.get("device"):
        dev = section["device"]
        board = f"{dev.get('board', '?')}, firmware {dev.get('firmware', '?')}"
        rows.append(("device", f"{board}, HIL protocol {dev.get('protocol', '?')}"))
    for rec in section.get("recommendations") or []:
        targets = ", ".join(rec.get("targets") or [])
        if rec.get("kind") == "measured":
            g = rec.get("gain") or {}
            if rec.get("error"):
                text = f"{rec['option']}: the converter refused it: {rec['error']}"
            else:
                acc = g.get("accuracy_points")
                text = (f"{rec['option']}: {f'{acc:+.2f} accuracy points, ' if acc is not None else ''}"
                        f"{_num(g.get('output_snr_db'), '{:+.1f}')} dB output SNR (keeps {targets})")
        else:
            text = f"{rec['option']} (not measured; keeps {targets}): {rec['description']}"
        rows.append(("remedy", text))
    if section.get("recommendations_note"):
        rows.append(("remedies", section["recommendations_note"]))
    details = _grid(1, 10, None)
    for label, value in rows:
        details.add_row("", label, value)
    whole.add_row(details)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for name, justify in (("#", "right"), ("op", "left"), ("Keras layer", "left"), ("SNR dB", "right"),
                          ("excess dB", "right"), ("RMSE/step", "right"), ("cosine", "right"),
                          ("clipped", "right")):
        table.add_column(name, justify=justify)
    worst_ops = {w["op_index"] for w in worst}
    for row in section.get("layers") or []:
        exact = row.get("snr_db") is None and row.get("cosine") is not None  # an infinite SNR
        clipped = row.get("clipped_fraction")
        table.add_row(str(row["op_index"]), row["op"], _layer_cell(row.get("keras_layer"), row.get("layer_class")),
                      "exact" if exact else _num(row.get("snr_db")), _num(row.get("excess_db")),
                      _num(row.get("rmse_over_scale"), "{:.2f}"), _num(row.get("cosine"), "{:.5f}"),
                      _num(clipped, "{:.2%}") if clipped is not None else "-",
                      style="bold" if row["op_index"] in worst_ops else None)
    whole.add_row(table)
    return whole


def build_line(run: dict) -> str:
    """One firmware build of `invoke firmware --build`: what ran, its timing, arena, size, library."""
    if "error" in run:
        return f"BUILD FAILED: {run['error']}"
    if not run.get("built"):
        return f"not built: {run.get('reason')}"
    line = run.get("selftest") or f"built, not run ({run.get('reason')})"
    if run.get("max_difference") is not None:
        line += f", max diff {run['max_difference']}"
    t = run.get("timing") or {}
    if t.get("measured"):
        line += f", {sorted(t['per_vector'])[len(t['per_vector']) // 2]} {t['unit']}/inference"
    elif run.get("ran"):
        line += ", time not measured"
    if run.get("smallest_arena_bytes"):
        line += f", smallest arena {run['smallest_arena_bytes']} B"
        if run.get("arena_measured_on"):  # this image never ran: a preset with its flags did
            line += f" (measured on {run['arena_measured_on']})"
    if run.get("size"):
        s = run["size"]
        line += f", text {s['text']} data {s['data']} bss {s['bss']}"
    if run.get("library"):
        lib = run["library"]
        line += f", TFLM library {'cached' if lib['cached'] else 'built'} ({lib['compiled_now']} of {lib['sources']} compiled now)"
    return line
