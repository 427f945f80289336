"""The link to a device: the framed serial protocol (docs/protocol.md), the host-side client,
and stand-ins for a board (an emulator on a pseudo-terminal backed by the TFLite Micro Python
interpreter; the real firmware on a pty or under QEMU), so rigs and tests exercise the protocol
with no hardware.
"""

from __future__ import annotations

import hashlib
import os
import select
import struct
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import PipelineError

MAGIC = b"\xa5\x5a"
HEADER = struct.Struct("<2sBBI")  # magic, type, seq, length
CRC = struct.Struct("<I")
MAX_PAYLOAD = 1 << 20
PROTOCOL_VERSION = 2
TENSOR_SINCE = 2  # the protocol version that added TENSOR

INFO, RUN, TENSOR = 0x01, 0x02, 0x03
INFO_OK, RUN_OK, TENSOR_OK, ERROR = 0x81, 0x82, 0x83, 0xFF
E_CRC, E_UNKNOWN, E_LENGTH, E_INVOKE, E_TOO_LARGE = 1, 2, 3, 4, 5
E_NOT_PRESERVED, E_OUT_OF_RANGE, E_NO_INFERENCE = 6, 7, 8
# TENSOR's type byte: TFLite's TfLiteType codes (tensorflow/lite/core/c/c_api_types.h, the
# table docs/protocol.md lists) -> numpy dtype names
TFLITE_TYPE_CODES = {1: "float32", 2: "int32", 3: "uint8", 4: "int64", 6: "bool", 7: "int16",
                     9: "int8", 10: "float16"}
TENSOR_REQUEST = struct.Struct("<II")  # tensor index, byte offset
TENSOR_REPLY_HEAD = struct.Struct("<IBBH")  # tensor index, type, rank, reserved


# --- frames ----------------------------------------------------------------------------------

def encode(kind: int, seq: int, payload: bytes = b"") -> bytes:
    body = HEADER.pack(MAGIC, kind, seq & 0xFF, len(payload))[2:] + payload
    return MAGIC + body + CRC.pack(zlib.crc32(body))


@dataclass(frozen=True)
class Frame:
    kind: int
    seq: int
    payload: bytes


class FrameError(Exception):
    """A frame arrived damaged (bad CRC or impossible length); `seq` when it could be read."""

    def __init__(self, reason: str, seq: int | None):
        super().__init__(reason)
        self.seq = seq


