"""Online PersD (engine/pipeline/online.py): a second round in which the student, with its adapter,
attempts its still-failing tasks and a fresh slice, the teacher refines the new failures, and the
adapter trains on from itself on everything verified so far."""
from __future__ import annotations

import json

import pytest

from engine.config import DataConfig, EvalConfig, RunConfig, TeacherConfig
from engine.pipeline.online import round_tasks
from engine.records import Attempt, Example, Grade, Refinement
from engine.run.store import RunStore, content_hash
from engine.tasks import BUILTIN_PATH, load_file
from tests.tiny import SCRIPTED_TEACHER, ScriptedTeacher
from train.config import TrainConfig


@pytest.fixture(scope="module")
def online(tmp_path_factory, student_pool, student_cfg, tiny_model):
    from engine.distill import run_distill

    path = tmp_path_factory.mktemp("tasks") / "pool.jsonl"
    path.write_bytes(b"\n".join(BUILTIN_PATH.read_bytes().splitlines()[:9]) + b"\n")
    tasks = load_file(path)
    run_dir = tmp_path_factory.mktemp("online")
    with ScriptedTeacher(tasks) as teacher:
        cfg = RunConfig(
            run_dir=str(run_dir), dataset="persd-combined", online_rounds=1,
            student=student_cfg.__class__(**{**student_cfg.__dict__, "model": str(tiny_model)}),
            teacher=TeacherConfig(base_url=teacher.url, model="scripted", concurrency=4,
                                  stand=False, **SCRIPTED_TEACHER),
            data=DataConfig(train_tasks=str(path), train_limit=3, eval_tasks=str(path),
                            eval_limit=2),
            eval=EvalConfig(n=1, k=(1,), temperature=0.0, max_tokens=32),
            train=TrainConfig(epochs=2, lr=1e-3, batch_tokens=1024, save_every=100))
        summary = run_distill(cfg, student_pool=student_pool).to_json()
        first = len(teacher.requests)
        again = run_distill(cfg, student_pool=student_pool).to_json()
        resumed = len(teacher.requests) - first
    return tasks, RunStore(run_dir, lock=False), summary, again, resumed


def test_round_tasks_are_the_failing_then_a_fresh_slice():
    tasks = load_file(BUILTIN_PATH)[:9]
    ids = [t.task_id for t in tasks]
    got = [t.task_id for t in round_tasks(tasks, {ids[1], ids[4]}, 1, 3)]
    assert got == [ids[1], ids[4], ids[3], ids[5]]
    assert [t.task_id for t in round_tasks(tasks, set(), 2, 3)] == ids[6:9]


def test_second_round_attempts_with_the_adapter_and_refines_its_new_failures(online):
    tasks, run, summary, *_ = online
    rows = summary["online"]
    assert [r["round"] for r in rows] == [0, 1]
    first_attempts = run.read("attempts", Attempt)
    first_grades = {g.program_id: g for g in run.read("grades", Grade)}
    failing = {a.task_id for a in first_attempts if not first_grades[a.attempt_id].passed}
    atts = run.read("attempts-o1", Attempt)
    expected = [t.task_id for t in round_tasks(tasks, failing, 1, 3)]
    assert sorted(a.task_id for a in atts) == sorted(expected)
    assert all(a.attempt_id.startswith("o1/") for a in atts)
    assert all(a.adapter == str(run.path / "train" / "adapter") for a in atts)
    grades = {g.program_id: g for g in run.read("grades-o1", Grade)}
    failed = {a.attempt_id for a in atts if not grades[a.attempt_id].passed}
    assert failed and rows[1]["failures"] == len(failed)
    asked = {r.attempt_id for r in run.read("refinements", Refinement)
             if r.attempt_id.startswith("o1/")}
    assert asked == failed   # the teacher saw round 1's failures, and only those


def test_adapter_trains_on_from_itself_on_the_union(online):
    tasks, run, summary, *_ = online
    rows = summary["online"]
    round0 = {e.example_id for e in run.read("persd-combined", Example)}
    union = {e.example_id for e in run.read("persd-combined-o1", Example)}
    assert round0 < union   # round 1 added examples and kept every earlier one
    assert rows[1]["dataset_size"] == len(union)
    assert rows[1]["new_examples"] == len([i for i in union if i.startswith("o1/")]) > 0
    conf = json.loads((run.path / "train-o1" / "train-config.json").read_text())
    assert conf["init_adapter"] == str(run.path / "train" / "adapter")
    assert content_hash(run.path / "train-o1" / "adapter") != \
        content_hash(run.path / "train" / "adapter")
    after = run.read("eval-after-o1-attempts", Attempt)
    assert after and all(a.adapter == str(run.path / "train-o1" / "adapter") for a in after)
    assert summary["adapter"] == str(run.path / "train-o1" / "adapter")
    assert set(rows[1]["pass_after"]) == {"pass@1"}


def test_resumed_online_run_repeats_no_work(online):
    tasks, run, summary, again, resumed = online
    assert resumed == 0
    assert again["online"] == summary["online"]


def test_online_rounds_need_a_persd_dataset():
    with pytest.raises(ValueError, match="online_rounds"):
        RunConfig(dataset="stand", online_rounds=1)
    with pytest.raises(ValueError, match="skip_train"):
        RunConfig(online_rounds=1, skip_train=True)
