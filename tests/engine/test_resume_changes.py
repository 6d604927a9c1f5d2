"""Resuming with changed settings: exactly the jobs whose inputs changed are recomputed, the rest
are reused; `--on_change refuse` stops instead; a sampler that loaded another model is caught.

Each run is in-process on the session's shared tiny student; `summary.jobs` counts, per
stage, the jobs this run reused from the store and the ones it computed.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from engine.config import DataConfig, EvalConfig, RunConfig, TeacherConfig
from engine.records import Refinement
from engine.run.store import read_view
from engine.tasks import load_file
from tests.tiny import SCRIPTED_TEACHER, ScriptedTeacher
from train.config import TrainConfig


@pytest.fixture(scope="module")
def teacher(task_file):
    with ScriptedTeacher(load_file(task_file)) as t:
        yield t


@pytest.fixture
def base(tmp_path, task_file, tiny_model, student_cfg, teacher):
    return RunConfig(
        run_dir=str(tmp_path / "run"), skip_train=True,
        student=dataclasses.replace(student_cfg, model=str(tiny_model)),
        teacher=TeacherConfig(base_url=teacher.url, model="scripted", concurrency=4, rounds=1,
                              **SCRIPTED_TEACHER),
        data=DataConfig(train_tasks=str(task_file), train_limit=0, eval_tasks=str(task_file),
                        eval_limit=2),
        eval=EvalConfig(n=1, k=(1,), temperature=0.0, max_tokens=24),
        train=TrainConfig(epochs=1, lr=1e-3, batch_tokens=1024, save_every=100))


def computed(summary) -> dict[str, int]:
    return {stage: c["computed"] for stage, c in summary.jobs.items() if c["computed"]}


def replace(cfg: RunConfig, **sections) -> RunConfig:
    """cfg with fields replaced, e.g. replace(cfg, student={"samples": 2}, dataset="stand")."""
    out = {}
    for k, v in sections.items():
        out[k] = dataclasses.replace(getattr(cfg, k), **v) if isinstance(v, dict) else v
    return dataclasses.replace(cfg, **out)


def test_changed_settings_recompute_exactly_what_they_affect(base, student_pool, teacher):
    from engine.distill import run_distill

    first = run_distill(base, student_pool=student_pool)
    failed = first.attempts.failed
    assert computed(first)["attempts"] == 6 and failed > 0

    same = run_distill(base, student_pool=student_pool)
    assert computed(same) == {}  # nothing changed: nothing recomputed, the teacher not asked

    asked = len(teacher.requests)
    template = run_distill(replace(base, teacher={"template": "refine-nofeedback"}),
                           student_pool=student_pool)
    # the scripted teacher answers with the same code: those verdicts are reused
    assert computed(template) == {"refinements": failed}
    assert len(teacher.requests) - asked == failed   # StanD answers do not use the template
    assert {r.template for r in read_view(base.run_dir, "refinements", Refinement)} == {
        "refine-nofeedback"}

    temp = run_distill(replace(base, student={"temperature": 0.7}), student_pool=student_pool)
    assert computed(temp)["attempts"] == 6
    assert "eval-before-attempts" not in computed(temp)  # eval settings did not change

    samples = run_distill(replace(base, student={"samples": 2, "temperature": 0.7}),
                          student_pool=student_pool)
    assert computed(samples)["attempts"] == 6 and samples.attempts.samples == 12

    fewer = run_distill(replace(base, data={"train_limit": 4}), student_pool=student_pool)
    assert fewer.attempts.tasks == 4 and computed(fewer) == {}

    # back to the first settings: every record of the first run is still in the store
    again = run_distill(base, student_pool=student_pool)
    assert computed(again) == {} and again.datasets == first.datasets


def test_changed_task_tests_regrade_only_that_task(base, student_pool, task_file, tmp_path):
    from engine.distill import run_distill

    run_distill(base, student_pool=student_pool)
    lines = task_file.read_bytes().splitlines()
    row = json.loads(lines[2])
    row["tests"] = row["tests"][:-1]  # one task loses a test: its verdicts may differ now
    edited = tmp_path / "edited.jsonl"
    edited.write_bytes(b"\n".join(lines[:2] + [json.dumps(row).encode()] + lines[3:]) + b"\n")
    changed = run_distill(replace(base, data={"train_tasks": str(edited)}),
                          student_pool=student_pool)
    assert computed(changed)["grades"] == 1
    assert "attempts" not in computed(changed)  # the prompt did not change


def test_refuse_names_the_changed_settings(base, student_pool):
    from engine.distill import run_distill

    run_distill(base, student_pool=student_pool)
    strict = replace(base, on_change="refuse", student={"temperature": 0.5},
                     teacher={"samples": 2})  # refused before anything runs
    with pytest.raises(ValueError, match=r"student\.temperature: 0\.0 -> 0\.5.*teacher\.samples"):
        run_distill(strict, student_pool=student_pool)


def test_a_new_dataset_retrains_and_reevaluates(base, student_pool):
    from engine.distill import run_distill

    trained = replace(base, skip_train=False)
    first = run_distill(trained, student_pool=student_pool)
    other = run_distill(replace(trained, dataset="stand"), student_pool=student_pool)
    assert other.adapter_id != first.adapter_id
    assert computed(other)["eval-after-attempts"] == 2
    assert set(computed(other)) <= {"eval-after-attempts", "eval-after-grades"}
    trainings = sorted(p.name for p in Path(base.run_dir).glob("train*"))
    assert len(trainings) == 2  # the persd-combined training was moved aside, not reused


def test_a_sampler_with_another_model_is_caught(base, student_pool, tiny_model, tmp_path):
    from engine.distill import run_distill

    other = tmp_path / "other-model"
    shutil.copytree(tiny_model, other)
    (other / "generation_config.json").write_text('{"note": "another model"}')
    with pytest.raises(RuntimeError, match="came from model"):
        # the shared pool serves the first tiny model, whatever the config says
        run_distill(replace(base, student={"model": str(other)}), student_pool=student_pool)
    assert not (tmp_path / "run" / "attempts.jsonl").exists()  # nothing stored under its name
