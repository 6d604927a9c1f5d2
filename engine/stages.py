"""The stages of one distillation pass, each a function on batches of typed records.

attempt (student samples) -> grade (sandbox) -> refine (teacher, failures only) -> verify
(sandbox) -> build datasets. `evaluate.py` reuses attempt + grade for pass@k.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from engine import personal, prompts
from engine.records import Attempt, Example, Grade, Program, Refinement, Task
from engine.runlog import Progress
from engine.store import RunStore, content_hash, fingerprint
from engine.student import GenRequest, StudentPool
from engine.teacher import Teacher


# ------------------------------------------------------------------------------------ 1. attempt

@dataclass(frozen=True)
class SampleJob:
    """One prompt to sample n completions for; its attempts get ids f"{job_id}#{j}"."""

    job_id: str
    task: Task
    messages: tuple[dict[str, str], ...] = ()  # empty: the plain task message (or code prompt)
    prompt: str = ""                           # completion format: text to continue


def task_jobs(tasks: Sequence[Task]) -> list[SampleJob]:
    return [SampleJob(t.task_id, t) for t in tasks]


def refine_job(job_id: str, task: Task, code: str, feedback: str) -> SampleJob:
    """A PersD-refine prompt: the model's own code and execution feedback (seen tests only)."""
    return SampleJob(job_id, task,
                     ({"role": "user", "content": prompts.refine_message(task, code, feedback)},),
                     f"# This attempt fails: {feedback.strip()}\n{code}\n# Fixed version:\n"
                     f"{task.prompt}")


def request_seed(seed: int, job_id: str) -> int:
    """A per-request seed from the stable id, so any chunking or resume samples the same."""
    return (seed + zlib.crc32(job_id.encode())) % (2**31 - 1)


def sample_requests(jobs: Sequence[SampleJob], *, n: int, temperature: float, top_p: float,
                    max_tokens: int, seed: int, prompt_format: str,
                    adapter: str | None = None) -> list[GenRequest]:
    """The request each job sends: what its attempts' fingerprints are computed from."""
    reqs = []
    for job in jobs:
        common = dict(n=n, temperature=temperature, top_p=top_p if temperature > 0 else 1.0,
                      max_tokens=max_tokens, seed=request_seed(seed, job.job_id), adapter=adapter)
        if prompt_format == "chat":
            msgs = job.messages or ({"role": "user", "content": prompts.task_message(job.task)},)
            reqs.append(GenRequest(job.job_id, messages=tuple(msgs), **common))
        else:
            reqs.append(GenRequest(job.job_id, prompt=job.prompt or job.task.prompt, **common))
    return reqs


def sample(pool: StudentPool, jobs: Sequence[SampleJob], *, prompt_format: str,
           **sampling) -> list[Attempt]:
    """n samples per job, batched through the pool in one call. Each attempt carries the model
    and adapter content hashes that the sampling engine itself reports."""
    outs = pool.generate(sample_requests(jobs, prompt_format=prompt_format, **sampling))
    attempts = []
    for job, out in zip(jobs, outs):
        t = job.task
        for j, text in enumerate(out.texts):
            if prompt_format == "chat":
                code = prompts.extract_code(text, t.entry_point, t.prompt) or ""
            else:
                code = t.prompt + prompts.truncate_completion(text)
            attempts.append(Attempt(f"{job.job_id}#{j}", t.task_id, text, code,
                                    sampling.get("adapter"), out.model_id, out.adapter_id))
    return attempts


# -------------------------------------------------------------------------------------- 2. grade

def program(sandbox_cfg, pid: str, task: Task, code: str, seen_only: bool = False) -> Program:
    """The program that grades `code` against the task's hidden (or seen) tests, with the
    sandbox's configured wall-clock limit."""
    return Program(pid, prompts.program_code(task, code),
                   task.seen_tests if seen_only else task.tests, task.setup, sandbox_cfg.timeout_s)


