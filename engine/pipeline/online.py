"""Online (multi-round) PersD: the student learns from the teacher's fixes of its current mistakes.

After the first fine-tune, each round r = 1..R:
 1 the student, now with its adapter, attempts its still-failing tasks and the next
   `data.train_limit` tasks of the pool (a fresh slice: new mistakes, not only old ones)
 2 the attempts are graded; the teacher refines the failures, in rounds, as in the first pass
 3 verified refinements join everything verified so far (the examples of every round)
 4 the adapter trains on, continuing from itself (`train.init_adapter`), on that union
 5 the held-out set is evaluated with the new adapter
Round r's records carry the prefix `o<r>/` in their ids (attempts, refinements, examples), its
stages the suffix `-o<r>` (`attempts-o1`, `train-o1/`, `eval-after-o1-results`), so every round
resumes through the run store like the first pass. The teacher needs only black-box access
(text in, text out), unlike logit-based on-policy distillation.

    python -m engine.distill --online_rounds 2
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Callable, Sequence

from engine import stages
from engine.records import Attempt, Example, Grade, Refinement, Task
from engine.summary import OnlineRound


def round_tasks(pool_tasks: Sequence[Task], failing: set[str], r: int, limit: int) -> list[Task]:
    """Round r's tasks: the still-failing ones, then the r-th fresh slice of `limit` tasks."""
    fresh = list(pool_tasks[r * limit:(r + 1) * limit])
    old = [t for t in pool_tasks if t.task_id in failing]
    return old + [t for t in fresh if t.task_id not in failing]


def still_failing(attempts: dict[str, Attempt], grades: dict[str, Grade]) -> set[str]:
    """Tasks none of whose attempts passed."""
    passed = {a.task_id for a in attempts.values() if grades[a.attempt_id].passed}
    return {a.task_id for a in attempts.values()} - passed


def round_row(r: int, tasks: int, attempts: int, failures: int, solved: set[str],
              new_examples: int, dataset_size: int, adapter: Path, after) -> OnlineRound:
    """One row of the summary's `online` table (round 0 is the first pass)."""
    return OnlineRound(round=r, tasks=tasks, attempts=attempts,
                       train_pass_rate=round(1 - failures / attempts, 4) if attempts else 0.0,
                       failures=failures, verified_attempts=len(solved),
                       new_examples=new_examples, dataset_size=dataset_size,
                       adapter=str(adapter), adapter_id=after.adapter_id,
                       pass_after=after.pass_at)


def run_online(cfg, run, pool, sandbox, pool_tasks: Sequence[Task], attempts: dict[str, Attempt],
               grades: dict[str, Grade], examples: list[Example], adapter: Path,
               eval_tasks: Sequence[Task], student_dir: str, student_id: str,
               timed: Callable, close_pool: bool, refinements: Sequence[Refinement] = (),
               verified: dict[str, Grade] | None = None) -> list[OnlineRound]:
    """Rounds 1..cfg.online_rounds; returns one summary row per round. `refinements` and
    `verified` are the first pass's: the `refinements` and `verified` views grow by each round's
    (the stages share those names, and a view is rewritten whole)."""
    from engine.evaluate import evaluate
    from engine.stages.train import train_adapter
    from engine.student import Decoding, Sampling
    from engine.tasks.docstring_tests import verify_seen_tests
    from engine.teacher.endpoint import teacher_endpoint

    st, tc = cfg.student, cfg.teacher
    limit = cfg.data.train_limit or len(pool_tasks)
    known = {e.example_id: e for e in examples}
    all_refs = {r.refinement_id: r for r in refinements}
    all_verified = dict(verified or {})
    failing = still_failing(attempts, grades)
    rows = []
    for r in range(1, cfg.online_rounds + 1):
        tasks_r = verify_seen_tests(round_tasks(pool_tasks, failing, r, limit), sandbox)
        by_id = {t.task_id: t for t in tasks_r}
        jobs = [stages.SampleJob(f"o{r}/{t.task_id}", t) for t in tasks_r]
        with timed(f"o{r}-1-attempt"):
            atts = {a.attempt_id: a for a in stages.attempt_stage(
                run, f"attempts-o{r}", pool, jobs, model_id=student_id, decoding=Decoding.of(st),
                sampling=Sampling.attempts(st, seed_offset=r, adapter=str(adapter)))}
        with timed(f"o{r}-2-grade"):
            grs = stages.grade_stage(run, f"grades-o{r}", sandbox, [
                (a.attempt_id, by_id[a.task_id], a.code) for a in atts.values()])
        failed = [a for a in atts.values() if grs[a.attempt_id].failed]
        if close_pool:
            pool.close()   # the cores go to the teacher, then the trainer
        refs: dict = {}
        if failed:
            with teacher_endpoint(cfg, run, lambda n: timed(f"o{r}-{n}")) as endpoint:
                teacher = endpoint.teacher(tc, Path(run.path) / "teacher-cache.jsonl")
                with timed(f"o{r}-3-refine"):
                    refs, _ = stages.refine_rounds(run, teacher, sandbox, failed, by_id, grs, tc)
        with timed(f"o{r}-4-verify"):
            verified = stages.verify_stage(run, sandbox, list(refs.values()), by_id)
        all_refs.update(refs)
        all_verified.update(verified)
        run.export("refinements", list(all_refs.values()))
        run.export("verified", list(all_verified.values()))
        new = stages.build_datasets(by_id, atts, grs, stages.one_per_attempt(
            list(refs.values()), verified, atts, tc.keep), verified)[cfg.dataset]
        known.update({e.example_id: e for e in new})
        name = f"{cfg.dataset}-o{r}"
        run.export(name, list(known.values()))
        train_cfg = dataclasses.replace(cfg, train=dataclasses.replace(
            cfg.train, init_adapter=str(adapter)))
        with timed(f"o{r}-6-train"):
            adapter = train_adapter(train_cfg, run.file(name), student_dir, student_id,
                                       run.path / f"train-o{r}")
        with timed(f"o{r}-7-eval-after"):
            after = evaluate(pool, sandbox, eval_tasks, cfg.eval, st, run, f"eval-after-o{r}",
                             adapter=str(adapter), model_id=student_id)
        row = round_row(r, len(tasks_r), len(atts), len(failed),
                        stages.solved_attempts(refs.values(), verified), len(new), len(known),
                        adapter, after)
        print(f"[online] round {r}: {row}", file=sys.stderr, flush=True)
        rows.append(row)
        failing = still_failing(atts, grs)
    return rows
