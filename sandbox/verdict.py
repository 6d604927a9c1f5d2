"""The trusted half of grading: what the child reported plus how it ended -> one verdict.

The worker collects the child's messages (see harness.py) and how the child ended (exit code or
signal, whether the worker's wall clock ran out, CPU used) and calls `decide`. PASSED needs all
of: every message carries the run's nonce and is well formed, a "start" first, a result for
every test in order, a final "done", and a clean exit 0. Anything missing means the run did not
finish, so an early `sys.exit(0)`/`os._exit(0)` or a crash can never read as a pass.

Status, in order of precedence:
    corrupted result channel           -> ERROR   ("Result channel corrupted: ...")
    no "start" (harness never got going) -> SANDBOX_FAULT
    worker's wall clock ran out        -> TIMEOUT ("Timeout: took longer than N s")
    RLIMIT_CPU hit (SIGXCPU / SIGKILL) -> TIMEOUT
    run unfinished (no "done")         -> KILLED  (exited early or killed by a signal)
    otherwise the first failure, in order: a test's wrong value or failed assert -> FAILED;
    an exception -> ERROR (MemoryError -> MEMORY, SystemExit -> KILLED); none -> PASSED.

Runs in the jail: stdlib and orjson only.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any

from sandbox.protocol import Outcome, Request, WireTest
from sandbox.values import equal

MAX_FEEDBACK = 500   # characters


@dataclass(frozen=True)
class ChildEnd:
    """How the child process ended, as the worker observed it."""

    exit_code: int | None   # None when a signal ended it
    signal: int | None      # the terminating signal, if any
    timed_out: bool         # the worker killed it because the wall-clock limit passed
    cpu_s: float            # user + system CPU seconds it used (wait4 rusage)


@dataclass(frozen=True)
class Verdict:
    status: Outcome
    test_passed: tuple[bool, ...]
    feedback: str


class _Corrupt(Exception):
    pass


def decide(request: Request, nonce: str, messages: list[Any], end: ChildEnd, cpu_limit_s: int,
           channel_error: str | None = None) -> Verdict:
    n_tests = len(request.tests)
    try:
        if channel_error is not None:
            raise _Corrupt(channel_error)
        results, stop, done = _parse(messages, nonce, request.tests)
    except _Corrupt as exc:
        return Verdict(Outcome.ERROR, (False,) * n_tests, _trim(f"Result channel corrupted: {exc}"))
    passed = tuple(r[0] for r in results) + (False,) * (n_tests - len(results))
    how = (f"killed by signal {signal.Signals(end.signal).name}" if end.signal is not None
           else f"exited with code {end.exit_code}")

    if not messages:   # not even "start", which is sent before any program code runs
        return Verdict(Outcome.SANDBOX_FAULT, passed,
                       f"Sandbox harness {how} before the program ran")
    if end.timed_out:
        return Verdict(Outcome.TIMEOUT, passed,
                       f"Timeout: took longer than {request.timeout_s:g} s")
    if end.signal == signal.SIGXCPU or (end.signal == signal.SIGKILL and end.cpu_s >= cpu_limit_s):
        return Verdict(Outcome.TIMEOUT, passed, f"Timeout: used more than {cpu_limit_s} s of CPU")
    if not done or end.exit_code != 0:
        when = "after" if done else "before"
        return Verdict(Outcome.KILLED, passed, f"Program {how} {when} the tests finished")

    for ok, status, feedback in results:
        if not ok:
            return Verdict(status, passed, _trim(feedback))
    if stop is not None:
        text = _exception_text(stop)
        if stop["kind"] == "exit":
            text += " (the program exited before the tests finished)"
        return Verdict(_STOP_STATUS[stop["kind"]], passed, _trim(text))
    return Verdict(Outcome.PASSED, passed, "")


_STOP_STATUS = {"error": Outcome.ERROR, "memory": Outcome.MEMORY, "exit": Outcome.KILLED}


def _parse(messages: list[Any], nonce: str, tests: tuple[WireTest, ...]
           ) -> tuple[list[tuple[bool, Outcome, str]], dict | None, bool]:
    """Check the message grammar `start test* stop? done` and judge each test's result."""
    n_tests = len(tests)
    results: list[tuple[bool, Outcome, str]] = []
    stop = None
    done = False
    for position, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("n") != nonce:
            raise _Corrupt("a message without this run's nonce")
        if (message.get("k") == "start") != (position == 0):
            raise _Corrupt("a run must begin with one start message")
        if position == 0:
            continue
        if done or (stop is not None and message.get("k") != "done"):
            raise _Corrupt("a message after the run ended")
        kind = message.get("k")
        if kind == "test":
            index = message.get("i")
            if type(index) is not int or index != len(results) or index >= n_tests:
                raise _Corrupt(f"test result {message.get('i')!r} out of order")
            results.append(_judge(message, tests[len(results)]))
        elif kind == "stop":
            if _field(message, "kind") not in _STOP_STATUS:
                raise _Corrupt("unknown stop kind")
            _field(message, "etype"), _field(message, "msg")
            stop = message
        elif kind == "done":
            if stop is None and len(results) != n_tests:
                raise _Corrupt(f"done after {len(results)} of {n_tests} tests")
            done = True
        else:
            raise _Corrupt(f"unknown message kind {kind!r}")
    return results, stop, done


def _judge(message: dict, test: WireTest) -> tuple[bool, Outcome, str]:
    """One test result -> (passed, status if it failed, feedback if it failed)."""
    result = message.get("r")
    has_value = test.call is not None and test.expected is not None
    if result == "ok" and not has_value:
        return True, Outcome.PASSED, ""
    if result == "value" and has_value:
        try:
            ok = equal(message["out"], message["exp"], message.get("eq"))
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise _Corrupt(f"malformed value encoding ({exc!r})") from None
        output = _field(message, "repr")
        return ok, Outcome.FAILED, f"Input: {test.call} Output: {output} Expected: {test.expected}"
    if result == "raise":
        kind = _field(message, "kind")
        if kind == "assert":
            text = _field(message, "msg") or f"Assertion failed: {test.source.strip()}"
            return False, Outcome.FAILED, text
        if kind == "error":
            return False, Outcome.ERROR, _exception_text(message)
    raise _Corrupt(f"unexpected test result {result!r}")


def _field(message: dict, name: str) -> str:
    value = message.get(name)
    if type(value) is not str:
        raise _Corrupt(f"field {name!r} is not a string")
    return value


def _exception_text(message: dict) -> str:
    text = _field(message, "msg")
    return f"{_field(message, 'etype')}: {text}" if text else _field(message, "etype")


def _trim(text: str) -> str:
    return text if len(text) <= MAX_FEEDBACK else text[:MAX_FEEDBACK - 3] + "..."
