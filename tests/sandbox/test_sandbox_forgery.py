"""Verdicts no program can forge: programs written against the sandbox's own harness, and
objects that lie about equality, never pass, whatever shape the test has.

    .venv/bin/python -m pytest tests/sandbox/test_sandbox_forgery.py -q

Every forger below is a wrong program (the right answer to f(1) is 2, and none of them knows
it): it passes only if it can read the expected value out of its own process, or make the
verdict without computing anything. Each is graded against every test shape, next to an honest
program that passes every shape (so the shapes are sound tests).
"""
from __future__ import annotations

import secrets

import pytest

from engine.records import Program, Status
from engine.records import TestCase as Case  # as Case: pytest would try to collect TestCase
from sandbox.config import SandboxConfig
from sandbox.pool import SandboxPool

HONEST = "def f(x):\n    return x + 1\n"
CHECK = "def check(candidate):\n    assert candidate(1) == 2\n"
SHAPES = {   # name: (test, setup); each passes exactly when f(1) is 2 (or equals 2)
    "assert CALL == EXPECTED": (Case("assert f(1) == 2"), ""),
    "split by the caller": (Case("assert f(1) == 2", "f(1)", "2"), ""),
    "call/expected only": (Case("", "f(1)", "2"), ""),
    "EXPECTED == CALL": (Case("assert 2 == f(1)"), ""),
    "with a message": (Case("assert f(1) == 2, 'f(1) should be 2'"), ""),
    "in": (Case("assert f(1) in (2, 3)"), ""),
    "not !=": (Case("assert not (f(1) != 2)"), ""),
    "abs difference": (Case("assert abs(f(1) - 2) < 1e-6"), ""),
    "inside a list": (Case("assert [f(1)] == [2]"), ""),
    "sorted with a test value": (Case("assert sorted([f(1), 0]) == [0, 2]"), ""),
    "str": (Case("assert str(f(1)) == '2'"), ""),
    "two statements": (Case("x = f(1)\nassert x == 2"), ""),
    "short-circuit": (Case("assert f(1) is not None and f(1) + 0 == 2"), ""),
    "the setup's check(candidate)": (Case("check(f)"), CHECK),
}

# Knows nothing about the expected value; says yes to every comparison it is asked.
LIAR = """
class Liar:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    __lt__ = __le__ = __gt__ = __ge__ = __eq__
    def __bool__(self): return True
    def __hash__(self): return 0
    def __abs__(self): return 0
    def __sub__(self, other): return self
    __rsub__ = __add__ = __radd__ = __sub__
    def __contains__(self, item): return True
    def __repr__(self): return "Liar()"
def f(x):
    return Liar()
"""
LYING_INT = """
class I(int):
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    __hash__ = int.__hash__
def f(x):
    return I(7)
"""
# Reads what the harness holds (its frames and everything the garbage collector knows) for
# anything that looks like an expected value, and returns that; a wrong answer otherwise.
HARNESS_READER = """
import gc, sys
def _guesses():
    found = []
    def look(obj):
        text = obj if isinstance(obj, str) else getattr(obj, "expected", None)
        if isinstance(text, str) and "==" in text:
            found.append(text.rsplit("==", 1)[1].split(",")[0])
        elif isinstance(text, str) and getattr(obj, "call", None):
            found.append(text)
        if isinstance(obj, dict):
            for key in ("expected", "exp"):
                if isinstance(obj.get(key), str):
                    found.append(obj[key])
    frame = sys._getframe()
    while frame is not None:
        for value in list(frame.f_locals.values()):
            look(value)
        frame = frame.f_back
    for obj in gc.get_objects():
        look(obj)
    return found
def f(x):
    for text in _guesses():
        try:
            value = eval(text)
        except Exception:
            continue
        if value != x:
            return value
    return x - 100
"""
# Takes over the harness: finds its sender in the frames and answers for tests it never ran,
# in the harness's own message forms (the previous harness's "test ok", or this one's outputs
# with values a lenient judge might accept), then exits cleanly.
RESULT_FORGER = """
import os, sys
def f(x):
    frame = sys._getframe()
    while frame is not None:
        send = frame.f_locals.get("send")
        if callable(send):
            if "request" in frame.f_locals:   # the harness that ran the tests itself
                send("test", i=0, r="ok")
            else:
                for value in (["bool", True], ["int", "0x1"], ["opaque", "builtins.int"],
                              ["str", "2"], ["float", "nan"]) * 10:
                    send("out", v=value)
            send("done")
            os._exit(0)
        frame = frame.f_back
    return x
"""
# Writes well-formed frames on every fd at import (before any operation), then exits.
FRAME_WRITER = """
import os, struct, json
def frame(obj):
    data = json.dumps(obj).encode()
    return struct.pack(">I", len(data)) + data
frames = [frame({"k": "ready"})] + [frame({"k": "out", "v": ["bool", True]})] * 50
frames.append(frame({"k": "done"}))
for fd in range(3, 64):
    try:
        os.write(fd, b"".join(frames))
    except OSError:
        pass
os._exit(0)
"""
# The old protocol's messages, each with a guessed nonce, on the result channel.
NONCE_GUESSER = """
import os, struct, json, secrets
def frame(obj):
    data = json.dumps(obj).encode()
    return struct.pack(">I", len(data)) + data
def f(x):
    for _ in range(100):
        nonce = secrets.token_hex(16)
        os.write(3, frame({"n": nonce, "k": "test", "i": 0, "r": "ok"}))
        os.write(3, frame({"n": nonce, "k": "done"}))
    os._exit(0)
"""
FORGERS = {"always-equal object": LIAR, "int subclass that lies": LYING_INT,
           "harness reader": HARNESS_READER, "result forger": RESULT_FORGER,
           "frame writer": FRAME_WRITER, "nonce guesser": NONCE_GUESSER}


