"""The child side: the only code that runs in the same process as a program under test.

The zygote (zygote.py) forks a child per program and calls `run_child`, which never returns. The
child confines itself (own process group, private working directory, Landlock, every inherited
fd closed except stdin=/dev/null, stdout/stderr=a capped pipe, fd 3=the result channel to the
worker and fd 4=the input channel from it, rlimits, and last the seccomp filter; see
confine.py), then reads the program, runs it, and answers the worker's operations in order.

It never sees a test. An operation is a piece of a test's *input*: a lambda that the worker cut
out of a test (`lambda: f(1, 2)`, or `lambda __f, __a, __k: __f(*__a, **__k)` for a call the
worker's own evaluation makes), compiled by the worker (marshal, hex: compiling here cost more
than running most tests), evaluated in the program's namespace and called with the given
arguments; the child sends back what it returned, strictly encoded (values.py), or the
exception it raised. Answers to one frame's operations go in one write (one wake-up of the
worker), sooner when FLUSH_S has passed since the last write; a program killed mid-frame loses
the answers still held. Expected values, comparisons and verdicts stay in the worker (see
judge.py), and the child is forked from a zygote that never held a test either, so nothing in
this process's memory says what the right output is. A program that takes over this harness
(its frames, the garbage collector, fd 3) can only send outputs of its choosing, which is what
computing them amounts to.

Frames (protocol.py), worker -> child on fd 4:  {"code": "..."}, then {"ops": [[code, [args]]]}*
Frames, child -> worker on fd 3, in order:
    {"k": "start"}                                  confined, program next
    {"k": "ready"}                                  the program ran; operations next
    {"k": "out", "v": ENCODED}                      one per operation, in order...
    {"k": "raise", "etype": "KeyError", "msg": "1"} ...or the exception it raised
    {"k": "stop", "stage": "program"|"test", "kind": "error"|"memory"|"exit", "etype", "msg"}
    {"k": "done"}                                   fd 4 reached end of file

The program's objects that have no value encoding stay here; the worker gets a reference
["ref", id, type] it can call, read attributes of, or pass back as an argument.

Runs in the jail: stdlib and orjson only.
"""
from __future__ import annotations

import builtins
import fcntl
import gc
import marshal
import os
import resource
import signal
import sys
import tempfile
import time
import traceback
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Callable, NoReturn

from sandbox.confine import Confinement
from sandbox.protocol import WorkerLimits, encode_frame, read_frame, write_frame_fd
from sandbox.values import decode, encode, type_name

RESULT_FD = 3          # the result channel's fd number in the child
INPUT_FD = 4           # the input channel's fd number in the child
HARNESS_FAULT = 113    # exit code when the harness itself failed before running the program
MAX_TEXT = 1000        # characters of any message sent to the worker
FLUSH_S = 0.02         # s: answers held back at most this long while a frame's ops run

# Bound at import, before any program runs, so a program that patches these builtins does not
# change how the harness runs the program and its operations.
_compile, _eval, _exec, _loads, _fromhex = compile, eval, exec, marshal.loads, bytes.fromhex


@dataclass(frozen=True)
class ChildSetup:
    """What every child needs, worked out once in the worker (`prepare`) instead of per fork:
    after a fork each first write to a shared page costs a copy-on-write fault."""

    workdir: str                      # the programs' working directory, the one place to write
    confinement: Confinement          # seccomp filter and Landlock ruleset (confine.py)
    our_modules: tuple[str, ...]      # sandbox.* names to drop from sys.modules


def prepare(workdir: str, confinement: Confinement) -> ChildSetup:
    """In the worker, once, after its imports and before the zygote starts."""
    os.environ["HOME"] = os.environ["TMPDIR"] = workdir   # inherited by every child
    tempfile.tempdir = workdir
    ours = tuple(m for m in sys.modules if m == "sandbox" or m.startswith("sandbox."))
    return ChildSetup(workdir, confinement, ours)


def run_child(input_fd: int, result_fd: int, output_fd: int, limits: WorkerLimits,
              setup: ChildSetup) -> NoReturn:
    """Entry point in the freshly forked child; exits the process, never returns."""
    try:
        _confine(limits, input_fd, result_fd, output_fd, setup)
        send = _Sender()
        send("start")   # before any program code: its absence is the sandbox's fault
    except BaseException:
        os._exit(HARNESS_FAULT)
    try:
        _serve(send)
    except BaseException:   # a harness failure (program exceptions are caught in _serve)
        with suppress(BaseException):
            traceback.print_exc()   # into the output the worker keeps; "done" is missing anyway
    os._exit(0)   # never run atexit handlers or finalizers the program registered


