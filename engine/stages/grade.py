"""Stage 2, grade: programs built from a task and a solution, graded in the sandbox pool through
the run store (a grade is reused while the program, its tests and the limits are unchanged)."""
from __future__ import annotations

import dataclasses
from typing import Sequence

from engine import prompts
from engine.records import Grade, Program, Task
from engine.run.store import RunStore, fingerprint


def program(sandbox_cfg, pid: str, task: Task, code: str, seen_only: bool = False) -> Program:
    """The program that grades `code` against the task's hidden (or seen) tests, with the
    sandbox's configured wall-clock limit."""
    return Program(pid, prompts.program_code(task, code),
                   task.seen_tests if seen_only else task.tests, task.setup, sandbox_cfg.timeout_s)


def program_fingerprint(sandbox_cfg, prog: Program) -> str:
    """What decides a verdict: the program, its tests, and the limits it runs under."""
    limits = {k: v for k, v in dataclasses.asdict(sandbox_cfg).items()
              if k not in ("workers", "bwrap", "require_isolation")}
    if prog.outputs:
        return fingerprint("grade", dataclasses.replace(prog, program_id=""), limits)
    # a Program that asks for no outputs hashes as it did before `outputs` existed, so run
    # directories made then still resume
    return fingerprint("grade", _GradeKey("", prog.code, prog.tests, prog.setup, prog.timeout_s),
                       limits)


@dataclasses.dataclass(frozen=True)
class _GradeKey:
    """sandbox.records.Program's fields before `outputs` (orjson hashes them in this order)."""

    program_id: str
    code: str
    tests: tuple
    setup: str
    timeout_s: float


def grade(sandbox, pairs: Sequence[tuple[str, Task, str]], seen_only: bool = False
          ) -> list[Grade]:
    """Grade (program_id, task, solution code) triples in the sandbox pool."""
    return sandbox.grade([program(sandbox.config, pid, t, code, seen_only)
                          for pid, t, code in pairs])


def grade_stage(store: RunStore, name: str, sandbox, items: Sequence[tuple[str, Task, str]],
                seen_only: bool = False, part: bool = False) -> dict[str, Grade]:
    """Grade (program_id, task, code) triples through the store; program id -> Grade."""
    return programs_stage(store, name, sandbox,
                          [program(sandbox.config, pid, t, code, seen_only)
                           for pid, t, code in items], part)


def programs_stage(store: RunStore, name: str, sandbox, programs: Sequence[Program],
                   part: bool = False) -> dict[str, Grade]:
    """Grade Program records through the store (reused while each program's fingerprint is
    unchanged); program id -> Grade. `part`: a piece of a stage streamed in pieces (no
    progress bar, no view written: the caller writes the whole view at its end)."""
    return {g.program_id: g for g in store.stage(
        name, Grade, list(programs), key=lambda p: p.program_id,
        fp=lambda p: program_fingerprint(sandbox.config, p), rkey=lambda g: g.program_id,
        compute=sandbox.grade, batch=256, export=not part, show=not part)}
