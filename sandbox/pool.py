"""SandboxPool: grade batches of Programs on warm, jailed worker processes.

    from sandbox.records import Program, TestCase
    from sandbox.config import SandboxConfig
    from sandbox.pool import SandboxPool

    with SandboxPool(SandboxConfig(workers=2)) as pool:
        [grade] = pool.grade([Program("p1", "def f(x):\\n    return x + 1\\n",
                                      (TestCase("assert f(1) == 2", "f(1)", "2"),))])
        assert grade.passed

The pool starts `config.workers` workers once (launch.py: each a bwrap jail around worker.py,
in its own cgroup where cgroups are writable) and hands programs to whichever is idle; each
worker runs one program at a time in a forked child confined by rlimits, Landlock and seccomp
(confine.py). `pool.mechanisms` says which of these layers are active; a missing one is a loud
warning, or an error for bwrap, namespaces and seccomp when `require_isolation` is set.
Results come back in input order. A worker that dies, wedges past the program's timeout +
`reply_margin_s`, or breaks the protocol is killed and replaced. A program graded SANDBOX_FAULT
(the executor broke, not the program) is graded once more, on a fresh worker; if that breaks
too its grade stays SANDBOX_FAULT. `pool.stats` counts both apart, so callers can report them
and keep them out of the student's failures:

    >>> pool.stats
    PoolStats(programs=328, sandbox_faults=0, sandbox_faults_final=0, tests=2330, tests_inside=3)

Failing to start a replacement is fatal: the next program that needs that worker slot raises
RuntimeError.

Two kinds of errors, as in the rest of the engine: a bad program is a Grade (any Status), a
broken sandbox (no isolation, no worker starts) is an exception.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

from sandbox.config import SandboxConfig
from sandbox.launch import Launcher, Mechanisms, WorkerFailure, WorkerProcess
from sandbox.records import Grade, Program, Status, TestCase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolStats:
    """Counts since the pool started (`pool.stats`)."""

    programs: int               # programs graded
    sandbox_faults: int         # programs whose first grading was SANDBOX_FAULT (re-run once)
    sandbox_faults_final: int   # ... and whose re-run was SANDBOX_FAULT too (their final grade)
    tests: int                  # tests graded
    tests_inside: int           # tests whose verdict rested on a comparison the program made
                                # (class-protocol tests; see sandbox/plan.py)


class SandboxPool:
    """A fixed set of warm sandbox workers; `grade` / `agrade` batches of Programs on them."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self._launcher = Launcher(self.config)
        # Workers are started from this one long-lived thread: bwrap --die-with-parent ties a
        # worker's life to the *thread* that forked it, so a short-lived thread would kill it.
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="sandbox-spawn")
        self._graders = ThreadPoolExecutor(self.config.workers, thread_name_prefix="sandbox-grade")
        self._idle: queue.Queue[WorkerProcess | None] = queue.Queue()   # None: slot to refill
        self._live: set[WorkerProcess] = set()
        self._lock = threading.Lock()
        self._counts = {name: 0 for name in PoolStats.__dataclass_fields__}
        self._closed = False
        self._finalizer = weakref.finalize(self, _kill_all, self._live, self._launcher)
        try:
            for _ in range(self.config.workers):   # the first decides jail vs. (allowed) no jail
                self._idle.put(self._spawn())
        except BaseException:
            self.close()
            raise

    @property
    def isolated(self) -> bool:
        """True when programs run inside the bwrap jail (always, unless require_isolation=False)."""
        return self._launcher.jailed

    @property
    def mechanisms(self) -> Mechanisms:
        """Which isolation layers are active: bwrap, namespaces, seccomp, landlock, cgroups.

            >>> pool.mechanisms.as_dict()
            {'bwrap': True, 'namespaces': True, 'seccomp': True, 'landlock': True, 'cgroups': True}
        """
        assert self._launcher.mechanisms is not None   # set by the first worker, in __init__
        return self._launcher.mechanisms

    @property
    def stats(self) -> PoolStats:
        with self._lock:
            return PoolStats(**self._counts)

    def grade(self, programs: Sequence[Program]) -> list[Grade]:
        """Grade a batch concurrently across the workers; grades come back in input order."""
        futures = [self._submit(p) for p in programs]
        return [f.result() for f in futures]

    async def agrade(self, programs: Sequence[Program]) -> list[Grade]:
        """`grade` for asyncio code: awaits without blocking the event loop."""
        return list(await asyncio.gather(*(asyncio.wrap_future(self._submit(p))
                                           for p in programs)))

    def close(self) -> None:
        """Finish programs in flight, then stop every worker. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._graders.shutdown(wait=True)
        with self._lock:
            workers = list(self._live)
            self._live.clear()
        for worker in workers:
            worker.close()
        # Only now: the spawner thread's exit kills every worker it started (parent-death signal).
        self._spawner.shutdown(wait=True)
        self._launcher.close()

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ internals

    def _submit(self, program: Program) -> Future[Grade]:
        if self._closed:
            raise RuntimeError("SandboxPool is closed")
        return self._graders.submit(self._grade_one, program, _request(program))

    def _grade_one(self, program: Program, request: Program) -> Grade:
        grade, inside = self._attempt(program, request, fresh=False)
        faulted = grade.status is Status.SANDBOX_FAULT
        if faulted:
            log.warning("sandbox fault on %s (%s); grading it again on a fresh worker",
                        program.program_id, grade.feedback)
            grade, inside = self._attempt(program, request, fresh=True)
        with self._lock:
            self._counts["programs"] += 1
            self._counts["sandbox_faults"] += faulted
            self._counts["sandbox_faults_final"] += grade.status is Status.SANDBOX_FAULT
            self._counts["tests"] += len(program.tests)
            self._counts["tests_inside"] += inside
        return grade

    def _attempt(self, program: Program, request: Program, fresh: bool) -> tuple[Grade, int]:
        """One grading on an idle worker (`fresh`: replace that worker first)."""
        worker = self._idle.get()
        try:
            if worker is not None and fresh:
                worker = self._retire(worker, "graded a sandbox fault", program)
            if worker is None:
                worker = self._spawn()   # raises RuntimeError: the sandbox itself is broken
            started = time.monotonic()
            try:
                reply = worker.call(request, request.timeout_s + self.config.reply_margin_s)
            except WorkerFailure as exc:
                worker = self._retire(worker, exc, program)
                return Grade(program.program_id, Status.SANDBOX_FAULT,
                             (False,) * len(program.tests), f"Sandbox fault: {exc}"[:500],
                             time.monotonic() - started), 0
            if reply.retire:
                worker = self._retire(worker, "its zygote died", program)
            return Grade(program.program_id, Status(reply.status), reply.test_passed,
                         reply.feedback, reply.duration_s,
                         tuple(reply.outputs)), reply.tests_inside
        finally:
            self._idle.put(worker)

    def _retire(self, worker: WorkerProcess, exc: WorkerFailure | str,
                program: Program) -> WorkerProcess | None:
        """Kill a failed worker and start its replacement; None if that fails (slot to refill)."""
        worker.kill()
        log.warning("sandbox worker failed on %s: %s%s", program.program_id, exc,
                    worker.stderr_tail())
        with self._lock:
            self._live.discard(worker)
        worker.close()
        try:
            return self._spawn()
        except RuntimeError as err:
            log.error("could not replace a sandbox worker: %s", err)
            return None

    def _spawn(self) -> WorkerProcess:
        try:
            worker = self._spawner.submit(self._launcher.start).result()
        except WorkerFailure as exc:   # only when running unjailed: there is nothing to fall to
            raise RuntimeError(f"could not start a sandbox worker: {exc}") from None
        with self._lock:
            self._live.add(worker)
        return worker



def _request(program: Program) -> Program:
    """Check a Program where it enters the sandbox; what goes on the wire is the record itself,
    with plain TestCases and a float timeout (the wire decoder checks types strictly)."""
    if not isinstance(program, Program):
        raise TypeError(f"SandboxPool grades Program records, got {type(program).__name__}")
    if not program.timeout_s > 0:
        raise ValueError(f"Program {program.program_id}: timeout_s must be > 0")
    tests = tuple(TestCase(t.source, t.call, t.expected) for t in program.tests)
    return Program(program.program_id, program.code, tests, program.setup,
                   float(program.timeout_s), bool(program.outputs))


def _kill_all(workers: set[WorkerProcess], launcher: Launcher) -> None:
    """Last resort when a pool is garbage-collected without close(), or at exit."""
    for worker in list(workers):
        worker.kill()
    launcher.close()
