"""Kill anywhere: SIGKILL the real driver (tiny student in vLLM, scripted teacher over HTTP, real
sandbox, real trainer) once in every stage, mid-write included, resume after each kill, and get
exactly what an uninterrupted run gets, with no process left behind and no teacher request
answered twice.

The kills chain: each resumed driver is killed at the next point, so every stage is hit once
and all of them together cost about as much as two full runs.
"""
from __future__ import annotations

import dataclasses
import json

import pytest

from engine.config import DataConfig, EvalConfig, RunConfig, TeacherConfig
from engine.records import Attempt, Grade, Refinement
from engine.run.store import read_view
from engine.tasks import load_file
from tests.killing import DATASETS, datasets, duplicate_requests, example_ids, run_driver, stable_summary
from tests.tiny import SCRIPTED_TEACHER, ScriptedTeacher
from train.config import TrainConfig

# (stage, fault point): the n-th time the driver process reaches the point, it is SIGKILLed
KILLS = [
    # (a kill inside the attempts' transaction is tests/engine/test_store.py's first test; here the
    # attempt kill comes right after their commit, which saves the suite a vLLM start)
    ("attempt", "after-commit:attempts#1"),
    ("grade", "mid-commit:grades#1"),
    ("eval before", "mid-commit:eval-before-grades#1"),
    # every reply of round 0 paid for and in the teacher cache, none committed (a kill at a
    # single reply could find the next request already on the wire: that one is paid twice)
    ("refine round 0", "mid-commit:refinements#1"),
    ("verify round 0", "mid-commit:verified#1"),
    ("refine round 1", "mid-commit:refinements#1"),
    ("StanD", "mid-commit:stand-answers#1"),
    ("verify", "mid-commit:verified#1"),
    ("datasets", "mid-export:persd-combined#1"),    # half a JSONL view written
    ("train", "train-step#1"),                      # the trainer subprocess is mid-run
    ("eval after", "mid-commit:eval-after-grades#1"),
]


def make_cfg(run_dir, task_file, tiny_model, student_cfg, teacher_url) -> RunConfig:
    return RunConfig(
        run_dir=str(run_dir), dataset="persd-combined",
        student=dataclasses.replace(student_cfg, model=str(tiny_model), samples=2,
                                    temperature=0.8),
        # one request in flight: a kill at a fault point leaves no answer unreceived
        teacher=TeacherConfig(base_url=teacher_url, model="scripted", concurrency=1,
                              **SCRIPTED_TEACHER),
        data=DataConfig(train_tasks=str(task_file), train_limit=0, eval_tasks=str(task_file),
                        eval_limit=3),
        eval=EvalConfig(n=2, k=(1, 2), temperature=0.8, max_tokens=32),
        train=TrainConfig(epochs=2, lr=1e-3, batch_tokens=1024, save_every=1))


@pytest.mark.slow
def test_kill_in_every_stage_then_resume_equals_an_uninterrupted_run(
        tmp_path, task_file, tiny_model, student_cfg, student_pool):
    from engine.distill import run_distill

    tasks = load_file(task_file)
    with ScriptedTeacher(tasks) as reference_teacher:
        ref_dir = tmp_path / "reference"
        reference = run_distill(make_cfg(ref_dir, task_file, tiny_model, student_cfg,
                                         reference_teacher.url), student_pool=student_pool).to_json()
        reference_requests = len(reference_teacher.requests)
    with ScriptedTeacher(tasks) as teacher:
        run_dir = tmp_path / "killed"
        cfg = make_cfg(run_dir, task_file, tiny_model, student_cfg, teacher.url)
        log = tmp_path / "drivers.log"
        for stage, point in KILLS:
            out = run_driver(cfg, log, kill_at=point)
            assert out.returncode == -9, (
                f"{stage}: the driver was not killed at {point} (exit {out.returncode}); "
                f"see {log}:\n{log.read_text()[-3000:]}")
            # Ray's services, the trainer, sandbox jails (bwrap holds the driver's environment)
            assert not out.orphans, f"{stage}: processes outlived the driver: {out.orphans}"
        final = run_driver(cfg, log)
        assert final.returncode == 0, log.read_text()[-3000:]
        assert not final.orphans
        requests = list(teacher.requests)

    resumed = json.loads((run_dir / "summary.json").read_text())
    assert stable_summary(resumed) == stable_summary(reference)
    assert datasets(run_dir) == datasets(ref_dir)
    for name in DATASETS:  # nothing duplicated, nothing lost
        ids = example_ids(run_dir, name)
        assert len(ids) == len(set(ids)) == len(example_ids(ref_dir, name)), name
    for view, cls, key in (("attempts", Attempt, "attempt_id"), ("grades", Grade, "program_id"),
                           ("refinements", Refinement, "refinement_id"),
                           ("verified", Grade, "program_id"),
                           ("eval-after-attempts", Attempt, "attempt_id")):
        got = [getattr(r, key) for r in read_view(run_dir, view, cls)]
        want = [getattr(r, key) for r in read_view(ref_dir, view, cls)]
        assert len(got) == len(set(got)) and sorted(got) == sorted(want), view
    after = read_view(run_dir, "eval-after-attempts", Attempt)
    assert [a.completion for a in after] == [
        a.completion for a in read_view(ref_dir, "eval-after-attempts", Attempt)]
    # every distinct teacher request was answered once across all twelve drivers
    assert duplicate_requests(requests) == 0
    assert len(requests) == reference_requests