class FrameParser:
    """Incremental: feed bytes as they arrive, take whole frames out. Garbage before a magic is
    skipped; a damaged frame raises FrameError once and parsing resumes after its magic."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def next(self) -> Frame | None:
        while True:
            start = self.buffer.find(MAGIC)
            if start < 0:
                del self.buffer[:max(0, len(self.buffer) - 1)]  # keep a possible half magic
                return None
            del self.buffer[:start]
            if len(self.buffer) < HEADER.size:
                return None
            _, kind, seq, length = HEADER.unpack_from(self.buffer)
            if length > MAX_PAYLOAD:
                del self.buffer[:2]
                raise FrameError(f"impossible length {length}", seq)
            total = HEADER.size + length + CRC.size
            if len(self.buffer) < total:
                return None
            body = bytes(self.buffer[2:HEADER.size + length])
            (crc,) = CRC.unpack_from(self.buffer, HEADER.size + length)
            if zlib.crc32(body) != crc:
                del self.buffer[:2]
                raise FrameError("bad CRC", seq)
            del self.buffer[:total]
            return Frame(kind, seq, body[HEADER.size - 2:])


def parse_info(payload: bytes) -> dict[str, str]:
    info = {}
    for line in payload.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            info[key.strip()] = value.strip()
    return info


# --- host side ---------------------------------------------------------------------------------

class DeviceError(PipelineError):
    """The device (or the link) failed: timeouts, damage, resets. Exit 2."""


try:  # pyserial's flush() is tcdrain(): on a tty that went away it raises termios.error, no OSError
    from termios import error as _termios_error

    _TTY_ERRORS: tuple[type[BaseException], ...] = (_termios_error,)
except ImportError:  # not a POSIX system
    _TTY_ERRORS = ()


class HilClient:
    def __init__(self, port: str, baud: int = 115200, timeout: float = 5.0, retries: int = 2):
        import serial  # pyserial

        try:
            self.serial = serial.Serial(port, baud, timeout=0)
        except (serial.SerialException, OSError) as exc:
            raise DeviceError(f"cannot open the serial port: {exc}", path=port, field="--port",
                              fix="check the device is attached (or start `invoke emulate`) and the path") from None
        self.port = port
        self.timeout = timeout
        self.retries = retries
        self.parser = FrameParser()
        self.seq = 0
        self.retried = 0

    def close(self) -> None:
        import serial  # pyserial

        try:
            self.serial.close()
        except (serial.SerialException, OSError, *_TTY_ERRORS):
            pass  # a port that went away is closed already; the error that matters was raised

    def request(self, kind: int, payload: bytes = b"") -> Frame:
        """One request and its reply, retried; a link that fails under us (pyserial's
        SerialException: the cable pulled, the device reset and its tty went away) is a
        DeviceError, not a traceback."""
        import serial  # pyserial

        try:
            return self._request(kind, payload)
        except (serial.SerialException, OSError, *_TTY_ERRORS) as exc:
            raise DeviceError(f"the serial link failed: {exc}", path=self.port, field="--port",
                              fix="check the device is still attached (a reset or a pulled cable closes the "
                                  "port), then run again") from None

    def _request(self, kind: int, payload: bytes) -> Frame:
        problems = []
        for attempt in range(self.retries + 1):
            self.seq = (self.seq + 1) & 0xFF
            self._drain()
            self.serial.write(encode(kind, self.seq, payload))
            self.serial.flush()
            try:
                reply = self._wait(self.seq)
            except (TimeoutError, FrameError) as exc:
                problems.append(str(exc))
                if attempt < self.retries:
                    self.retried += 1
                continue
            if reply.kind == ERROR:
                code = struct.unpack_from("<H", reply.payload)[0] if len(reply.payload) >= 2 else 0
                if code == E_CRC and attempt < self.retries:  # our request arrived damaged
                    problems.append("device saw a bad CRC")
                    self.retried += 1
                    continue
                raise DeviceError(f"device error {code}: {reply.payload[2:].decode('utf-8', 'replace')}",
                                  path=self.port, field="--port", fix="see docs/protocol.md for the codes")
            return reply
        raise DeviceError(f"no valid reply after {self.retries + 1} tries ({'; '.join(problems)})",
                          path=self.port, field="--port",
                          fix="check the cable and baud rate; a device that reset or hangs needs a power cycle")

    def _drain(self) -> None:
        self.parser = FrameParser()
        while self.serial.read(4096):
            pass

    def _wait(self, seq: int) -> Frame:
        deadline = time.monotonic() + self.timeout
        while True:
            frame = self.parser.next()  # may raise FrameError for a damaged reply
            if frame is not None:
                if frame.seq == seq:
                    return frame
                continue  # a stale reply to an earlier, retried request
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply within {self.timeout:g} s")
            chunk = self.serial.read(65536)
            if chunk:
                self.parser.feed(chunk)
            else:
                time.sleep(min(0.002, left))

    def info(self) -> dict[str, str]:
        reply = self.request(INFO)
        if reply.kind != INFO_OK:
            raise DeviceError(f"INFO answered with frame type {reply.kind:#x}", path=self.port, field="--port")
        return parse_info(reply.payload)

    def run(self, data: bytes) -> tuple[bytes, int, int]:
        reply = self.request(RUN, data)
        if reply.kind != RUN_OK or len(reply.payload) < 8:
            raise DeviceError(f"RUN answered with frame type {reply.kind:#x}", path=self.port, field="--port")
        cycles, micros = struct.unpack_from("<II", reply.payload)
        return reply.payload[8:], cycles, micros

    def tensor(self, index: int) -> tuple[str, tuple[int, ...], bytes]:
        """TENSOR (protocol 2): tensor `index` as the device's last RUN left it, asked for piece
        by piece until whole (a tensor larger than the device's reply buffer comes in several
        replies). Returns (numpy dtype name, shape, bytes)."""
        data, total, head = bytearray(), None, None
        while total is None or len(data) < total:
            reply = self.request(TENSOR, TENSOR_REQUEST.pack(index, len(data)))
            piece_head, piece_total, chunk = self._tensor_piece(reply, index, len(data))
            if head is not None and (piece_head, piece_total) != (head, total):
                raise self._bad_tensor(index, "changed type, shape or size between pieces")
            head, total = piece_head, piece_total
            if not chunk and len(data) < total:
                raise self._bad_tensor(index, f"sent no bytes at offset {len(data)} of {total}")
            data += chunk
        dtype, shape = head
        if len(data) != total or int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize != total:
            raise self._bad_tensor(index, f"sent {len(data)} bytes for a {dtype} tensor of shape {shape}")
        return dtype, shape, bytes(data)

    def _tensor_piece(self, reply: Frame, index: int, offset: int):
        p = reply.payload
        if reply.kind != TENSOR_OK or len(p) < TENSOR_REPLY_HEAD.size:
            raise DeviceError(f"TENSOR answered with frame type {reply.kind:#x}", path=self.port, field="--port")
        got, code, rank, _ = TENSOR_REPLY_HEAD.unpack_from(p)
        dims_end = TENSOR_REPLY_HEAD.size + 4 * rank
        if got != index or len(p) < dims_end + 8 or code not in TFLITE_TYPE_CODES:
            raise self._bad_tensor(index, f"sent a malformed reply (tensor {got}, type code {code}, rank {rank})")
        shape = struct.unpack_from(f"<{rank}i", p, TENSOR_REPLY_HEAD.size)
        total, at = struct.unpack_from("<II", p, dims_end)
        if at != offset:
            raise self._bad_tensor(index, f"answered offset {at} to a request for {offset}")
        return (TFLITE_TYPE_CODES[code], tuple(shape)), total, p[dims_end + 8:]

    def _bad_tensor(self, index: int, what: str) -> DeviceError:
        return DeviceError(f"TENSOR {index}: the device {what}", path=self.port, field="--port",
                           fix="the firmware and docs/protocol.md disagree: rebuild the firmware from this version")


# --- every op output from the device (diagnose) -------------------------------------------------

DEVICE_RUNTIME = "device"
DEVICE_DESCRIPTION = ("the device on --port over HIL (RUN, then TENSOR for every op output; "
                      "firmware built with -DHIL_TENSORS=ON)")


def require_tensors(info: dict[str, str], port: str) -> None:
    """The device speaks TENSOR and keeps every tensor, or a one-line error says what to flash."""
    try:
        version = int(info.get("protocol", "1"))
    except ValueError:
        version = 1
    if version < TENSOR_SINCE:
        raise DeviceError(f"the device speaks HIL protocol {info.get('protocol', '?')}; reading its "
                          f"intermediate tensors needs {TENSOR_SINCE}", path=port, field="--port",
                          fix="flash firmware generated by this version of edge-deploy, built with -DHIL_TENSORS=ON")
    if info.get("tensors") != "preserved":
        raise DeviceError("the device's firmware does not preserve its tensors (INFO says "
                          f"tensors={info.get('tensors', '?')})", path=port, field="--port",
                          fix="rebuild the firmware with -DHIL_SERVER=ON -DHIL_TENSORS=ON (a larger arena: "
                              "kPreservedTensorArenaSize) and flash it")


def capture_device_tensors(port: str, model_path: Path, inputs: list[np.ndarray], *, baud: int = 115200,
                           timeout: float = 5.0, retries: int = 2) -> tuple[dict[int, np.ndarray], dict[str, str]]:
    """What `tensor_capture.capture_tensors` returns, from a device: per sample one RUN, then
    TENSOR for the graph inputs and every op output; (N, ...) arrays per tensor index, and the
    device's INFO. The device must run this very model (its sha256)."""
    from ..tflite_model import read_model
    from .tensor_capture import captured_tensor_indices

    model = read_model(model_path)
    wanted = captured_tensor_indices(model)
    sha = hashlib.sha256(model_path.read_bytes()).hexdigest()
    client = HilClient(port, baud, timeout, retries)
    try:
        info = client.info()
        if info.get("model_sha256") != sha:
            raise DeviceError(f"the device runs another model (sha256 {info.get('model_sha256', '?')[:16]}..., "
                              f"expected {sha[:16]}...)", path=port, field="--port",
                              fix="flash the firmware generated from this model (`invoke firmware`)")
        require_tensors(info, port)
        values: dict[int, list[np.ndarray]] = {t: [] for t in wanted}
        for n in range(len(inputs[0]) if inputs else 0):
            client.run(b"".join(np.ascontiguousarray(x[n]).tobytes() for x in inputs))
            for t in wanted:
                dtype, shape, raw = client.tensor(t)
                spec = model.main.tensors[t]
                if dtype != spec.dtype or shape != tuple(spec.shape):
                    raise client._bad_tensor(t, f"returned a {dtype} tensor of shape {shape}; the model's is "
                                                f"{spec.dtype} {tuple(spec.shape)}")
                arr = np.frombuffer(raw, dtype=dtype).reshape(shape)
                values[t].append(arr[0] if arr.ndim else arr)  # per sample, as capture_tensors keeps them
        return {t: np.stack(v) for t, v in values.items() if v}, info
    finally:
        client.close()


