"""The worker's judgement of one program: the task's setup and every test run here, in the
worker, with each piece of program input computed by the child (plan.py, harness.py).

    judge = Judge(request, channel); run = judge.run()   # -> verdict.Run

The test namespace holds the setup's names and builtins (trusted: the worker's own). A program
chain in a test becomes an operation whose answer is decoded into fresh builtin values, or into
a `Remote` when it is an object only the program understands (remote.py: it can be called or
have attributes read, never compared). Names the setup's own functions use that nothing here
defines (HumanEval's `check` calling the prompt's `poly`) are looked up in the program, as
`Remote`s, by the namespace's `__missing__`.

Operations whose input is fixed (a test `assert f(1) == 2`: `lambda: (f(1))`) are sent ahead in
one frame, and when no later test can need another, the child's input is closed with them, so
the child answers them all at once; the rest go one at a time as the worker's evaluation needs
them. Limits: test code in the worker runs on values bounded by values.py's encoding limits and
within the program's deadline at each operation, but a test that turns an output into work
(`range(f(x))`) can keep the worker past it; the pool then counts a sandbox fault.

Runs in the jail: stdlib and orjson only.
"""
from __future__ import annotations

import collections
import functools
import marshal
import sys
import types
from typing import Any

from sandbox.channel import Abort, Channel, Corrupt, Gone, TimedOut
from sandbox.parse import Parsed, names_for, parse_test
from sandbox.plan import SHIP, ExecPlan, Plan, SplitPlan, plan_test
from sandbox.records import Program, Status
from sandbox.remote import Namespace, Opaque, Raised, Remote, Unsendable, label, raised_type, sendable
from sandbox.values import decode, encode, equal, tags
from sandbox.verdict import Run, TestResult, exception_text

MAX_SHOW = 300   # characters of an output shown in feedback
_UNSET = object()
_PASS = TestResult(True, Status.PASSED, "")


class Stopped(Abort):
    """The child stopped: its program failed to run, or raised SystemExit / MemoryError."""


