"""The sandbox's interface records: what a caller hands it (Program, TestCase) and what it
hands back (Grade, Status).

The sandbox owns them (as SandboxFusion's `runners/types.py` owns its request and result types):
callers import them from here, and the jail imports the same file (it is one of the modules
copied into the jail), so there is no twin to keep in step. Standard library only, for the jail.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class Status(str, enum.Enum):
    """Outcome of grading one program; the sandbox decides it, never the program."""

    PASSED = "passed"        # every test ran and passed
    FAILED = "failed"        # a test's assertion failed (wrong answer)
    ERROR = "error"          # the program or a test raised, or did not compile
    TIMEOUT = "timeout"      # wall-clock or CPU limit hit
    MEMORY = "memory"        # address-space / cgroup memory limit hit
    KILLED = "killed"        # killed by a signal it did not ask for, or exited early
    SANDBOX_FAULT = "sandbox-fault"  # the executor itself broke; not the program's fault


@dataclass(frozen=True)
class TestCase:
    """One test: an assert statement, optionally split into call and expected expression.

    `call`/`expected` are filled when the test has the form `assert CALL == EXPECTED`; they let
    the harness report the paper's feedback (input, output, expected) for the first failure.
    """

    __test__ = False              # not a pytest class, despite the name

    source: str                   # a statement that raises AssertionError when the test fails
    call: str | None = None       # expression evaluated to get the output, e.g. "f(1, 2)"
    expected: str | None = None   # expression for the expected value, e.g. "3"


@dataclass(frozen=True)
class Program:
    """A unit of work for the sandbox: code plus the tests to run against it."""

    program_id: str
    code: str
    tests: tuple[TestCase, ...]
    setup: str = ""
    timeout_s: float = 10.0
    outputs: bool = False         # also return what each test's CALL side computed
                                  # (Grade.outputs): test synthesis asks the reference this way


@dataclass(frozen=True)
class Grade:
    """The sandbox's verdict on one Program."""

    program_id: str
    status: Status
    test_passed: tuple[bool, ...]   # one entry per test; tests after a crash count as failed
    feedback: str                   # the paper's feedback for the first failure; "" when passed
    duration_s: float
    # with Program.outputs: per test, the output of its CALL side as sandbox/values.py encodes
    # it, or None where the call raised, was not reached, or the test has no CALL side
    outputs: tuple[list | None, ...] = ()

    @property
    def passed(self) -> bool:
        return self.status is Status.PASSED

    @property
    def faulted(self) -> bool:
        """The executor broke on it, on its re-run too: no verdict on the program at all."""
        return self.status is Status.SANDBOX_FAULT

    @property
    def failed(self) -> bool:
        """A verdict against the program (a final SANDBOX_FAULT is neither pass nor fail)."""
        return not self.passed and not self.faulted