def program_fingerprint(sandbox_cfg, prog: Program) -> str:
    """What decides a verdict: the program, its tests, and the limits it runs under."""
    limits = {k: v for k, v in dataclasses.asdict(sandbox_cfg).items()
              if k not in ("workers", "bwrap", "require_isolation")}
    return fingerprint("grade", dataclasses.replace(prog, program_id=""), limits)


def grade(sandbox, pairs: Sequence[tuple[str, Task, str]], seen_only: bool = False
          ) -> list[Grade]:
    """Grade (program_id, task, solution code) triples in the sandbox pool."""
    return sandbox.grade([program(sandbox.config, pid, t, code, seen_only)
                          for pid, t, code in pairs])


def attempt_stage(store: RunStore, name: str, pool, jobs: Sequence[SampleJob], *,
                  model_id: str, decoding: dict, sampling: dict, batch: int = 0
                  ) -> list[Attempt]:
    """Sample every job through the store: a job is reused while its request, the model's and
    the adapter's content hashes and the decoding settings (`decoding`: dtype, context length,
    prompt format) are unchanged. `batch` 0 submits every job at once. A sample whose engine
    reports another model or adapter than asked for is an error."""
    adapter = sampling.get("adapter")
    adapter_id = content_hash(adapter) if adapter else None
    reqs = {q.request_id: dataclasses.replace(q, adapter=None)
            for q in sample_requests(jobs, **sampling)}

    def checked(chunk: list[SampleJob]) -> list[Attempt]:
        got = sample(pool, chunk, **sampling)
        for a in got:  # before the commit: the store never holds a sample under a false name
            if (model_id and a.model_id != model_id) or a.adapter_id != adapter_id:
                raise RuntimeError(f"{name}: sample {a.attempt_id} came from model {a.model_id} "
                                   f"with adapter {a.adapter_id}, not the model {model_id} with "
                                   f"adapter {adapter_id} that was asked for")
        return got

    return store.stage(name, Attempt, jobs, key=lambda j: j.job_id,
                       fp=lambda j: fingerprint("attempt", model_id, adapter_id, decoding,
                                                reqs[j.job_id]),
                       rkey=lambda a: a.attempt_id.rsplit("#", 1)[0], compute=checked,
                       batch=batch or max(len(jobs), 1))


def grade_stage(store: RunStore, name: str, sandbox, items: Sequence[tuple[str, Task, str]],
                seen_only: bool = False) -> dict[str, Grade]:
    """Grade (program_id, task, code) triples through the store; program id -> Grade."""
    progs = {pid: program(sandbox.config, pid, t, code, seen_only) for pid, t, code in items}
    return {g.program_id: g for g in store.stage(
        name, Grade, list(progs.values()), key=lambda p: p.program_id,
        fp=lambda p: program_fingerprint(sandbox.config, p), rkey=lambda g: g.program_id,
        compute=sandbox.grade, batch=256)}


# ------------------------------------------------------------------------------------- 3. refine

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
        if self.attempt_id is None:
            return (f"{self.task.task_id}>stand",)
        return tuple(f"{self.attempt_id}>r{self.round}.{j}" for j in self.chains)

    @property
    def job_id(self) -> str:
        return self.ids[0]  # all samples of a request are appended together


def first_round_jobs(failed: Sequence[Attempt], tasks: dict[str, Task], grades: dict[str, Grade],
                     template: str, samples: int) -> list[TeacherJob]:
    """One request per failed attempt; `auto` becomes the paper's two-turn prompt for tasks
    with a reference and refine-feedback for the rest."""
    return [TeacherJob(tasks[a.task_id], a.attempt_id,
                       prompts.resolve_template(template, tasks[a.task_id]),
                       a.code or a.completion, grades[a.attempt_id].feedback, 0,
                       tuple(range(samples))) for a in failed]


