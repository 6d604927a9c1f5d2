"""Streaming execution (engine/pipeline/streaming.py): the same records as the staged pass, in the same
order, whatever order the chunks finish in; and a streamed run killed mid-way resumes to the
same result without asking the teacher anything twice."""
from __future__ import annotations

import dataclasses
import json

import pytest

from engine.config import DataConfig, EvalConfig, RunConfig, TeacherConfig
from engine.tasks import load_file
from tests.killing import DATASETS, duplicate_requests, run_driver, stable_summary
from tests.tiny import SCRIPTED_TEACHER, ScriptedTeacher
from train.config import TrainConfig


def make_cfg(run_dir, task_file, tiny_model, student_cfg, url, **kw) -> RunConfig:
    return RunConfig(
        run_dir=str(run_dir), skip_train=True,
        student=dataclasses.replace(student_cfg, model=str(tiny_model), samples=2,
                                    temperature=0.8),
        teacher=TeacherConfig(base_url=url, model="scripted", concurrency=4, **SCRIPTED_TEACHER),
        data=DataConfig(train_tasks=str(task_file), train_limit=0, eval_tasks=str(task_file),
                        eval_limit=3),
        eval=EvalConfig(n=1, k=(1,), temperature=0.0, max_tokens=24),
        train=TrainConfig(epochs=1, lr=1e-3, batch_tokens=1024, save_every=100), **kw)


def views(run_dir, resumed: bool = False) -> dict[str, object]:
    """The views a run's result is made of, byte for byte; but grades without their timing, and
    for a resumed run teacher replies without `cached` (what a resume took from the cache)."""
    import orjson

    def records(name: str, drop: str) -> list[dict]:
        return [{k: v for k, v in orjson.loads(line).items() if k != drop}
                for line in (run_dir / f"{name}.jsonl").read_bytes().splitlines()]

    out = {name: (run_dir / f"{name}.jsonl").read_bytes() for name in
           (*DATASETS, "attempts", "refinements", "stand-answers")}
    out["grades"] = records("grades", "duration_s")
    if resumed:
        out["refinements"] = records("refinements", "cached")
        out["stand-answers"] = records("stand-answers", "cached")
    return out


def test_a_streamed_run_equals_a_staged_one(tmp_path, task_file, tiny_model, student_cfg,
                                            student_pool):
    from engine.distill import run_distill

    tasks = load_file(task_file)
    out = {}
    for mode, extra in (("staged", {}),
                        ("streaming", dict(execution="streaming", stream_chunk=2,
                                           stream_teacher_chunks=2))):
        with ScriptedTeacher(tasks) as teacher:
            cfg = make_cfg(tmp_path / mode, task_file, tiny_model, student_cfg, teacher.url,
                           **extra)
            summary = run_distill(cfg, student_pool=student_pool).to_json()
            out[mode] = (summary, views(tmp_path / mode), len(teacher.requests))
    (staged, staged_views, staged_asked), (streamed, streamed_views, streamed_asked) = \
        out["staged"], out["streaming"]
    assert staged["attempts"]["failed"] > 0 and staged["teacher"]["refine"]["verified"] > 0
    assert streamed_views == staged_views   # byte for byte: the same records in the same order
    for key in ("attempts", "datasets", "pass_before", "personalisation"):
        assert streamed[key] == staged[key], key
    for part in ("refine", "stand"):
        a, b = dict(staged["teacher"][part]), dict(streamed["teacher"][part])
        a.pop("this_run"), b.pop("this_run")
        assert a == b, part
    assert streamed_asked == staged_asked
    # the streamed run timed its chunks' stages too
    assert {"1-attempt", "2-grade", "3-refine", "4-verify"} <= set(streamed["seconds_per_stage"])


@pytest.mark.slow
def test_a_killed_streamed_run_resumes_to_the_same_result(tmp_path, task_file, tiny_model,
                                                          student_cfg, student_pool):
    from engine.distill import run_distill

    tasks = load_file(task_file)
    with ScriptedTeacher(tasks) as ref_teacher:
        reference = run_distill(make_cfg(tmp_path / "ref", task_file, tiny_model, student_cfg,
                                         ref_teacher.url),
                                student_pool=student_pool).to_json()
    stream = dict(execution="streaming", stream_chunk=2, stream_teacher_chunks=2)
    with ScriptedTeacher(tasks) as teacher:
        cfg = make_cfg(tmp_path / "run", task_file, tiny_model, student_cfg, teacher.url, **stream)
        log = tmp_path / "drivers.log"
        # a teacher batch mid-commit, while chunks' attempts are committed and more in flight
        # (one kill: each driver costs a vLLM start)
        point = "mid-commit:refinements#2"
        killed = run_driver(cfg, log, kill_at=point)
        assert killed.returncode == -9, (point, log.read_text()[-3000:])
        assert not killed.orphans, killed.orphans
        final = run_driver(cfg, log)
        assert final.returncode == 0, log.read_text()[-3000:]
        requests = list(teacher.requests)
    resumed = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert stable_summary(resumed) == stable_summary(reference)
    assert views(tmp_path / "run", resumed=True) == views(tmp_path / "ref", resumed=True)
    assert duplicate_requests(requests) == 0