# --- the device emulator -----------------------------------------------------------------------

FAULTS = ("garble", "drop-byte", "wrong-hash", "hang", "wrong-output", "reset", "alter-op")
ALTER_XOR = 0x08  # alter-op flips this bit of the first element of op K's output: 8 steps in int8


class Emulator:
    """Speaks the protocol on the master side of a pty, like firmware on a UART. `fault`
    injects one misbehaviour, for testing rigs: damage the first reply (garble), lose a byte
    of it (drop-byte), claim another model (wrong-hash), stop answering RUN (hang), corrupt
    outputs (wrong-output), or restart after the first RUN (reset). alter-op stands in for a
    device whose kernel of op `fault_op` computes wrong values: the first element of that op's
    output differs by ALTER_XOR's bit in what TENSOR returns (and in RUN's reply when it is a
    graph output); later ops still get the right values, so the first divergence is op K.

    Like firmware built with -DHIL_TENSORS=ON, it preserves every tensor (TFLM's
    kPreserveAllTensors) and answers TENSOR after a RUN; `tensors=False` is normal firmware."""

    def __init__(self, model_path: Path, fault: str | None = None, arena: int | None = None,
                 tensors: bool = True, fault_op: int | None = None):
        """The model is checked as the other tasks check it (a readable .tflite, every op one
        TFLM has a kernel for), then served by the TFLM interpreter in a worker process, whose
        loading is the interpreter check: an abort() in TFLM is an error, never the end of the
        emulator. The arena: `arena`, else one the model surely fits (with every tensor kept
        when `tensors`)."""
        from ..errors import NotDeployableError
        from ..rules.tflm import check_tflm
        from ..tflite_model import read_model
        from .tflm_runner import InterpreterProcess, host_arena_bytes

        if fault is not None and fault not in FAULTS:
            raise PipelineError(f"unknown fault '{fault}'", field="--fault", fix=f"use one of {', '.join(FAULTS)}")
        model = read_model(model_path)
        tflm = check_tflm(model, model_path, run_interpreter=False)  # the worker below runs it
        if not tflm.compatible:
            reasons = [f"op {v.index} {v.op}: {v.reason}" for v in tflm.ops if not v.supported]
            reasons += [r for r in (tflm.model_problem,) if r]
            raise NotDeployableError(f"the model does not run on TFLite Micro: {'; '.join(reasons)}",
                                     path=model_path, field="--model", fix="see `invoke check --target tflm`")
        self.model_bytes = model_path.read_bytes()
        self.altered_tensor = self._altered_tensor(model, fault, fault_op)
        self.tensors = tensors
        if tensors:
            from .tensor_capture import preserve_all_arena_bytes

            arena = arena or max(preserve_all_arena_bytes(model), host_arena_bytes(model, len(self.model_bytes)))
        self.interpreter = InterpreterProcess(model_path, arena or host_arena_bytes(model, len(self.model_bytes)),
                                              preserve_all_tensors=tensors)
        self.tensor_count = len(model.main.tensors)
        self.graph_outputs = list(model.main.outputs)
        self.have_inference = False
        self.reply_capacity = self._reply_capacity(model)
        self.input_sizes = [int(np.prod(t.shape)) * np.dtype(t.dtype).itemsize for t in model.main.input_tensors()]
        self.input_dtypes = [np.dtype(t.dtype) for t in model.main.input_tensors()]
        self.input_shapes = [t.shape for t in model.main.input_tensors()]
        self.outputs = len(model.main.outputs)
        from ..model import is_stateful

        self.stateful = is_stateful(model)  # reset before every RUN, as the firmware does
        self.fault = fault
        self.faulted = False
        self.master, self.slave = os.openpty()
        import tty

        tty.setraw(self.slave)
        tty.setraw(self.master)
        self.port = os.ttyname(self.slave)

    def close(self) -> None:
        """End the interpreter's worker and close the pty."""
        self.interpreter.close()
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass

    @staticmethod
    def _altered_tensor(model, fault: str | None, fault_op: int | None) -> int | None:
        if fault != "alter-op":
            if fault_op is not None:
                raise PipelineError("--op is for --fault alter-op", field="--op", fix="add --fault alter-op or drop --op")
            return None
        ops = model.main.operators
        if fault_op is None or not 0 <= fault_op < len(ops):
            raise PipelineError(f"alter-op needs the index of the op to alter, 0..{len(ops) - 1}, "
                                f"got {fault_op}", field="--op", fix="pass --op K (see `invoke check`)")
        return ops[fault_op].outputs[0]

    @staticmethod
    def _reply_capacity(model) -> int:
        """The reply payload the generated firmware has for this model (its buffers are sized
        from the model's I/O), so TENSOR replies come in the same pieces as from a board."""
        from ..stages.firmware import hil_buffers, io_specs

        return hil_buffers(*io_specs(model))["reply_payload"]

    def _alter(self, index: int, raw: bytes) -> bytes:
        if index != self.altered_tensor or not raw:
            return raw
        return bytes([raw[0] ^ ALTER_XOR]) + raw[1:]

    def tensor_reply(self, frame: Frame) -> bytes:
        """TENSOR, as the firmware's HandleTensor answers it (docs/protocol.md)."""
        def error(code: int, message: str) -> bytes:
            return encode(ERROR, frame.seq, struct.pack("<H", code) + message.encode())

        if len(frame.payload) != TENSOR_REQUEST.size:
            return error(E_LENGTH, "TENSOR payload is u32 tensor index, u32 byte offset")
        if not self.tensors:
            return error(E_NOT_PRESERVED, "tensors are not preserved: build the firmware with -DHIL_TENSORS=ON")
        if not self.have_inference:
            return error(E_NO_INFERENCE, "no inference to read from: send RUN first")
        index, offset = TENSOR_REQUEST.unpack(frame.payload)
        if index >= self.tensor_count:
            return error(E_OUT_OF_RANGE, "tensor index out of range")
        try:
            t = self.interpreter.get_tensor(index)
        except RuntimeError as exc:  # the worker crashed: the next RUN restarts it
            self.have_inference = False
            return error(E_INVOKE, str(exc))
        arr = np.ascontiguousarray(t["tensor_data"])
        raw = self._alter(index, arr.tobytes())
        if offset > len(raw):
            return error(E_LENGTH, "offset beyond the tensor's end")
        code = {v: k for k, v in TFLITE_TYPE_CODES.items()}[np.dtype(t["dtype"]).name]
        dims = [int(d) for d in t["shape"]]
        head = TENSOR_REPLY_HEAD.pack(index, code, len(dims), 0) + struct.pack(f"<{len(dims)}i", *dims) + \
            struct.pack("<II", len(raw), offset)
        room = self.reply_capacity - len(head)
        return encode(TENSOR_OK, frame.seq, head + raw[offset:offset + room])

    def info_payload(self) -> bytes:
        sha = hashlib.sha256(self.model_bytes).hexdigest()
        if self.fault == "wrong-hash":
            sha = hashlib.sha256(b"another model").hexdigest()
        return (f"model_sha256={sha}\nmodel_bytes={len(self.model_bytes)}\narena_bytes=0\n"
                f"board=emulator (TFLM Python interpreter)\nfirmware=edge-deploy-emulator\n"
                f"protocol={PROTOCOL_VERSION}\ntensors={'preserved' if self.tensors else 'none'}\n").encode()

    def handle(self, frame: Frame) -> bytes | None:
        if frame.kind == INFO:
            return encode(INFO_OK, frame.seq, self.info_payload())
        if frame.kind == TENSOR:
            return self.tensor_reply(frame)
        if frame.kind != RUN:
            return encode(ERROR, frame.seq, struct.pack("<H", E_UNKNOWN) + b"unknown command")
        if len(frame.payload) != sum(self.input_sizes):
            return encode(ERROR, frame.seq, struct.pack("<H", E_LENGTH) +
                          f"RUN needs {sum(self.input_sizes)} input bytes, got {len(frame.payload)}".encode())
        if self.fault == "hang":
            return None
        self.have_inference = False
        try:  # RuntimeError: TFLM refused, or its worker process crashed (the next RUN restarts it)
            if self.stateful:
                self.interpreter.reset()
            offset = 0
            for i, (size, dtype, shape) in enumerate(zip(self.input_sizes, self.input_dtypes, self.input_shapes)):
                arr = np.frombuffer(frame.payload[offset:offset + size], dtype=dtype).reshape(shape)
                self.interpreter.set_input(arr, i)
                offset += size
            start = time.perf_counter()
            self.interpreter.invoke()
            micros = int(1e6 * (time.perf_counter() - start))
            out = b"".join(self._alter(self.graph_outputs[k], np.array(self.interpreter.get_output(k)).tobytes())
                           for k in range(self.outputs))
        except RuntimeError as exc:
            return encode(ERROR, frame.seq, struct.pack("<H", E_INVOKE) + str(exc).encode())
        self.have_inference = True
        if self.fault == "wrong-output":
            out = bytes((b + 1) & 0xFF for b in out)
        return encode(RUN_OK, frame.seq, struct.pack("<II", 0, micros) + out)

    def serve(self, stop: callable = lambda: False) -> None:
        parser = FrameParser()
        while not stop():
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if not ready:
                continue
            try:
                data = os.read(self.master, 65536)
            except OSError:
                continue  # the host closed the port; wait for the next one
            parser.feed(data)
            while True:
                try:
                    frame = parser.next()
                except FrameError as exc:
                    if exc.seq is not None:
                        os.write(self.master, encode(ERROR, exc.seq, struct.pack("<H", E_CRC) + b"bad CRC"))
                    continue
                if frame is None:
                    break
                reply = self.handle(frame)
                if reply is None:
                    continue
                if self.fault in ("garble", "drop-byte") and not self.faulted:
                    self.faulted = True  # damage the first reply only: a retry must recover
                    reply = reply[:-1] + bytes([reply[-1] ^ 0xFF]) if self.fault == "garble" else reply[:5] + reply[6:]
                if self.fault == "reset" and frame.kind == RUN:
                    if self.faulted:
                        continue  # after the "reset" the device stays silent in the middle of the run
                    self.faulted = True
                os.write(self.master, reply)


