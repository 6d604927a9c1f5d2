"""Stages 3-4, refine and verify: the teacher rectifies each failed attempt from its own code and
error, in rounds (a refinement that fails goes back with its own error), and every refinement is
graded against the same tests."""
from __future__ import annotations

import contextlib
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

from engine import prompts
from engine.records import Attempt, Grade, Refinement, Task
from engine.run.runlog import Progress
from engine.run.store import RunStore
from engine.stages import personal
from engine.stages.grade import grade_stage
from engine.teacher import Teacher


@dataclass(frozen=True)
class TeacherJob:
    """One teacher request of the refine stage, and the ids of the refinements it yields.

    Round 0 asks once per failed attempt for `len(chains)` samples, `<attempt_id>>r0.<j>`. Round
    r >= 1 continues chain j alone, showing the teacher that chain's refinement which failed
    verification and its error: `<attempt_id>>r<r>.<j>`. A StanD answer (attempt_id None) is
    `<task_id>>stand`. Ids are stable, so the run store resumes by skipping committed ones.
    """

    task: Task
    attempt_id: str | None          # None: a StanD answer from the task alone
    template: str                   # prompts.TEMPLATES name
    code: str = ""                  # shown to the teacher: the student's or a refinement's code
    feedback: str = ""              # that code's execution feedback
    round: int = 0
    chains: tuple[int, ...] = (0,)  # sample indices; the request asks for n = len(chains)
    sampling: tuple[tuple[str, float], ...] = ()  # per-request overrides, e.g. temperature

    @property
    def extra(self) -> dict | None:
        return dict(self.sampling) or None

    @property
    def ids(self) -> tuple[str, ...]:
        if self.attempt_id is None:   # from the task alone: a StanD answer, or (synthesis) inputs
            base = f"{self.task.task_id}>{'stand' if self.template == 'answer' else self.template}"
            return (base,) if self.chains == (0,) else tuple(f"{base}.{j}" for j in self.chains)
        return tuple(f"{self.attempt_id}>r{self.round}.{j}" for j in self.chains)

    def messages(self) -> list[dict[str, str]]:
        return prompts.teacher_messages(self.template, self.task, self.code, self.feedback)

    @property
    def job_id(self) -> str:
        return self.ids[0]  # all samples of a request are appended together


def first_round_jobs(failed: Sequence[Attempt], tasks: dict[str, Task], grades: dict[str, Grade],
                     template: str, samples: int) -> list[TeacherJob]:
    """One request per failed attempt; `auto` becomes reference-edit for tasks with a
    reference and refine-feedback for the rest (prompts.resolve_template)."""
    return [TeacherJob(tasks[a.task_id], a.attempt_id,
                       prompts.resolve_template(template, tasks[a.task_id]),
                       a.code or a.completion, grades[a.attempt_id].feedback, 0,
                       tuple(range(samples))) for a in failed]


def stand_jobs(tasks: Sequence[Task]) -> list[TeacherJob]:
    """One greedy answer per task: StanD is the teacher's single best answer, whatever
    temperature the refinements are sampled at."""
    return [TeacherJob(t, None, "answer", sampling=(("temperature", 0.0),)) for t in tasks]


def solved_attempts(refinements: Iterable[Refinement], verified: dict[str, Grade]) -> set[str]:
    """The attempts that have at least one refinement which passed verification."""
    return {r.attempt_id for r in refinements
            if r.attempt_id is not None and r.refinement_id in verified
            and verified[r.refinement_id].passed}


def next_round_jobs(jobs: Sequence[TeacherJob], refinements: dict[str, Refinement],
                    verified: dict[str, Grade], retry_temperature: float = 0.8,
                    retry_template: str = "") -> list[TeacherJob]:
    """The next round: each chain whose refinement has code that failed verification goes back
    with its own error, unless its attempt already has a passing refinement in any chain or
    round: one is all the datasets use. The reference prompts keep their template, the others
    become refine-feedback; a `retry_template` replaces both. A refinement that came back
    `unchanged` would make the very request that produced it again (same code, same error): it
    is sent at `retry_temperature` with a per-round seed instead, never the same request twice."""
    solved = solved_attempts(refinements.values(), verified)
    out = []
    for job in jobs:
        if job.attempt_id is None or job.attempt_id in solved:
            continue
        for rid, chain in zip(job.ids, job.chains):
            ref, grade = refinements.get(rid), verified.get(rid)
            if ref is None or ref.code is None or grade is None or not grade.failed:
                continue  # failed request (asked again on resume), no code, or already fine
            template = (prompts.resolve_template(retry_template, job.task) if retry_template
                        else job.template if job.template.startswith("reference")
                        else "refine-feedback")
            sampling = job.sampling
            if ref.unchanged:
                sampling = (("seed", job.round + 1), ("temperature", retry_temperature))
            out.append(TeacherJob(job.task, job.attempt_id, template, ref.code,
                                  grade.feedback, job.round + 1, (chain,), sampling))
    return out


