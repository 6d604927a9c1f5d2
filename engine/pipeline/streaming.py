"""Streaming execution of stages 1-4: the same stage units as the staged pass, chunk by chunk.

    python -m engine.distill --execution streaming --teacher.base_url URL

The training tasks go through in chunks of `stream_chunk`. The student samples a chunk and the
sandbox grades it; its failures go to the teacher at once (refine rounds, verification, and the
chunk's StanD answers), on one of `stream_teacher_chunks` worker threads, while the student goes
on with the next chunk and then with the held-out evaluation. Every worker's requests share one
teacher session (`Teacher.shared`: one concurrency limit, one circuit, one connection pool), and
every job commits to the run store as it finishes, exactly as in the staged pass, so a kill loses
only the work in flight and a resumed run (in either mode) reuses everything committed. When all
workers are busy the student waits for one (back-pressure), so no more than
`stream_teacher_chunks` chunks are ever waiting on the teacher.

Same records, same ids, same fingerprints as the staged pass: a streamed run's datasets equal a
staged run's (tests/engine/test_streaming.py).
"""
from __future__ import annotations

import asyncio
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from engine import stages


def stream(pipe, inputs):
    """(Attempts, the eval-before summary, TeacherWork) for `pipe` (an engine.pipeline.staged.Pipeline)."""
    from engine.pipeline.staged import Attempts, TeacherWork
    from engine.teacher.endpoint import teacher_endpoint

    cfg, run, tc = pipe.cfg, pipe.run, pipe.cfg.teacher
    tasks = inputs.tasks
    size = cfg.stream_chunk
    chunks = [inputs.train_tasks[i:i + size] for i in range(0, len(inputs.train_tasks), size)]
    attempts, grades = {}, {}
    refs, rounds, stand, stand_jobs = {}, [], {}, []

    def teach(chunk, failed, chunk_grades):
        """One chunk's teacher work: refine rounds with verification, and its StanD answers."""
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

    with teacher_endpoint(cfg, run, pipe.clock) as endpoint:
        teacher = endpoint.teacher(tc, Path(run.path) / "teacher-cache.jsonl")
        asyncio.run(teacher.check_reachable())
        with teacher.shared(), ThreadPoolExecutor(cfg.stream_teacher_chunks,
                                                  thread_name_prefix="teach") as workers:
            pending: set[Future] = set()
            for chunk in chunks:
                got = pipe.attempt_tasks(inputs, chunk)
                attempts.update(got.attempts)
                grades.update(got.grades)
                failed, graded = got.failed, got.grades
                while len(pending) >= cfg.stream_teacher_chunks:   # back-pressure
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    collect(done)
                pending.add(workers.submit(teach, chunk, failed, graded))
            before = pipe.evaluate(inputs, "eval-before")   # while the teacher works
            done, _ = wait(pending)
            collect(done)
    # chunks finish in any order: put every list in the staged pass's order (attempt order,
    # then sample), so the datasets, and the adapter trained on them, do not depend on timing
    position = {aid: i for i, aid in enumerate(attempts)}
    task_position = {t.task_id: i for i, t in enumerate(inputs.train_tasks)}
    for js in rounds:
        js.sort(key=lambda j: (position[j.attempt_id], j.chains))
    stand_jobs.sort(key=lambda j: task_position[j.task.task_id])
    tried = Attempts(attempts, grades)
    run.export("attempts", list(attempts.values()))   # the chunks wrote partial views
    run.export("grades", list(grades.values()))
    work = TeacherWork(teacher, endpoint.model, endpoint.identity,
                       [refs[i] for js in rounds for j in js for i in j.ids if i in refs],
                       [stand[j.job_id] for j in stand_jobs if j.job_id in stand], rounds,
                       stand_jobs)
    run.export("refinements", work.refinements)
    run.export("stand-answers", work.stand)
    return tried, before, work
