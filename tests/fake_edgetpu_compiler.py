"""A stand-in for `edgetpu_compiler` (which cannot be installed here) that replays a REAL log.

Same argument handling as the real compiler, same stdout (the log in ../shared/reference with
its paths replaced by the real ones), same output file names (`<stem>_edgetpu.tflite`,
`<stem>_edgetpu.log`, `_segment_<i>_of_<N>` with --num_segments), and a compiled model that is
a valid flatbuffer: one `edgetpu-custom-op` per Edge TPU subgraph plus the CPU ops of the log.

FAKE_EDGETPU_LOG   path of the real log to replay
FAKE_EDGETPU_MODE  replay (default) | exit3 | segv | hang | garbage
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tflite_builder import ModelBuilder  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(prog="edgetpu_compiler", add_help=True)
    p.add_argument("-v", "--version", action="store_true")
    p.add_argument("-o", "--out_dir", default=".")
    p.add_argument("-s", "--show_operations", action="store_true")
    p.add_argument("-m", "--min_runtime_version", type=int)
    p.add_argument("-n", "--num_segments", type=int)
    p.add_argument("-i", "--intermediate_tensors")
    p.add_argument("-a", "--enable_multiple_subgraphs", action="store_true")
    p.add_argument("-d", "--search_delegate", action="store_true")
    p.add_argument("-k", "--delegate_search_step", type=int)
    p.add_argument("-t", "--timeout_sec", type=int)
    p.add_argument("models", nargs="*")
    return p.parse_args(argv)


def compiled_model(rows, subgraphs: int) -> bytes:
    """One edgetpu-custom-op per subgraph, then one op per CPU op of the log's table."""
    mb = ModelBuilder()
    x = mb.tensor("input", (1, 8), "uint8")
    prev = x
    for i in range(subgraphs):
        nxt = mb.tensor(f"tpu_{i}", (1, 8), "uint8")
        mb.op("CUSTOM", [prev], [nxt], custom="edgetpu-custom-op")
        prev = nxt
    for op, count, status in rows:
        if status == "Mapped to Edge TPU":
            continue
        for _ in range(count):
            nxt = mb.tensor(f"cpu_{len(mb.tensors)}", (1, 8), "uint8")
            if op == "CUSTOM":
                mb.op("CUSTOM", [prev], [nxt], custom="CpuCustomOp")
            else:
                mb.op(op, [prev], [nxt])
            prev = nxt
    return mb.build([x], [prev])


def main(argv) -> int:
    args = parse_args(argv)
    log_text = Path(os.environ["FAKE_EDGETPU_LOG"]).read_text()
    lines = [l for l in log_text.splitlines() if not l.startswith("$ ")]
    version_line = next((l for l in lines if l.startswith("Edge TPU Compiler version")),
                        "Edge TPU Compiler version 16.0.384591198")
    mode = os.environ.get("FAKE_EDGETPU_MODE", "replay")
    if args.version:
        print(version_line)
        return 0
    if not args.models:
        print("edgetpu_compiler: no input model", file=sys.stderr)
        return 1
    out_dir = Path(args.out_dir)
    model = Path(args.models[0])
    print(version_line, flush=True)
    if mode == "hang":
        time.sleep(3600)
    if mode == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    if mode == "exit3":
        print("Started a compilation timeout timer of 180 seconds.")
        return 3
    if mode == "garbage":
        print("\x00\x17 ^^^ not compiler output ###")
        (out_dir / f"{model.stem}_edgetpu.tflite").write_bytes(b"garbage, not a flatbuffer")
        print("Model compiled successfully in 5 ms.")
        print(f"Output model: {out_dir / (model.stem + '_edgetpu.tflite')}")
        return 0

    # replay: one block per "Model compiled successfully"; segments are numbered in order
    segments = args.num_segments or 1
    block = -1
    rows_per_block: dict[int, list] = {}
    subgraphs: dict[int, int] = {}
    in_table = False
    stems = [f"{model.stem}_segment_{i}_of_{segments}" if segments > 1 else model.stem
             for i in range(segments)]
    printed = []
    for line in lines[1:] if lines and lines[0] == version_line else lines:
        s = line.strip()
        if s.startswith("Model compiled successfully"):
            block += 1
            in_table = False
        stem = stems[min(max(block, 0), len(stems) - 1)]
        if s.startswith("Input model:"):
            line = f"Input model: {model.parent / (stem + '.tflite') if segments > 1 else model}"
        elif s.startswith("Output model:"):
            line = f"Output model: {out_dir / (stem + '_edgetpu.tflite')}"
        elif s.startswith("Operation log:"):
            line = f"Operation log: {out_dir / (stem + '_edgetpu.log')}"
        elif m := re.match(r"Number of Edge TPU subgraphs: (\d+)", s):
            subgraphs[block] = int(m.group(1))
        elif re.match(r"^Operator\s+Count\s+Status$", s):
            in_table = True
        elif in_table and (m := re.match(r"^(\S+)\s+(\d+)\s+(.+?)\s*$", s)):
            rows_per_block.setdefault(max(block, 0), []).append((m.group(1), int(m.group(2)), m.group(3)))
        printed.append(line)
    print("\n".join(printed), flush=True)
    for b in range(block + 1):
        stem = stems[min(b, len(stems) - 1)]
        rows = rows_per_block.get(b, [])
        (out_dir / f"{stem}_edgetpu.tflite").write_bytes(compiled_model(rows, subgraphs.get(b, 1)))
        table = "\n".join(f"{op:<31}{count:<11}{status}" for op, count, status in rows)
        (out_dir / f"{stem}_edgetpu.log").write_text(
            f"{version_line}\nInput: {model}\nOutput: {out_dir / (stem + '_edgetpu.tflite')}\n\n"
            f"Operator                       Count      Status\n\n{table}\n")
    # exit 1 when a failure comes after the last compiled block (or there is none), as the
    # real compiler does on "Compilation failed!" / "Model not quantized"
    fail_markers = ("Compilation failed", "Internal compiler error", "Model not quantized",
                    "ERROR: Registration failed", "ERROR: Restored original execution plan")
    last_ok = max((i for i, l in enumerate(lines) if l.startswith("Model compiled successfully")), default=-1)
    last_fail = max((i for i, l in enumerate(lines) if l.strip().startswith(fail_markers)), default=-1)
    return 1 if last_fail > last_ok or last_ok < 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