class Judge:
    def __init__(self, request: Program, channel: Channel) -> None:
        self.request = request
        self.channel = channel
        self.ns = Namespace(self)
        self.ns[SHIP] = self._ship
        # Ops sent ahead, as (test index, source), not yet taken; answers to them read early
        # (while waiting for a later op); answers to drop (their test did not take them).
        self.ahead: collections.deque[tuple[int, str]] = collections.deque()
        self.early: collections.deque[dict] = collections.deque()
        self.skip = 0
        self.sent_upto = 0
        self.current = -1
        self.results: list[TestResult] = []
        self.started = self.ready = self.done = self.timed_out = False
        self.stop: dict | None = None
        self.corrupt: str | None = None
        self.inside = 0
        self.outputs: list = [None] * len(request.tests) if request.outputs else []

    def run(self) -> Run:
        try:
            # Now, not with the first ops: the child runs the program while the tests are planned.
            self.channel.send({"code": self.request.code})
            try:
                self._tests()
            except Stopped:
                pass
            self._finish()
        except TimedOut:
            self.timed_out = True
        except Corrupt as exc:
            self.corrupt = str(exc) or "malformed message"
        except Gone:
            pass
        return Run(tuple(self.results), self.started, self.done, self.stop, self.corrupt,
                   self.timed_out, self.channel.zygote_lost, tuple(self.outputs))

    # ------------------------------------------------------------------------------ tests

    def _tests(self) -> None:
        tests = self.request.tests
        try:
            exec(_compiled(self.request.setup), self.ns)
        except Abort:
            raise
        except BaseException as exc:
            text = exception_text(type(exc).__name__, _str(exc)) + " (in the task's setup)"
            self.results = [TestResult(False, Status.ERROR, text)] * len(tests)
            return
        parsed = [parse_test(t.source, t.call, t.expected) for t in tests]
        stores = frozenset().union(*(p.stores for p in parsed))
        plans = [self._plan(p, stores) for p in parsed]
        self.inside = sum(bool(p and p.inside) for p in plans)
        for index, (plan, facts) in enumerate(zip(plans, parsed)):
            if index >= self.sent_upto and plan is not None and plan.ahead is not None:
                self._send_ahead(plans, index)
            self.current = index
            self.results.append(self._test(plan, facts))
            while self.ahead and self.ahead[0][0] == index:   # ops this test did not take
                self.ahead.popleft()
                if self.early:
                    self.early.popleft()
                else:
                    self.skip += 1

    def _plan(self, parsed: Parsed, stores: frozenset[str]) -> Plan | None:
        if parsed.error:
            return None
        remote, local, imported = names_for(parsed, stores | self.ns.keys(), self.request.code,
                                            sys.modules)
        for name in imported:
            self.ns[name] = sys.modules[name]   # the program's stdlib import: use ours
        return plan_test(parsed, remote, local)

    def _send_ahead(self, plans: list[Plan | None], start: int) -> None:
        end, ops = start, []
        while end < len(plans) and plans[end] is not None and plans[end].ahead is not None:
            for source in plans[end].ahead:
                self.ahead.append((end, source))
                ops.append([_wire(source), []])
            end += 1
        self.sent_upto = end
        if ops:
            self.channel.send({"ops": ops})
        # Nothing after these can need another operation, unless the setup's own code does.
        setup_code = any(isinstance(v, (types.FunctionType, type)) for v in self.ns.values())
        if end == len(plans) and not setup_code:
            self.channel.close_input()

    def _test(self, plan: Plan | None, parsed: Parsed) -> TestResult:
        if plan is None:
            return TestResult(False, Status.ERROR, parsed.error)
        source = ""
        try:
            for step in plan.steps:
                if isinstance(step, ExecPlan):
                    source = step.src
                    exec(step.code, self.ns)
                else:
                    failure = self._split(step)
                    if failure is not None:
                        return failure
            return _PASS
        except Abort:
            raise
        except AssertionError as exc:
            return TestResult(False, Status.FAILED,
                              _str(exc) or f"Assertion failed: {source.strip()}")
        except Opaque as exc:
            return TestResult(False, Status.FAILED, f"Output cannot be judged: {_str(exc)}")
        except Raised as exc:
            return TestResult(False, Status.ERROR, exception_text(exc.etype, exc.msg))
        except MemoryError:
            return TestResult(False, Status.MEMORY, "MemoryError while judging the output")
        except BaseException as exc:
            return TestResult(False, Status.ERROR, exception_text(type(exc).__name__, _str(exc)))

    def _split(self, step: SplitPlan) -> TestResult | None:
        left_raw, left = self._side(step.left)
        if self.outputs and self.outputs[self.current] is None:   # the test's first split
            self.outputs[self.current] = left_raw
        right_raw, right = self._side(step.right)
        try:
            ok = equal(left_raw, right_raw)
        except (TypeError, ValueError, IndexError, KeyError, AttributeError) as exc:
            raise Corrupt(f"malformed output encoding ({exc!r})") from None
        if not ok and "opaque" in tags(right_raw) and not isinstance(right, Remote):
            # The test's own object judges (pytest.approx and the like): trusted code, on the
            # decoded output.
            if left is _UNSET:
                left = self._decode(left_raw)
            verdict = left == right
            ok = type(verdict) is bool and verdict
        if ok:
            return None
        if step.msg is not None:
            return TestResult(False, Status.FAILED, _str(eval(step.msg, self.ns)))
        shown = _show(self._decode(left_raw) if left is _UNSET else left)
        return TestResult(False, Status.FAILED,
                          f"Input: {step.left_src} Output: {shown} Expected: {step.right_src}")

    def _side(self, side: Any) -> tuple[list, Any]:
        """(encoding, value): an op's answer as sent, or the worker's value, encoded here."""
        if side.op is not None:
            args = [self._bound(name) for name in side.op.bindings]
            try:
                return self._answer(side.op.source, args), _UNSET
            except Unsendable:   # an argument only the worker has: see _ship
                value = eval(_compiled(side.op.source, "eval"), self.ns)(*args)
                return encode(value, label), value
        if side.encoded is not None:   # a literal, encoded once when the test was planned
            return side.encoded, _UNSET
        value = eval(side.code, self.ns)
        return encode(value, label), value

    # ------------------------------------------------------------------------- operations

    def operate(self, source: str, args: list) -> Any:
        """Run one operation in the child and decode its answer."""
        return self._decode(self._answer(source, args))

    def _ship(self, source: str, args: tuple) -> Any:
        """What a test's rewritten program chain calls (plan.py)."""
        try:
            return self._decode(self._answer(source, list(args)))
        except Unsendable:
            # An argument only the worker has (a setup function): evaluate the chain here,
            # its program names as Remotes, and send the program only what it can take.
            return eval(_compiled(source, "eval"), self.ns)(*args)

    def _bound(self, name: str) -> Any:
        if name not in self.ns:
            raise NameError(f"name {name!r} is not defined")
        return self.ns[name]

    def _answer(self, source: str, args: list) -> list:
        if self.ahead and self.ahead[0] == (self.current, source) and not args:
            self.ahead.popleft()
            message = self.early.popleft() if self.early else self._next_answer()
        else:
            frame = [_wire(source), [encode(arg, sendable) for arg in args]]
            if any(arg[0] == "toolarge" for arg in frame[1]):
                raise Opaque("an argument is too large to send to the program")
            self.channel.send({"ops": [frame]})
            while len(self.early) < len(self.ahead):   # answers to ops sent ahead come first
                self.early.append(self._next_answer())
            message = self._next_answer()
        kind = message.get("k")
        if kind == "out":
            value = message.get("v")
            if type(value) is not list or not value or type(value[0]) is not str:
                raise Corrupt("an output that is not an encoded value")
            return value
        if kind == "raise":
            etype, msg = _field(message, "etype"), _field(message, "msg")
            raise raised_type(etype)(etype, msg)
        if kind == "stop":
            self._stopped(message, "test")
        raise Corrupt(f"unexpected message {kind!r}")

    def _next_answer(self) -> dict:
        message = self._message()
        while self.skip and message.get("k") in ("out", "raise"):
            self.skip -= 1
            message = self._message()
        return message

    def _incoming(self) -> tuple[dict, str | None] | None:
        """The child's next message and its kind, after the checks every message gets: a
        corrupt channel raises, and the first message must be "start" (taken here: None)."""
        message = self.channel.next()
        kind = message.get("k") if isinstance(message, dict) else None
        if kind == "corrupt":
            raise Corrupt(message["why"])
        if not self.started:
            if kind != "start":
                raise Corrupt("a run must begin with one start message")
            self.started = True
            return None
        return message, kind

    def _message(self) -> dict:
        while True:
            got = self._incoming()
            if got is None:
                continue
            message, kind = got
            if not self.ready:
                if kind == "stop":
                    self._stopped(message, "program")
                if kind != "ready":
                    raise Corrupt(f"expected ready, got {kind!r}")
                self.ready = True
            else:
                return message

    def _stopped(self, message: dict, stage: str) -> None:
        self._record_stop(message, stage)
        raise Stopped

    def _record_stop(self, message: dict, stage: str) -> None:
        if message.get("stage") != stage or message.get("kind") not in ("error", "memory", "exit"):
            raise Corrupt("malformed stop message")
        _field(message, "etype"), _field(message, "msg")
        self.stop = message

    def _finish(self) -> None:
        """Close the child's input and read to its "done" (answers sent ahead may remain)."""
        self.channel.close_input()
        unanswered = len(self.ahead) - len(self.early) + self.skip
        while not self.done:
            got = self._incoming()
            if got is None:
                continue
            message, kind = got
            if not self.ready and self.stop is None:
                if kind == "stop":
                    self._record_stop(message, "program")
                elif kind == "ready":
                    self.ready = True
                else:
                    raise Corrupt(f"expected ready, got {kind!r}")
            elif kind == "done":
                self.done = True
            elif kind in ("out", "raise") and unanswered > 0 and self.stop is None:
                unanswered -= 1
            elif kind == "stop" and self.stop is None:
                self._record_stop(message, "test")
            else:
                raise Corrupt(f"unexpected message {kind!r} at the end")

    def _decode(self, raw: list) -> Any:
        try:
            return decode(raw, self._reference)
        except ValueError as exc:
            raise Corrupt(str(exc)) from None

    def _reference(self, encoded: list) -> Remote:
        if encoded[0] == "ref" and len(encoded) == 3 and type(encoded[1]) is int \
                and type(encoded[2]) is str:
            return Remote(self, ["ref", encoded[1]], encoded[2][:200])
        if encoded[0] == "toolarge" and len(encoded) == 2 and type(encoded[1]) is str:
            return Remote(self, None, f"too large {encoded[1][:200]}")
        raise ValueError(f"unexpected reference {encoded[0]!r}")


def _field(message: dict, name: str) -> str:
    value = message.get(name)
    if type(value) is not str:
        raise Corrupt(f"field {name!r} is not a string")
    return value


@functools.lru_cache(maxsize=1024)
def _compiled(source: str, mode: str = "exec") -> Any:
    return compile(source, "<setup>", mode)


@functools.lru_cache(maxsize=8192)
def _wire(source: str) -> str:
    """An operation as the child gets it: compiled here, once (marshal, hex)."""
    return marshal.dumps(compile(source, "<test input>", "eval")).hex()


def _str(exc: Any) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<{type(exc).__name__}>"


def _show(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:   # an int past the int-to-str digit limit
        text = f"<int of {value.bit_length()} bits>" if type(value) is int else "<output>"
    return text if len(text) <= MAX_SHOW else text[:MAX_SHOW - 3] + "..."
