"""A converter server: one process that has imported TensorFlow and forks a fresh converter
child for each client, so a CI job or a test session that runs `invoke quantize` or `deploy`
many times pays TensorFlow's import (about 7 s of CPU) once, not in every run.

Opt-in: set EDGE_DEPLOY_CONVERTER_SERVER to a socket path (in a folder only you can write). The
first conversion starts the server there when none answers, and waits for it; later ones, from
any process, connect to it. Without the variable, or when the server cannot serve a client, each
conversion runs in a child of its own as before: the server only ever saves time.

Why fork after the import: every job still gets a process of its own (a crash, a user's custom
layer module, Keras's global state stay in it), started in milliseconds. The child is the
ordinary converter child (`convert._child_main`) with the client's environment, working folder
and import path, speaking the same protocol over the socket instead of pipes.

What makes a server fit for a client (`identity`): the same Python, the same pipeline code (a
digest of the package's files) and the same variables that steer Python, TensorFlow and Keras
at import time. A client that differs gets a child of its own; a server whose code changed on
disk retires, so the next client starts a current one. The server ends after
EDGE_DEPLOY_CONVERTER_IDLE_S seconds (default 600) without clients, on a "shutdown" hello, or
when its socket file is removed.

Protocol: the client connects and sends one JSON line {"identity", "env", "cwd", "path"} (or
{"shutdown": true}); the server answers {"ok": true, "pid": <child>} and hands the connection
to the child, or {"ok": false, "why": ...}. When the child ends, the server sends one last line
"#exited <code>" (a negative code is the signal that killed it) and closes the connection. A
client that hangs up gets its child killed.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from .. import PROJECT_DIR

ENV_VAR = "EDGE_DEPLOY_CONVERTER_SERVER"
IDLE_VAR = "EDGE_DEPLOY_CONVERTER_IDLE_S"
_DEFAULT_IDLE_S = 600.0
_START_TIMEOUT_S = 180.0  # a TensorFlow import on a loaded 2-core machine
_HELLO_TIMEOUT_S = 30.0
_EXITED = "#exited "
_PER_JOB_VARIABLES = ("PYTHONPATH",)  # applied in each child (sys.path)


def code_digest() -> str:
    """The pipeline package's files and the interpreter: what the forked child runs."""
    digest = hashlib.sha256(sys.executable.encode())
    package = PROJECT_DIR / "pipeline"
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@functools.cache
def _own_code_digest() -> str:
    """This client's code, once per process: what runs here does not change while it runs (the
    server, which outlives edits, checks its own with `code_digest` at each refusal)."""
    return code_digest()


def identity(env: dict[str, str], code: str) -> dict[str, str]:
    """A converter process's identity (`convert._identity`) less what a forked child applies
    itself: the import-time variables, the code it runs."""
    from .convert import IMPORT_TIME_VARIABLES, _identity

    fixed = {k: v for k, v in _identity(env).items()
             if k.startswith(IMPORT_TIME_VARIABLES) and k not in _PER_JOB_VARIABLES}
    return {**fixed, "code": code}


# --- the client -----------------------------------------------------------------------------------

class RemoteChild:
    """A forked converter child reached through the server's socket, with the parts of
    subprocess.Popen that `convert._Worker` uses (stdin, stdout, pid, poll, wait, kill)."""

    def __init__(self, sock: socket.socket, pid: int, reader):
        self.sock = sock
        self.pid = pid
        self.returncode: int | None = None
        self._reader = reader
        self.stdin = sock.makefile("w", encoding="utf-8", newline="\n")
        self.stdout = _Lines(self)

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = 30.0) -> int:
        """Read to the server's exit line. Without one (the server died too) the child is
        reported as killed."""
        if self.returncode is None:
            self.sock.settimeout(timeout)
            try:
                for _ in self.stdout:
                    pass
            except OSError:
                pass
            if self.returncode is None:
                self.returncode = -signal.SIGKILL
        return self.returncode

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def close(self) -> None:
        for stream in (self.stdin, self._reader, self.sock):
            try:
                stream.close()
            except OSError:
                pass


class _Lines:
    """The child's stdout lines; the server's exit line sets the return code and ends them."""

    def __init__(self, child: RemoteChild):
        self.child = child

    def __iter__(self):
        for line in self.child._reader:
            if line.startswith(_EXITED):
                self.child.returncode = int(line[len(_EXITED):])
                return
            yield line
        if self.child.returncode is None:  # the connection ended without an exit line
            self.child.returncode = -signal.SIGKILL

    def close(self) -> None:
        self.child._reader.close()


def connect(env: dict[str, str]) -> RemoteChild | None:
    """A converter child forked by the server at $EDGE_DEPLOY_CONVERTER_SERVER, starting the
    server when none answers; None when the variable is unset or no server can serve this
    process (the caller then starts a child of its own)."""
    path = os.environ.get(ENV_VAR)
    if not path:
        return None
    hello = json.dumps({"identity": identity(env, _own_code_digest()), "env": env, "cwd": os.getcwd(),
                        "path": [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]})
    started: subprocess.Popen | None = None
    tried = False
    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(_HELLO_TIMEOUT_S)
            sock.connect(path)
            sock.sendall(hello.encode() + b"\n")
            reader = sock.makefile("r", encoding="utf-8", newline="\n")
            answer = json.loads(reader.readline() or "{}")
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if not tried and not _starting(path):
                tried, started = True, _start(path, env)
            elif (started is None or started.poll() is not None) and not _starting(path):
                return _not_started(path)
            if time.monotonic() > deadline:
                return _not_started(path)
            time.sleep(0.1)
            continue
        except (OSError, ValueError):
            sock.close()
            return None
        if not answer.get("ok"):
            sock.close()
            return None
        sock.settimeout(None)
        return RemoteChild(sock, int(answer["pid"]), reader)


