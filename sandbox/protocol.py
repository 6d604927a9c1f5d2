"""Wire format between the pool (host), the worker (jail) and the child (untrusted process).

Every message is one frame: a 4-byte big-endian length, then an orjson object. Four channels use
it:

    pool  --WorkerLimits, Program-->  worker   (worker's stdin)
    pool  <--Hello, Reply--           worker   (worker's stdout)
    worker --program, operations-->   child    (a pipe per program; see harness.py)
    worker <--outputs--               child    (a pipe per program)

The Program, with every test, stays in the worker: the child gets the program and the inputs
cut out of the tests (judge.py), never an expected value.

This module runs inside the jail too, so it imports only the stdlib, orjson and sandbox.records.
A program travels as `sandbox.records.Program` itself; a verdict as a Reply (a Grade plus what
the pool needs: tests judged inside, whether to retire the worker), which the pool turns into a
`sandbox.records.Grade`.
"""
from __future__ import annotations

import dataclasses
import os
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

import orjson

from sandbox.records import Program, Status, TestCase  # noqa: F401 (the records the wire carries)

HEADER = struct.Struct(">I")   # frame length in bytes
MAX_FRAME = 64 << 20           # bytes; a longer frame is a protocol error, not a big message

W = TypeVar("W")


class ProtocolError(Exception):
    """A peer sent something that is not a well-formed frame or record."""


@dataclass(frozen=True)
class WorkerLimits:
    """Per-program limits, sent once to each worker as its first frame."""

    memory_mb: int        # RLIMIT_AS of the child, MiB
    cpu_s: int            # RLIMIT_CPU of the child (soft), seconds
    file_size_mb: int     # RLIMIT_FSIZE of the child, MiB
    max_open_files: int   # RLIMIT_NOFILE of the child
    max_processes: int    # RLIMIT_NPROC of the child (counts every process of `uid`)
    max_output_kb: int    # stdout+stderr kept per program, KiB; the rest is read and dropped
    uid: int              # uid the worker drops to when it starts as root
    gid: int              # gid the worker drops to when it starts as root
    read_paths: tuple[str, ...]   # what Landlock lets a program read (and execute); see confine.py


@dataclass(frozen=True)
class Hello:
    """What a worker reports about itself once it is ready; the pool checks it."""

    pid: int                  # 1 when the worker is the init of its own pid namespace
    uid: int
    gid: int
    no_new_privs: bool
    cap_eff: str              # CapEff from /proc/self/status, hex; "0000000000000000" = none
    net_interfaces: tuple[str, ...]   # from /proc/net/dev; ("lo",) inside a fresh net namespace
    seccomp_error: str        # "" when the syscall filter works (probed), else why not
    landlock_error: str       # "" when the Landlock ruleset works (probed), else why not
    landlock_abi: int         # the kernel's Landlock ABI version; 0 without Landlock


@dataclass(frozen=True)
class Reply:
    """The worker's verdict on one Program: a `sandbox.records.Grade`'s fields plus two for the
    pool."""

    program_id: str
    status: str               # a `sandbox.records.Status` value
    test_passed: tuple[bool, ...]
    feedback: str
    duration_s: float
    tests_inside: int         # tests whose verdict rests on a comparison the program made
    retire: bool              # the worker cannot grade another program; replace it
    outputs: list             # Grade.outputs (empty unless the Program asked for them)


# ----------------------------------------------------------------------------------------- frames

def encode_frame(obj: Any) -> bytes:
    payload = orjson.dumps(obj)
    if len(payload) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(payload)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(len(payload)) + payload


def write_frame(stream: BinaryIO, obj: Any) -> None:
    stream.write(encode_frame(obj))
    stream.flush()


def write_frame_fd(fd: int, obj: Any) -> None:
    """Write a whole frame to a raw fd (no buffering object that untrusted code could replace)."""
    view = memoryview(encode_frame(obj))
    while view:
        view = view[os.write(fd, view):]


def read_frame(stream: BinaryIO) -> Any | None:
    """Read one frame; None on a clean EOF between frames."""
    header = stream.read(HEADER.size)
    if not header:
        return None
    if len(header) != HEADER.size:
        raise ProtocolError("stream ended inside a frame header")
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ProtocolError(f"frame length {length} exceeds {MAX_FRAME}")
    payload = stream.read(length)
    if len(payload) != length:
        raise ProtocolError("stream ended inside a frame")
    return _loads(payload)


class FrameDecoder:
    """Incremental decoder for a non-blocking pipe: feed bytes, take whole frames."""

    def __init__(self, max_total: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._seen = 0
        self._max_total = max_total   # bytes over the pipe's lifetime; more is a protocol error

    def feed(self, data: bytes) -> list[Any]:
        self._seen += len(data)
        if self._seen > self._max_total:
            raise ProtocolError(f"more than {self._max_total} bytes on the result channel")
        self._buf += data
        frames = []
        while len(self._buf) >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buf)
            if length > MAX_FRAME:
                raise ProtocolError(f"frame length {length} exceeds {MAX_FRAME}")
            if len(self._buf) < HEADER.size + length:
                break
            frames.append(_loads(bytes(self._buf[HEADER.size:HEADER.size + length])))
            del self._buf[:HEADER.size + length]
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame; non-zero at EOF means the peer was cut off mid-frame."""
        return len(self._buf)


def _loads(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"frame is not JSON: {exc}") from None


# ---------------------------------------------------------------------------------------- records

def to_wire(record: Any) -> dict[str, Any]:
    return dataclasses.asdict(record)


def from_wire(cls: type[W], obj: Any) -> W:
    """Rebuild a wire record, checking field names and basic types so garbage fails loudly."""
    if not isinstance(obj, dict):
        raise ProtocolError(f"{cls.__name__}: expected an object, got {type(obj).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if set(obj) != set(fields):
        raise ProtocolError(f"{cls.__name__}: fields {sorted(obj)} != {sorted(fields)}")
    values = {}
    for name, value in obj.items():
        kind = fields[name].type
        if kind == "tuple[TestCase, ...]":
            value = tuple(from_wire(TestCase, t) for t in _expect(value, list, cls, name))
        elif kind == "tuple[bool, ...]":
            value = tuple(_expect(v, bool, cls, name) for v in _expect(value, list, cls, name))
        elif kind == "tuple[str, ...]":
            value = tuple(_expect(v, str, cls, name) for v in _expect(value, list, cls, name))
        elif kind == "str | None":
            value = None if value is None else _expect(value, str, cls, name)
        elif kind == "list":   # encoded outputs: each None or a tagged array
            value = _expect(value, list, cls, name)
            for v in value:
                if v is not None and not (isinstance(v, list) and v and isinstance(v[0], str)):
                    raise ProtocolError(f"{cls.__name__}.{name}: an output that is not encoded")
        elif kind == "float":
            value = float(_expect(value, (int, float), cls, name))
        else:
            value = _expect(value, {"str": str, "int": int, "bool": bool}[kind], cls, name)
        values[name] = value
    return cls(**values)


def _expect(value: Any, kind: type | tuple[type, ...], cls: type, name: str) -> Any:
    # bool is an int subclass; never let True stand in for a number or vice versa.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, (int, float))):
        raise ProtocolError(f"{cls.__name__}.{name}: unexpected {type(value).__name__}")
    return value
