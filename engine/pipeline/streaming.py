"""Streaming execution of stages 1-4: the same stage units as the staged pass, overlapped.

    python -m engine.distill --execution streaming --teacher.base_url URL

The student gets every training task in one batch (vLLM keeps it full) and its finished samples
stream back as the engine finishes them (`StudentPool.generate_stream`). Each finished group is
committed, graded in the sandbox at once, and its tasks queue for the teacher; every
`stream_chunk` graded tasks go to the teacher as one unit of work (refine rounds with
verification, and the tasks' StanD answers) on one of `stream_teacher_chunks` worker threads,
while the student samples on and then runs the held-out evaluation. Every worker's requests
share one teacher session (`Teacher.shared`: one concurrency limit, one circuit, one connection
pool), and every job commits to the run store as it finishes, exactly as in the staged pass, so
a kill loses only the work in flight and a resumed run (in either mode) reuses everything
committed. When all workers are busy the driver waits for one (back-pressure: at most
`stream_teacher_chunks` units wait on the teacher; the student's finished samples queue in
Ray's object store meanwhile).

Same records, same ids, same fingerprints as the staged pass: a streamed run's datasets equal a
staged run's (tests/engine/test_streaming.py).
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from engine import stages


def stream(pipe, inputs):
    """(Attempts, the eval-before summary, TeacherWork) for `pipe` (an engine.pipeline.staged.Pipeline)."""
    from engine.pipeline.staged import Attempts, TeacherWork
    from engine.teacher.endpoint import teacher_endpoint

    cfg, run, tc = pipe.cfg, pipe.run, pipe.cfg.teacher
    tasks = inputs.tasks
    attempts, grades = {}, {}
    of_task: dict[str, list[str]] = {}   # task id -> its attempt ids
    queued: list[str] = []          # graded tasks not yet sent to the teacher
    refs, rounds, stand, stand_jobs = {}, [], {}, []

    def teach(chunk, failed, chunk_grades):
        """One unit's teacher work: refine rounds with verification, and its StanD answers."""
        got, chunk_rounds = stages.refine_rounds(run, teacher, pipe.sandbox, failed, tasks,
                                                 chunk_grades, tc, pipe.clock)
        jobs = stages.stand_jobs(chunk) if tc.stand else []
        answers = stages.refine_stage(run, "stand-answers", teacher, jobs, "stand")
        return got, chunk_rounds, answers, jobs

    def collect(done: set[Future]) -> None:
        for f in done:
            got, chunk_rounds, answers, jobs = f.result()
            refs.update(got)
            for r, js in enumerate(chunk_rounds):
                while len(rounds) <= r:
                    rounds.append([])
                rounds[r].extend(js)
            stand.update(answers)
            stand_jobs.extend(jobs)

    def dispatch(task_ids: list[str]) -> None:
        """Send graded tasks to the teacher, waiting while every worker is busy."""
        nonlocal pending
        mine = {i: attempts[i] for t in task_ids for i in of_task[t]}
        sub = Attempts(mine, {i: grades[i] for i in mine})
        while len(pending) >= cfg.stream_teacher_chunks:   # back-pressure
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            collect(done)
        pending.add(workers.submit(teach, [tasks[i] for i in task_ids], sub.failed, sub.grades))

    def graded(group) -> None:
        """A group of finished attempts (or the reused ones): grade it, queue its tasks."""
        t0 = time.monotonic()
        grades.update(pipe.grade_attempts(tasks, group, part=True))
        pipe.timings["2-grade"] = round(pipe.timings.get("2-grade", 0.0)
                                        + time.monotonic() - t0, 1)
        for a in group:
            attempts[a.attempt_id] = a
            of_task.setdefault(a.task_id, []).append(a.attempt_id)
        queued.extend(dict.fromkeys(a.task_id for a in group))
        while len(queued) >= cfg.stream_chunk:
            dispatch(queued[:cfg.stream_chunk])
            del queued[:cfg.stream_chunk]

    with teacher_endpoint(cfg, run, pipe.clock) as endpoint:
        teacher = endpoint.teacher(tc, Path(run.path) / "teacher-cache.jsonl")
        asyncio.run(teacher.check_reachable())
        with teacher.shared(), ThreadPoolExecutor(cfg.stream_teacher_chunks,
                                                  thread_name_prefix="teach") as workers:
            pending: set[Future] = set()
            ordered = pipe.sample_attempts(inputs, on_records=graded)
            if queued:
                dispatch(queued)
            before = pipe.evaluate(inputs, "eval-before")   # while the teacher works
            done, _ = wait(pending)
            collect(done)
    # groups and units finish in any order: put every list in the staged pass's order (task
    # order, then sample), so the datasets, and the adapter trained on them, do not depend on
    # timing
    attempts = {a.attempt_id: a for a in ordered}
    grades = {i: grades[i] for i in attempts}
    position = {aid: i for i, aid in enumerate(attempts)}
    task_position = {t.task_id: i for i, t in enumerate(inputs.train_tasks)}
    for js in rounds:
        js.sort(key=lambda j: (position[j.attempt_id], j.chains))
    stand_jobs.sort(key=lambda j: task_position[j.task.task_id])
    tried = Attempts(attempts, grades)
    run.export("grades", list(grades.values()))   # graded in pieces, written whole
    work = TeacherWork(teacher, endpoint.model, endpoint.identity,
                       [refs[i] for js in rounds for j in js for i in j.ids if i in refs],
                       [stand[j.job_id] for j in stand_jobs if j.job_id in stand], rounds,
                       stand_jobs)
    run.export("refinements", work.refinements)
    run.export("stand-answers", work.stand)
    return tried, before, work