def programs(code: str) -> list[Program]:
    return [Program(name, code, (test,), setup, 5.0) for name, (test, setup) in SHAPES.items()]


def test_the_honest_program_passes_every_shape(sandbox_pool):
    grades = sandbox_pool.grade(programs(HONEST))
    assert [(g.program_id, g.status) for g in grades if not g.passed] == []


@pytest.mark.parametrize("forger", list(FORGERS))
def test_a_forger_passes_no_shape(sandbox_pool, forger):
    grades = sandbox_pool.grade(programs(FORGERS[forger]))
    assert [g.program_id for g in grades if g.status is Status.PASSED] == []
    assert all(g.test_passed == (False,) for g in grades), grades
    assert all(g.status is not Status.SANDBOX_FAULT for g in grades), grades
    assert sandbox_pool.grade(programs(HONEST)[:1])[0].passed   # the worker is still sound


SCANNER = r"""
import ctypes, re
def scan(prefix, *ignored):
    "Every `prefix` + 16 hex digits in this process's heap, stack and anonymous memory."
    pattern = re.compile(re.escape(prefix.encode()) + rb"[0-9a-f]{16}")
    found, chunk_size = set(), 1 << 22
    with open("/proc/self/maps") as maps:
        regions = [line.split() for line in maps]
    for fields in regions:   # no file behind them: reading cannot fault past a file's end
        if not fields[1].startswith("r") or fields[5:] not in ([], ["[heap]"], ["[stack]"]):
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        for offset in range(start, end, chunk_size):
            chunk = ctypes.string_at(offset, min(end - offset, chunk_size + 64))
            found.update(m.group().decode() for m in pattern.finditer(chunk))
    return sorted(found)
"""


def test_expected_values_never_reach_the_program():
    """The child's whole memory holds neither this program's expected values nor those of the
    program graded before it on the same worker; a control finds a marker sent as input."""
    mark, mine, before = (f"{name}{secrets.token_hex(8)}" for name in ("MARKIN", "SECRETA",
                                                                          "SECRETB"))
    tests = (Case(f"assert scan('MARKIN', {mark!r}) == [{mark!r}]"),
             Case(f"assert scan('SECRETA') == [{mine!r}]"),
             Case(f"assert scan('SECRETB') == [{before!r}]"))
    with SandboxPool(SandboxConfig(workers=1)) as pool:
        [earlier] = pool.grade([Program("before", HONEST, (Case(f"assert f(1) == {before!r}"),))])
        assert earlier.status is Status.FAILED
        [grade] = pool.grade([Program("scanner", SCANNER, tests, "", 20.0)])
    assert grade.test_passed == (True, False, False), grade
    assert grade.feedback.startswith("Input: scan('SECRETA') Output: [] Expected:"), grade


def test_inside_tests_are_counted():
    class_protocol = "class V:\n    def __init__(self, x): self.x = x\n" \
                     "    def __eq__(self, o): return self.x == o.x\n"
    with SandboxPool(SandboxConfig(workers=1)) as pool:
        grades = pool.grade([
            Program("protocol", class_protocol, (Case("", "V(1) == V(1)", "True"),
                                                 Case("", "V(2).x", "2"))),
            Program("program computes both", HONEST, (Case("assert f(1) == f(1)"),)),
        ])
        assert all(g.passed for g in grades), grades
        assert pool.stats.tests_inside == 2 and pool.stats.tests == 3