def stand_jobs(tasks: Sequence[Task]) -> list[TeacherJob]:
    """One greedy answer per task: StanD is the teacher's single best answer, whatever
    temperature the refinements are sampled at."""
    return [TeacherJob(t, None, "answer", sampling=(("temperature", 0.0),)) for t in tasks]


def next_round_jobs(jobs: Sequence[TeacherJob], refinements: dict[str, Refinement],
                    verified: dict[str, Grade], retry_temperature: float = 0.8,
                    retry_template: str = "") -> list[TeacherJob]:
    """The next round: each chain whose refinement has code that failed verification goes back
    with its own error, unless its attempt already has a passing refinement in any chain or
    round: one is all the datasets use. The reference prompts keep their template, the others
    become refine-feedback; a `retry_template` replaces both. A refinement that came back `unchanged` would make the very request
    that produced it again (same code, same error): it is sent at `retry_temperature` with a
    per-round seed instead, never the same request twice."""
    solved = {r.attempt_id for r in refinements.values()
              if r.refinement_id in verified and verified[r.refinement_id].passed}
    out = []
    for job in jobs:
        if job.attempt_id is None or job.attempt_id in solved:
            continue
        for rid, chain in zip(job.ids, job.chains):
            ref, grade = refinements.get(rid), verified.get(rid)
            if ref is None or ref.code is None or grade is None or grade.passed:
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