def serve_on_pty(command: list[str]):
    """Start a device program whose stdin/stdout are its serial link (`selftest --serve`), on
    the master side of a fresh pty: returns the process and the port path for `invoke hil`."""
    import subprocess
    import tty

    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    proc = subprocess.Popen(command, stdin=master, stdout=master, stderr=subprocess.PIPE)
    os.close(master)
    return proc, os.ttyname(slave), slave


def start_qemu_uart(elf: Path, machine: str = "mps2-an386", timeout: float = 60.0):
    """Boot a firmware built with -DHIL_SERVER=ON under QEMU with UART0 on a pty; returns the
    QEMU process and the port once the firmware says it is serving. -icount makes QEMU's clock
    count instructions, so the cycles the firmware reports are instructions x clock / 1 GHz."""
    import re
    import shutil
    import subprocess

    qemu = shutil.which("qemu-system-arm")
    if qemu is None:
        raise PipelineError("qemu-system-arm is not installed", field="--qemu", fix="apt-get install qemu-system-arm")
    proc = subprocess.Popen([qemu, "-M", machine, "-nographic", "-monitor", "none", "-semihosting",
                             "-icount", "shift=0", "-serial", "pty", "-kernel", str(elf)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    port, seen = None, []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        line = proc.stdout.readline()
        seen.append(line.strip())
        if m := re.search(r"redirected to (/dev/pts/\d+)", line):
            port = m.group(1)
        if line.startswith("HIL: serving") and port:
            return proc, port
    proc.kill()
    raise PipelineError(f"the firmware did not start serving under QEMU: {' | '.join(seen[-4:])}",
                        path=elf, field="--qemu", fix="build it with -DHIL_SERVER=ON")


def _serve_pty_main(argv: list[str]) -> int:
    """`python -m pipeline.runtime.device serve-pty CMD...`: run CMD (e.g. `selftest --serve`) with its
    stdin/stdout on a fresh pseudo-terminal, print the port for `invoke hil --port`, and wait."""
    if len(argv) < 2 or argv[0] != "serve-pty":
        print("usage: python -m pipeline.runtime.device serve-pty COMMAND [ARGS...]", file=sys.stderr)
        return 2
    try:
        proc, port, slave = serve_on_pty(argv[1:])
    except OSError as exc:
        print(f"error: {argv[1]}: cannot start it: {exc}", file=sys.stderr)
        return 2
    print(port, flush=True)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return proc.wait()
    finally:
        os.close(slave)


if __name__ == "__main__":
    sys.exit(_serve_pty_main(sys.argv[1:]))
