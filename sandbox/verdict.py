"""The verdict: the worker's judgement of each test plus how the child ended -> one Status.

Each test is judged in the worker (judge.py), from outputs the child computed; the child
decides nothing. What the child's run contributes is whether it got going, whether it finished
and how it ended, so an early `sys.exit(0)`/`os._exit(0)` or a crash can never read as a pass:
PASSED needs every test judged passed and the child's "start" and final "done" (after its last
answer). How a child that sent "done" then exits cannot change a verdict made in the worker, so
the worker does not wait for it (worker.py); for one that did not, `end` says how it ended.

Status, in order of precedence:
    result channel corrupted (not frames, or frames out of order) -> ERROR
    no "start" (the harness never got going, or the fork failed)  -> SANDBOX_FAULT
    the program's wall clock ran out                               -> TIMEOUT
    RLIMIT_CPU hit (SIGXCPU / SIGKILL)                             -> TIMEOUT
    the zygote died (a program killed it)                          -> KILLED
    the program itself failed to run (syntax error, exception...)  -> ERROR / MEMORY / KILLED
    run unfinished (no "done"; or, waited for, not exit 0)         -> KILLED
    otherwise the first failure, in order: a wrong output or failed assert -> FAILED;
    an exception -> ERROR (MemoryError -> MEMORY, SystemExit -> KILLED); none -> PASSED.

Runs in the jail: stdlib and sandbox.records only.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass

from sandbox.records import Status

MAX_FEEDBACK = 500   # characters


@dataclass(frozen=True)
class ChildEnd:
    """How the child process ended, as the zygote reported it."""

    exit_code: int | None   # None when a signal ended it (or it never ran)
    signal: int | None      # the terminating signal, if any
    timed_out: bool         # the worker killed it because the wall-clock limit passed
    cpu_s: float            # user + system CPU seconds it used (wait4 rusage)


@dataclass(frozen=True)
class TestResult:
    __test__ = False        # not a pytest class

    passed: bool
    status: Status         # when not passed: FAILED, ERROR, MEMORY, ...
    feedback: str           # when not passed: what the model is shown


@dataclass(frozen=True)
class Run:
    """What the judge saw of one program (judge.py)."""

    results: tuple[TestResult, ...]   # the tests judged, in order (fewer if the run stopped)
    started: bool                     # the child sent "start"
    done: bool                        # the child sent "done" after its last answer
    stop: dict | None                 # the child's "stop" message (its program failed to run
                                      # or raised SystemExit / MemoryError), checked fields
    corrupt: str | None               # why the result channel cannot be trusted
    timed_out: bool                   # the judge reached the deadline
    zygote_lost: bool                 # the zygote died or stopped answering
    outputs: tuple = ()               # per test, its CALL side's encoded output (Program.outputs)


@dataclass(frozen=True)
class Verdict:
    status: Status
    test_passed: tuple[bool, ...]
    feedback: str


_STOP_STATUS = {"error": Status.ERROR, "memory": Status.MEMORY, "exit": Status.KILLED}


def decide(n_tests: int, timeout_s: float, run: Run, end: ChildEnd | None,
           cpu_limit_s: int) -> Verdict:
    passed = tuple(r.passed for r in run.results) + (False,) * (n_tests - len(run.results))
    if run.corrupt is not None:
        return Verdict(Status.ERROR, (False,) * n_tests,
                       _trim(f"Result channel corrupted: {run.corrupt}"))
    if not run.started:   # "start" is sent before any program code runs
        how = "did not start" if end is None else _how(end)
        return Verdict(Status.SANDBOX_FAULT, passed, f"Sandbox harness {how} before the program ran")
    if end is None or run.zygote_lost:
        return Verdict(Status.KILLED, passed, "The program killed the sandbox's fork server")
    how = _how(end)
    if run.timed_out or end.timed_out:
        return Verdict(Status.TIMEOUT, passed, f"Timeout: took longer than {timeout_s:g} s")
    if end.signal == signal.SIGXCPU or (end.signal == signal.SIGKILL and end.cpu_s >= cpu_limit_s):
        return Verdict(Status.TIMEOUT, passed, f"Timeout: used more than {cpu_limit_s} s of CPU")
    if run.stop is not None and run.stop["stage"] == "program":
        return Verdict(_STOP_STATUS[run.stop["kind"]], passed, _trim(_stop_text(run.stop)))
    if not run.done or end.exit_code != 0:
        when = "after" if run.done else "before"
        return Verdict(Status.KILLED, passed, f"Program {how} {when} the tests finished")
    for result in run.results:
        if not result.passed:
            return Verdict(result.status, passed, _trim(result.feedback))
    if run.stop is not None:
        return Verdict(_STOP_STATUS[run.stop["kind"]], passed, _trim(_stop_text(run.stop)))
    if len(run.results) != n_tests:   # cannot happen without a stop; never a pass
        return Verdict(Status.ERROR, passed, "Not every test was judged")
    return Verdict(Status.PASSED, passed, "")


def _how(end: ChildEnd) -> str:
    return (f"killed by signal {signal.Signals(end.signal).name}" if end.signal is not None
            else f"exited with code {end.exit_code}")


def _stop_text(stop: dict) -> str:
    text = exception_text(stop["etype"], stop["msg"])
    if stop["kind"] == "exit":
        text += " (the program exited before the tests finished)"
    return text


def exception_text(etype: str, msg: str) -> str:
    return f"{etype}: {msg}" if msg else etype


def _trim(text: str) -> str:
    return text if len(text) <= MAX_FEEDBACK else text[:MAX_FEEDBACK - 3] + "..."
