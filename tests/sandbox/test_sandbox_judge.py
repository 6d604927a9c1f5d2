"""Judging in the worker: which test shapes are judged there (counted on the real task sets),
stateful tests, program objects, exceptions, and a zygote that dies.

    .venv/bin/python -m pytest tests/sandbox/test_sandbox_judge.py -q
"""
from __future__ import annotations

import collections
import os
import signal
import threading
from pathlib import Path

import pytest

from engine import prompts
from engine.records import Program, Status
from engine.records import TestCase as Case  # as Case: pytest would try to collect TestCase
from engine.tasks import load_file
from sandbox.config import SandboxConfig
from sandbox.plan import shapes
from sandbox.pool import SandboxPool


def grade_one(pool: SandboxPool, program: Program):
    [grade] = pool.grade([program])
    return grade


def shape_counts(tasks) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for task in tasks:
        counts.update(shapes(task.setup, prompts.program_code(task, task.reference or ""),
                             task.tests))
    return counts


# ------------------------------------------------------------------------- shapes, per task set

def test_humaneval_tests_are_judged_outside(shared_data):
    counts = shape_counts(load_file(Path(shared_data) / "humaneval.jsonl"))
    # inside: HumanEval/33's three `tuple(candidate(x)) == tuple(sort_third(x))`, where both
    # sides are the program; worker: 48 `assert True` and one `print`, no program call at all.
    assert counts == {"outside": 1113, "inside": 3, "worker": 49}


def test_mbpp_tests_are_judged_outside(shared_data):
    counts = shape_counts(load_file(Path(shared_data) / "mbpp.jsonl"))
    assert counts == {"outside": 2922}


def test_builtin_tests_are_judged_outside(builtin_tasks):
    counts = shape_counts(builtin_tasks)
    # inside: class-protocol tests whose call is the program's own ==, < or * on its objects
    # (vector2, polynomial, ratio), and max_ignoring_nan's `... == float('inf')` as the call.
    assert counts == {"outside": 1453, "inside": 10}


# ---------------------------------------------------------------------------- judged in the worker

NODE = ("class Node:\n    def __init__(self, v):\n        self.v, self.left, self.right = v, None, None\n"
        "def height(n):\n    return 0 if n is None else 1 + max(height(n.left), height(n.right))\n")


def test_setup_that_builds_program_objects(sandbox_pool):
    """MBPP/927's shape: the setup builds a tree of the program's own class."""
    setup = "root = Node(1)\nroot.left = Node(2)\nroot.left.right = Node(3)\n"
    tests = (Case("assert height(root) == 3"), Case("assert height(root.left) == 2"),
             Case("assert root.left.v == 2"))
    grade = grade_one(sandbox_pool, Program("tree", NODE, tests, setup))
    assert grade.passed, grade


def test_stateful_calls_run_as_written(sandbox_pool):
    """Method chains and a test's own lambdas run in the child, in order, as one input."""
    code = ("class Stack:\n    def __init__(self):\n        self.items = []\n"
            "    def push(self, x):\n        self.items.append(x)\n        return self\n"
            "    def pop(self):\n        return self.items.pop()\n"
            "    def view(self):\n        return self.items\n")
    tests = (Case("", "Stack().push(1).push(2).pop()", "2"),
             # the view must be a copy: appending to it must not change the stack
             Case("", "(lambda s: (s.view().append(9), s.view())[1])(Stack().push(1))", "[1]"))
    grade = grade_one(sandbox_pool, Program("stack", code, tests))
    assert grade.status is Status.FAILED and grade.test_passed == (True, False), grade
    fixed = code.replace("return self.items\n", "return list(self.items)\n")
    assert grade_one(sandbox_pool, Program("stack", fixed, tests)).passed