def _not_started(path: str) -> None:
    import logging

    logging.getLogger(__name__).warning("no converter server at %s (%s is set; its log: %s.log): converting "
                                        "without it", path, ENV_VAR, path)
    return None


def _lock_path(path: str) -> str:
    return path + ".lock"


def _starting(path: str) -> bool:
    """A server holds the lock (it is importing TensorFlow, or serving)."""
    try:
        with open(_lock_path(path), "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(lock, fcntl.LOCK_UN)
            return False
    except OSError:
        return False


def _start(path: str, env: dict[str, str]) -> subprocess.Popen | None:
    try:
        with open(path + ".log", "ab") as log:
            return subprocess.Popen([sys.executable, "-m", "pipeline.runtime.converter_server", path],
                                    cwd=PROJECT_DIR, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=log, start_new_session=True)
    except OSError:
        return None


def stop(path: str) -> None:
    """Ask the server at `path` to end (nothing when none answers)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(path)
            sock.sendall(b'{"shutdown": true}\n')
            sock.recv(1)
    except OSError:
        pass


# --- the server -----------------------------------------------------------------------------------

def serve(path: str) -> int:
    lock = open(_lock_path(path), "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another server has it
    code = code_digest()
    own = identity(dict(os.environ), code)  # as the clients see it: before TF's own defaults
    from . import convert
    from .tf import import_tensorflow

    import_tensorflow()
    import keras  # noqa: F401  (imported once, here, for every child)

    idle_s = float(os.environ.get(IDLE_VAR) or _DEFAULT_IDLE_S)
    if os.path.exists(path):
        os.unlink(path)  # a dead server's socket: the lock says no live one has it
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o077)
    try:
        listener.bind(path)
    finally:
        os.umask(old_umask)
    listener.listen(16)
    inode = os.stat(path).st_ino
    children: dict[int, socket.socket] = {}
    poller = select.poll()
    poller.register(listener, select.POLLIN)
    last_client = time.monotonic()
    try:
        while True:
            for fd, events in poller.poll(200):
                if fd == listener.fileno():
                    conn, _ = listener.accept()
                    last_client = time.monotonic()
                    verdict = _admit(conn, own, code)
                    if verdict == "shutdown":
                        conn.close()
                        return 0
                    if verdict == "retire":
                        return 0
                    if isinstance(verdict, dict):
                        pid = _fork_child(conn, listener, lock, children, verdict, convert)
                        children[pid] = conn
                        poller.register(conn, select.POLLRDHUP)
                        print(f"client {_peer_pid(conn)}: converter {pid}", flush=True)
                else:  # a client hung up: its child's work is nobody's
                    for pid, conn in children.items():
                        if conn.fileno() == fd:
                            _kill(pid)
                            poller.unregister(fd)
            _reap(children, poller)
            if children:
                last_client = time.monotonic()
            elif time.monotonic() - last_client > idle_s or not _still_ours(path, inode):
                return 0
    finally:
        for pid in list(children):
            _kill(pid)
        if _still_ours(path, inode):
            os.unlink(path)
        listener.close()
        lock.close()


def _admit(conn: socket.socket, own: dict[str, str], code: str):
    """The client's hello, checked: its request, "shutdown", "retire" (this server's code
    changed on disk: it refuses and ends) or None (refused)."""
    conn.settimeout(_HELLO_TIMEOUT_S)
    try:
        hello = json.loads(conn.makefile("r", encoding="utf-8").readline() or "{}")
    except (OSError, ValueError):
        conn.close()
        return None
    if hello.get("shutdown"):
        return "shutdown"
    if hello.get("identity") == own:
        conn.settimeout(None)
        return hello
    retire = code_digest() != code
    why = "this server's pipeline code changed on disk" if retire else "a different Python, code or environment"
    try:
        conn.sendall(json.dumps({"ok": False, "why": why}).encode() + b"\n")
    except OSError:
        pass
    conn.close()
    return "retire" if retire else None


def _fork_child(conn, listener, lock, children, hello: dict[str, Any], convert) -> int:
    pid = os.fork()
    if pid:
        try:
            conn.sendall(json.dumps({"ok": True, "pid": pid}).encode() + b"\n")
        except OSError:
            _kill(pid)
        return pid
    code = 1
    try:
        listener.close()
        lock.close()
        for other in children.values():
            other.close()
        os.dup2(conn.fileno(), 0)
        os.dup2(conn.fileno(), 1)
        conn.close()
        sys.stdin = open(0, "r", encoding="utf-8", closefd=False)
        os.environ.clear()
        os.environ.update(hello["env"])
        os.chdir(hello["cwd"])
        import tempfile

        tempfile.tempdir = None  # the server's, cached by TF's import: the client's TMPDIR counts
        sys.path[:] = list(dict.fromkeys(list(hello["path"]) + sys.path))
        code = convert._child_main()
    except BaseException:  # noqa: BLE001  nothing of the server may run on in this process
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def _reap(children: dict[int, socket.socket], poller) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        try:
            poller.unregister(conn)
        except (KeyError, ValueError):
            pass
        try:
            conn.sendall(f"{_EXITED}{code}\n".encode())
        except OSError:
            pass
        conn.close()


def _peer_pid(conn: socket.socket) -> int:
    import struct

    pid, _, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return pid


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _still_ours(path: str, inode: int) -> bool:
    try:
        return os.stat(path).st_ino == inode
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1]))