def _confine(limits: WorkerLimits, input_fd: int, result_fd: int, output_fd: int,
             setup: ChildSetup) -> None:
    os.setpgid(0, 0)   # the worker kills this group when the program's time is up
    signal.signal(signal.SIGINT, signal.default_int_handler)   # the worker ignores it; undo that
    os.chdir(setup.workdir)
    os.umask(0o077)
    setup.confinement.restrict_files()   # Landlock; before the dup2s below reuse fd numbers
    # Copies above every target first, so no dup2 overwrites a source it still needs.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 16) for fd in (input_fd, result_fd, output_fd)]
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(high[2], 1)
    os.dup2(high[2], 2)
    os.dup2(high[1], RESULT_FD)
    os.dup2(high[0], INPUT_FD)
    os.closerange(INPUT_FD + 1, _max_fd())   # the zygote's socket and the copies among them
    sys.stdin = sys.__stdin__ = open(0, closefd=False)
    sys.stdout = sys.__stdout__ = open(1, "w", errors="backslashreplace", closefd=False)
    sys.stderr = sys.__stderr__ = open(2, "w", errors="backslashreplace", closefd=False)
    mib = 1 << 20
    for limit, value in (
        (resource.RLIMIT_AS, limits.memory_mb * mib),
        (resource.RLIMIT_FSIZE, limits.file_size_mb * mib),
        (resource.RLIMIT_NOFILE, limits.max_open_files),
        (resource.RLIMIT_NPROC, limits.max_processes),   # behind seccomp: threads count too
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(limit, (value, value))
    # Soft limit sends SIGXCPU; the hard limit one second later is a SIGKILL it cannot catch.
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
    for name in setup.our_modules:
        sys.modules.pop(name, None)   # nothing for `import sandbox.harness` to patch
    setup.confinement.filter_syscalls()   # seccomp, last: nothing above may need a denied call


def _max_fd() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 65536


class _Sender:
    """Frames to the worker, held back until `flush` (one write for many answers)."""

    def __init__(self, _write: Callable = write_frame_fd, _frame: Callable = encode_frame) -> None:
        self.held: list[bytes] = []
        self.since = time.monotonic()
        self._write, self._frame = _write, _frame

    def __call__(self, message_kind: str, /, **fields: Any) -> None:
        fields["k"] = message_kind
        self.held.append(self._frame(fields))
        if message_kind in ("start", "stop", "done") or time.monotonic() - self.since > FLUSH_S:
            self.flush()

    def flush(self) -> None:
        if self.held:
            data, self.held = b"".join(self.held), []
            view = memoryview(data)
            while view:
                view = view[os.write(RESULT_FD, view):]
        self.since = time.monotonic()


def _serve(send: _Sender) -> None:
    frames = open(INPUT_FD, "rb", buffering=1 << 16, closefd=False)
    first = read_frame(frames)
    if first is None:
        return   # the worker gave up before sending the program (its time ran out)
    namespace: dict[str, Any] = {"__name__": "__solution__", "__builtins__": builtins}
    try:
        _exec(_compile(first["code"], "<program>", "exec"), namespace)
    except BaseException as exc:
        _stop(send, "program", exc, namespace)
        return
    send("ready")
    objects: list[Any] = []   # the program's objects the worker holds a reference to, by index
    compiled: dict[str, Any] = {}

    def keep(value: Any) -> list:
        objects.append(value)
        return ["ref", len(objects) - 1, _clean(type_name(value))[:200]]

    def resolve(reference: list) -> Any:
        if reference[0] == "ref":
            return objects[reference[1]]
        if reference[0] == "name":
            return _eval(_compile(reference[1], "<name>", "eval"), namespace)
        raise ValueError(f"cannot resolve {reference[0]!r}")

    while True:
        send.flush()   # before waiting for the worker, which may be waiting for these
        frame = read_frame(frames)
        if frame is None:
            break
        for wire, args in frame["ops"]:
            try:
                code = compiled.get(wire)
                if code is None:
                    code = compiled[wire] = _loads(_fromhex(wire))
                value = _eval(code, namespace)(*[decode(arg, resolve) for arg in args])
                kind, message = "out", {"v": encode(value, keep)}
            except (SystemExit, MemoryError) as exc:
                objects.clear()
                _stop(send, "test", exc, namespace)
                return
            except BaseException as exc:
                kind, message = "raise", _describe(exc)
            send(kind, **message)
    send("done")


def _stop(send: _Sender, stage: str, exc: BaseException, namespace: dict[str, Any]) -> None:
    if isinstance(exc, MemoryError):
        namespace.clear()   # free what the program holds so the report itself can be sent
        gc.collect()
        kind = "memory"
    elif isinstance(exc, SystemExit):
        kind = "exit"
    else:
        kind = "error"
    send("stop", stage=stage, kind=kind, **_describe(exc))
    send("done")


def _describe(exc: BaseException) -> dict[str, str]:
    try:
        message = str(exc)
    except BaseException:
        message = "<str() of the exception raised>"
    return {"etype": _clean(type(exc).__name__), "msg": _clean(message)}


def _clean(text: str) -> str:
    """Trim, and make any str safe to serialise (lone surrogates would break orjson)."""
    text = str.__str__(text)[:MAX_TEXT]
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