def test_program_objects_are_never_compared(sandbox_pool):
    code = "class P:\n    def __init__(self, x): self.x = x\n    def __eq__(self, o): return True\n" \
           "def f(x):\n    return P(x)\n"
    tests = (Case("assert f(1).x == 1"),        # an attribute is a value: judged
             Case("assert f(1) == f(1)"),        # the program's == : inside, and opaque: fails
             Case("assert f(1)"))                # its truth is the program's: fails
    grade = grade_one(sandbox_pool, Program("p", code, tests))
    assert grade.test_passed == (True, False, False), grade


def test_exceptions_keep_their_type_and_stop_iteration_does_not(sandbox_pool):
    code = ("def f(x):\n    if x < 0:\n        raise ValueError('negative')\n    return x\n"
            "def g(x):\n    if x == 2:\n        raise StopIteration\n    return x\n")
    tests = (Case("try:\n    f(-1)\nexcept ValueError as e:\n    assert str(e) == 'negative'\n"
                  "else:\n    assert False"),
             Case("assert all(map(lambda x: g(x) == x, [1, 2, 3]))"))
    grade = grade_one(sandbox_pool, Program("e", code, tests))
    assert grade.test_passed == (True, False), grade


def test_a_worker_value_is_not_sent_to_the_program(sandbox_pool):
    setup = "def helper(x):\n    return x * 10\n"
    tests = (Case("assert f(helper(2)) == 21"),     # helper runs here, f gets 20
             Case("assert f(helper) == 1"))         # a function cannot go to the program
    grade = grade_one(sandbox_pool, Program("h", "def f(x):\n    return x + 1\n", tests, setup))
    assert grade.test_passed == (True, False), grade
    assert "cannot be sent to the program" in grade.feedback


# ----------------------------------------------------------------------------------- the zygote

def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(p) for p in fh.read().split()]


def test_a_dead_zygote_fails_its_program_and_retires_the_worker():
    with SandboxPool(SandboxConfig(workers=1)) as pool:
        [worker] = pool._live
        jailed = _children(worker.proc.pid)[0]   # the worker python, under bwrap
        [zygote] = _children(jailed)
        sleeper = Program("s", "import time\ndef f(x):\n    time.sleep(3)\n    return x + 1\n",
                          (Case("assert f(1) == 2"),), "", 10.0)
        threading.Timer(0.5, lambda: os.kill(zygote, signal.SIGKILL)).start()
        grade = grade_one(pool, sleeper)
        assert grade.status is Status.KILLED, grade
        assert worker not in pool._live                     # replaced
        assert pool.stats.sandbox_faults == 0
        assert grade_one(pool, Program("g", "def f(x):\n    return x + 1\n",
                                       (Case("assert f(1) == 2"),))).passed


@pytest.mark.parametrize("n_tests", [0, 1, 40])
def test_any_number_of_tests(sandbox_pool, n_tests):
    tests = tuple(Case(f"assert f({i}) == {i + 1}") for i in range(n_tests))
    grade = grade_one(sandbox_pool, Program("n", "def f(x):\n    return x + 1\n", tests))
    assert grade.passed and grade.test_passed == (True,) * n_tests, grade


def test_outputs_come_back_encoded_when_asked(sandbox_pool):
    """Program.outputs: each test's CALL side output, strictly encoded (test synthesis reads the
    reference's answers this way); None where the call raised or there is no CALL side."""
    code = "def f(x):\n    if x < 0:\n        raise ValueError(x)\n    return [x, str(x), x / 2]\n"
    tests = (Case("", "f(2)", "None"), Case("", "f(-1)", "None"), Case("assert True"),
             Case("assert f(4) == [4, '4', 2.0]"))
    asked = grade_one(sandbox_pool, Program("o", code, tests, outputs=True))
    assert asked.outputs == (["list", [["int", "0x2"], ["str", "2"], ["float", "1.0"]]], None,
                             None, ["list", [["int", "0x4"], ["str", "4"], ["float", "2.0"]]])
    assert asked.test_passed == (False, False, True, True)   # still judged as usual
    assert grade_one(sandbox_pool, Program("o", code, tests)).outputs == ()