def refine(teacher: Teacher, jobs: Sequence[TeacherJob], *, stage: str = "refine"
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
    msgs = [prompts.teacher_messages(j.template, j.task, j.code, j.feedback) for j in jobs]
    progress = Progress(stage, len(jobs), unit="calls")
    replies = asyncio.run(teacher.complete_many(msgs, lambda i, r: progress.update(), n=n,
                                                stage=stage, extras=[j.extra for j in jobs]))
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
    keys = {j.job_id: teacher.cache_key(
        prompts.teacher_messages(j.template, j.task, j.code, j.feedback), len(j.chains), j.extra)
        for j in jobs}
    by_n: dict[int, list[TeacherJob]] = {}
    for j in jobs:  # one teacher call asks every job of it for the same n
        by_n.setdefault(len(j.chains), []).append(j)
    out: dict[str, Refinement] = {}
    for group in by_n.values():
        out.update({r.refinement_id: r for r in store.stage(
            name, Refinement, group, key=lambda j: j.job_id, fp=lambda j: keys[j.job_id],
            rkey=lambda r: owner[r.refinement_id], batch=256, export=False,
            compute=lambda chunk: refine(teacher, chunk, stage=stage))})
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


def one_per_attempt(refinements: Sequence[Refinement], verified: dict[str, Grade],
                    attempts: dict[str, Attempt], keep: str = "closest") -> list[Refinement]:
    """What `build_datasets` should see. Of the passing refinements of one attempt (several
    samples or rounds) `closest` keeps the one most similar to the student's own attempt (the
    most personal target; ties: the first), so no attempt is over-weighted; `all` keeps all."""
    best: dict[str, tuple[float, int]] = {}
    for i, r in enumerate(refinements):
        v = verified.get(r.refinement_id)
        if r.attempt_id is not None and v is not None and v.passed and r.code is not None:
            sim = personal.similarity(attempts[r.attempt_id].code, r.code).text
            if r.attempt_id not in best or sim > best[r.attempt_id][0]:
                best[r.attempt_id] = (sim, i)
    chosen = {i for _, i in best.values()}
    out = []
    for i, r in enumerate(refinements):
        v = verified.get(r.refinement_id)
        passing = r.attempt_id is not None and v is not None and v.passed
        if passing and keep == "closest" and i not in chosen:
            continue
        out.append(r)
    return out


def matched_stand(stand: Sequence[Example], size: int, seed: int = 0) -> list[Example]:
    """StanD cut to `size` examples (the paper's matched-budget baseline: as many examples as
    PersD), chosen by a stable hash of the task id so the choice is the same in every run."""
    order = sorted(stand, key=lambda e: zlib.crc32(f"{seed}:{e.task_id}".encode()))
    return sorted(order[:size], key=lambda e: e.example_id)


# ----------------------------------------------------------------------------- 5. build datasets

def _answer(code: str) -> tuple[dict[str, str], ...]:
    return ({"role": "assistant", "content": f"```python\n{code.rstrip()}\n```"},)


def build_datasets(tasks: dict[str, Task], attempts: dict[str, Attempt], grades: dict[str, Grade],
                   refinements: Sequence[Refinement], verified: dict[str, Grade]
                   ) -> dict[str, list[Example]]:
    """PersD, PersD-refine, PersD-combined, StanD and InpD, in TRL's prompt-completion format.

    Only refinements whose verification passed are used; one example per (task, source) so a task
    with several passing refinements is not over-weighted.
    """
    persd, refine_ex, stand, inpd = [], [], [], []
    seen_persd: set[str] = set()
    for r in refinements:
        v = verified.get(r.refinement_id)
        if r.code is None or v is None or not v.passed:
            continue
        task = tasks[r.task_id]
        user = ({"role": "user", "content": prompts.task_message(task)},)
        if r.attempt_id is None:
            stand.append(Example(f"{r.refinement_id}", task.task_id, "stand", user, _answer(r.code)))
            continue
        att = attempts[r.attempt_id]
        if task.task_id not in seen_persd:
            seen_persd.add(task.task_id)
            persd.append(Example(f"{r.refinement_id}:persd", task.task_id, "persd", user,
                                 _answer(r.code)))
        feedback = grades[att.attempt_id].feedback
        refine_user = ({"role": "user",
                        "content": prompts.refine_message(task, att.code or att.completion, feedback)},)
        refine_ex.append(Example(f"{r.refinement_id}:refine", task.task_id, "persd-refine",
                                 refine_user, _answer(r.code)))
    failed_tasks = {a.task_id for a in attempts.values() if not grades[a.attempt_id].passed}
    for tid in sorted(failed_tasks):
        task = tasks[tid]
        if task.reference:
            inpd.append(Example(f"{tid}>ref:inpd", tid, "inpd",
                                ({"role": "user", "content": prompts.task_message(task)},),
                                _answer(task.reference)))
    return {"persd": persd, "persd-refine": refine_ex, "persd-combined": persd + refine_ex,
            "stand": stand, "stand-matched": matched_stand(stand, len(persd)), "inpd": inpd}


def personalisation(datasets: dict[str, list[Example]], attempts: dict[str, Attempt],
                    grades: dict[str, Grade], tasks: dict[str, Task]
                    ) -> list[personal.Personalisation]:
    """Each example's target against the student's attempt it stands for: a refinement's own
    attempt; for task-level examples (StanD, InpD) the task's first failed attempt."""
    first_failed: dict[str, Attempt] = {}
    for a in attempts.values():
        if not grades[a.attempt_id].passed:
            first_failed.setdefault(a.task_id, a)
    stand = {e.task_id: _code(e) for e in datasets["stand"]}
    rows = []
    for kind in ("persd", "persd-refine", "stand", "inpd"):
        for e in datasets[kind]:
            if kind.startswith("persd"):
                att = attempts.get(e.example_id.split(">r", 1)[0])
            else:
                att = first_failed.get(e.task_id)
            if att is None:
                continue
            ref = tasks[e.task_id].reference
            rows.append(personal.Personalisation(
                e.example_id, e.task_id, kind, personal.similarity(att.code, _code(e)),
                personal.similarity(att.code, stand[e.task_id]) if e.task_id in stand else None,
                personal.similarity(att.code, ref) if ref else None))
    return rows


def _code(e: Example) -> str:
    """The code of an example's completion (`_answer` wraps it in one fence)."""
    text = e.completion[0]["content"]
    return text.removeprefix("```python\n").removesuffix("\n```")
