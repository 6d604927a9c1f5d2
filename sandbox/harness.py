"""The child side: the only code that runs in the same process as a program under test.

The worker forks a child per program and calls `run_child`, which never returns. The child
confines itself (own process group, private working directory, Landlock, every inherited fd
closed except stdin=/dev/null, stdout/stderr=a capped pipe and fd 3=the result channel, rlimits,
and last the seccomp filter; see confine.py), then runs `setup`, the program and each test, one
at a time, in one namespace, and streams one message per test to the worker. It decides nothing:
it reports values and exceptions, and the worker (see verdict.py) turns them into a verdict, so
a program that exits early, prints a fake marker, flips a result list in memory or returns an
always-equal object does not pass.

Messages (each a frame on fd 3 carrying the run's nonce `n` and a kind `k`):

    {"k": "start"}                                                      confined, program next
    {"k": "test", "i": 0, "r": "ok"}                                    statement test ran clean
    {"k": "test", "i": 0, "r": "value", "out": ..., "exp": ..., "eq": null, "repr": "3"}
    {"k": "test", "i": 0, "r": "raise", "kind": "assert"|"error", "etype": "...", "msg": "..."}
    {"k": "stop", "stage": "setup"|"program"|"test", "kind": "error"|"memory"|"exit", ...}
    {"k": "done"}

What this does NOT protect against: untrusted code shares the process with this harness, so a
program written *against this harness* can find the nonce and fd 3 in memory and forge messages.
The jail (bwrap, see launch.py), Landlock and seccomp bound what such a program can do to the
host; only the verdict of that one program is at risk. Programs that legitimately start processes
(`subprocess`, `os.system`, `multiprocessing`) fail under seccomp: that is intended.

Runs in the jail: stdlib and orjson only.
"""
from __future__ import annotations

import builtins
import gc
import os
import resource
import signal
import sys
import tempfile
import traceback
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Callable, NoReturn

from sandbox.confine import Confinement
from sandbox.protocol import Request, WorkerLimits, write_frame_fd
from sandbox.values import encode, type_name

RESULT_FD = 3          # the result channel's fd number in the child
HARNESS_FAULT = 113    # exit code when the harness itself failed before running the program
MAX_TEXT = 1000        # characters of any message or repr sent to the worker

Send = Callable[..., None]

# Bound at import, before any program runs, so a program that patches these builtins does not
# change how the harness compiles and evaluates the tests.
_compile, _eval, _exec = compile, eval, exec


@dataclass(frozen=True)
class ChildSetup:
    """What every child needs, worked out once in the worker (`prepare`) instead of per fork:
    after a fork each first write to a shared page costs a copy-on-write fault."""

    workdir: str                      # the programs' working directory, the one place to write
    confinement: Confinement          # seccomp filter and Landlock ruleset (confine.py)
    our_modules: tuple[str, ...]      # sandbox.* names to drop from sys.modules


def prepare(workdir: str, confinement: Confinement) -> ChildSetup:
    """In the worker, once, after its imports and before the first fork."""
    os.environ["HOME"] = os.environ["TMPDIR"] = workdir   # inherited by every child
    tempfile.tempdir = workdir
    ours = tuple(m for m in sys.modules if m == "sandbox" or m.startswith("sandbox."))
    return ChildSetup(workdir, confinement, ours)


def run_child(request: Request, limits: WorkerLimits, nonce: str, result_fd: int,
              output_fd: int, setup: ChildSetup) -> NoReturn:
    """Entry point in the freshly forked child; exits the process, never returns."""
    try:
        _confine(limits, result_fd, output_fd, setup)
        send = _sender(nonce)
        send("start")   # before any program code: its absence is the sandbox's fault
    except BaseException:
        os._exit(HARNESS_FAULT)
    try:
        _run(request, send)
    except BaseException:   # a harness failure (program exceptions are caught in _run)
        with suppress(BaseException):
            traceback.print_exc()   # into the output the worker keeps; "done" is missing anyway
    os._exit(0)   # never run atexit handlers or finalizers the program registered


def _confine(limits: WorkerLimits, result_fd: int, output_fd: int, setup: ChildSetup) -> None:
    os.setpgid(0, 0)   # the worker kills this group (and, as pid 1, everything else) when done
    signal.signal(signal.SIGINT, signal.default_int_handler)   # the worker ignores it; undo that
    os.chdir(setup.workdir)
    os.umask(0o077)
    setup.confinement.restrict_files()   # Landlock; before the dup2s below reuse fd numbers
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(output_fd, 1)
    os.dup2(output_fd, 2)
    os.dup2(result_fd, RESULT_FD)
    os.closerange(RESULT_FD + 1, _max_fd())   # the worker's request/reply pipes among them
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


def _sender(nonce: str, _write: Callable = write_frame_fd) -> Send:
    def send(message_kind: str, /, **fields: Any) -> None:
        fields["n"] = nonce
        fields["k"] = message_kind
        _write(RESULT_FD, fields)
    return send


def _run(request: Request, send: Send) -> None:
    namespace: dict[str, Any] = {"__name__": "__solution__", "__builtins__": builtins}
    for stage, source in (("setup", request.setup), ("program", request.code)):
        try:
            _exec(_compile(source, f"<{stage}>", "exec"), namespace)
        except BaseException as exc:
            _stop(send, stage, exc, namespace)
            return
    for index, test in enumerate(request.tests):
        try:
            if test.call is not None and test.expected is not None:
                message = _value_test(test.call, test.expected, namespace)
            else:
                _exec(_compile(test.source, f"<test {index}>", "exec"), namespace)
                message = {"r": "ok"}
        except (SystemExit, MemoryError) as exc:
            _stop(send, "test", exc, namespace)
            return
        except BaseException as exc:
            kind = "assert" if isinstance(exc, AssertionError) else "error"
            message = {"r": "raise", "kind": kind, **_describe(exc)}
        send("test", i=index, **message)
    send("done")


def _value_test(call: str, expected: str, namespace: dict[str, Any]) -> dict[str, Any]:
    output = _eval(_compile(call, "<call>", "eval"), namespace)
    wanted = _eval(_compile(expected, "<expected>", "eval"), namespace)
    out, exp = encode(output), encode(wanted)
    child_eq = None
    if out[0] == exp[0] == "opaque" and out[1] == exp[1]:
        child_eq = bool(output == wanted)   # see values.equal: same program-defined type only
    return {"r": "value", "out": out, "exp": exp, "eq": child_eq, "repr": _safe_repr(output)}


def _stop(send: Send, stage: str, exc: BaseException, namespace: dict[str, Any]) -> None:
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


def _safe_repr(value: Any) -> str:
    try:
        text = repr(value)
    except BaseException:
        text = f"<{type_name(value)} object; repr() raised>"
    return _clean(text if type(text) is str else str(type(text)))


def _clean(text: str) -> str:
    """Trim, and make any str safe to serialise (lone surrogates would break orjson)."""
    text = str.__str__(text)[:MAX_TEXT]
    return text.encode("utf-8", "backslashreplace").decode("utf-8")

