"""The README's manual firmware commands, run verbatim: every ```sh block marked
`<!-- readme-test: run -->` runs line by line in bash from a directory holding build/demo/, as a
user would type it. A line ending in `&` is started in the background and its output read for
the pseudo-terminal it names; `/dev/pts/N` in a later line is that path (the one substitution a
user makes by hand)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path


from conftest import ROOT

MARKER = "<!-- readme-test: run -->"
_PTY = re.compile(r"(/dev/pts/\d+)")


def marked_blocks() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    blocks = []
    for m in re.finditer(re.escape(MARKER) + r"\n```sh\n(.*?)```", text, re.S):
        lines, current = [], ""
        for raw in m.group(1).splitlines():
            current += raw[:-1] + " " if raw.endswith("\\") else raw
            if not raw.endswith("\\"):
                lines.append(current.strip())
                current = ""
        blocks.append([ln for ln in lines if ln])
    return blocks


def test_the_readme_marks_the_firmware_recipes():
    blocks = marked_blocks()
    joined = "\n".join(ln for b in blocks for ln in b)
    assert len(blocks) == 2
    for must in ("-DCORTEX_M=ON", "qemu-system-arm -M mps2-an386", "-DHIL_SERVER=ON", "selftest --serve",
                 "invoke hil --port /dev/pts/N"):
        assert must in joined


def _wait_for(proc: subprocess.Popen, pattern: str, seen: list[str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line.rstrip())
        if re.search(pattern, line):
            return
    raise AssertionError(f"no '{pattern}' from a background command: {seen[-5:]}")


def test_readme_firmware_commands_run_verbatim(demo_int8, tflm_tree, tmp_path):
    work = tmp_path / "user"
    (work / "build" / "demo").mkdir(parents=True)
    for f in ("model_int8.tflite", "report.json"):
        shutil.copy(demo_int8.output_dir / f, work / "build" / "demo" / f)
    bin_dir = Path(sys.executable).parent
    # `invoke` in the README runs in the project; here the user's folder is elsewhere, so a user
    # config file (invoke reads it before it looks for tasks.py) points invoke at the project
    home = tmp_path / "home"
    home.mkdir()
    (home / ".invoke.yaml").write_text(f"tasks:\n  search_root: {json.dumps(str(ROOT))}\n")
    env = dict(os.environ, TFLM_TREE=str(tflm_tree.path), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(ROOT), HOME=str(home))
    # the project as `invoke firmware` writes it (run as the README's first block does)
    gen = subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), "firmware"], cwd=work, env=env,
                         capture_output=True, text=True)
    assert gen.returncode == 0, gen.stderr
    background: list[subprocess.Popen] = []
    port = None
    outputs = []
    try:
        for block in marked_blocks():
            for line in block:
                command = re.sub(r"\s+#.*$", "", line)  # a trailing comment, as the shell drops it
                command = command.replace("/dev/pts/N", port) if port and "/dev/pts/N" in command else command
                if command.endswith("&"):
                    proc = subprocess.Popen(["bash", "-c", command[:-1]], cwd=work, env=env, text=True,
                                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
                    background.append(proc)
                    seen: list[str] = []
                    _wait_for(proc, r"/dev/pts/\d+", seen)
                    port = _PTY.search(seen[-1]).group(1)
                    if "qemu-system-arm" in command:
                        _wait_for(proc, r"^HIL: serving", seen)
                        assert any("SELFTEST PASS 4/4" in s for s in seen), seen
                    continue
                proc = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True,
                                      stdin=subprocess.DEVNULL, timeout=900)
                assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
                outputs.append((command, proc.stdout))
    finally:
        for proc in background:
            os.killpg(proc.pid, 9)
            proc.wait()
    ran = dict(outputs)
    host = next(out for cmd, out in outputs if cmd.startswith("cmake --build build/demo/fw-host"))
    assert "SELFTEST PASS 4/4" in host
    qemu = next(out for cmd, out in outputs if cmd.startswith("qemu-system-arm -M mps2-an386 -nographic -semihosting -icount shift=0 -kernel"))
    assert "SELFTEST PASS 4/4" in qemu and "cycles" in qemu
    hil_runs = [out for cmd, out in ran.items() if cmd.startswith("invoke hil")]
    assert len(hil_runs) == 2 and all("HIL PASS 4/4" in out for out in hil_runs), hil_runs