def ask_teacher(teacher: Teacher, jobs: Sequence[TeacherJob], *, stage: str = "refine"
           ) -> list[Refinement]:
    """One teacher request per job (n = its chains), one Refinement per sample.

    A failed request (budget, retries, rejected) yields no record, so a resumed run asks again;
    it is counted in `teacher.usage[stage]` and reported here. A request's billed tokens ride on
    its first sample, so sums over records equal the bill. Replies are cached by the teacher, so a
    resumed run pays nothing twice.
    """
    if not jobs:
        return []
    n = len(jobs[0].chains)
    assert all(len(j.chains) == n for j in jobs), "one call asks every job for the same n"
    msgs = [j.messages() for j in jobs]
    progress = Progress(stage, len(jobs), unit="calls")
    try:
        replies = teacher.complete(msgs, lambda i, r: progress.update(), n=n, stage=stage,
                                   extras=[j.extra for j in jobs])
    finally:
        progress.finish()
    out, failed = [], Counter()
    for job, reply in zip(jobs, replies):
        if reply.failure is not None:
            failed[reply.failure.value] += 1
            continue
        for j, (rid, text) in enumerate(zip(job.ids, reply.texts)):
            code = prompts.extract_code(text, job.task.entry_point, job.task.prompt)
            out.append(Refinement(rid, job.task.task_id, job.attempt_id, job.template, text, code,
                                  reply.prompt_tokens if j == 0 else 0,
                                  reply.completion_tokens if j == 0 else 0, reply.cached,
                                  job.attempt_id is not None and personal.unchanged(job.code, code)))
    if failed:
        print(f"[{stage}] {sum(failed.values())} of {len(jobs)} requests failed "
              f"({dict(failed)}); they are asked again when the run is resumed",
              file=sys.stderr, flush=True)
    return out


def refine_stage(store: RunStore, name: str, teacher: Teacher, jobs: Sequence[TeacherJob],
                 stage: str) -> dict[str, Refinement]:
    """Ask the teacher through the store: a job is reused while its request's cache key (endpoint
    identity, API, model, messages, sampling, n) is unchanged. Refinement id -> record."""
    owner = {rid: j.job_id for j in jobs for rid in j.ids}
    keys = {j.job_id: teacher.cache_key(j.messages(), len(j.chains), j.extra) for j in jobs}
    by_n: dict[int, list[TeacherJob]] = {}
    for j in jobs:  # one teacher call asks every job of it for the same n
        by_n.setdefault(len(j.chains), []).append(j)
    out: dict[str, Refinement] = {}
    for group in by_n.values():
        out.update({r.refinement_id: r for r in store.stage(
            name, Refinement, group, key=lambda j: j.job_id, fp=lambda j: keys[j.job_id],
            rkey=lambda r: owner[r.refinement_id], batch=256, export=False,
            compute=lambda chunk: ask_teacher(teacher, chunk, stage=stage))})
    return out


def verify_stage(store: RunStore, sandbox, refs: Sequence[Refinement], tasks: dict[str, Task]
                 ) -> dict[str, Grade]:
    """Grade every refinement that has code against its task's tests (view `verified`)."""
    return grade_stage(store, "verified", sandbox, [(r.refinement_id, tasks[r.task_id], r.code)
                                                    for r in refs if r.code is not None])


def refine_rounds(store: RunStore, teacher: Teacher, sandbox, failed: Sequence[Attempt],
                  tasks: dict[str, Task], grades: dict[str, Grade], tc,
                  clock=lambda name: contextlib.nullcontext()
                  ) -> tuple[dict[str, Refinement], list[list[TeacherJob]]]:
    """Stages 3-4 per round: refine the failures, verify, and send each chain whose refinement
    failed back with its own error, up to `tc.rounds` rounds (ids <attempt>>r<round>.<sample>,
    resumable). Returns every refinement and the jobs of each round. `clock(name)` times a part."""
    rounds = [first_round_jobs(failed, tasks, grades, tc.template, tc.samples)]
    every: dict[str, Refinement] = {}
    while True:
        with clock("3-refine"):
            refs = refine_stage(store, "refinements", teacher, rounds[-1], "refine")
        every.update(refs)
        if len(rounds) == tc.rounds:
            return every, rounds
        with clock("4-verify"):
            verified = verify_stage(store, sandbox, list(refs.values()), tasks)
        rounds.append(next_round_jobs(rounds[-1], refs, verified, tc.retry_temperature,
                                      tc.retry_template))
