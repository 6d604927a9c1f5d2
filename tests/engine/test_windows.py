"""A pool read in windows (`data.window`): the same views and counts as the pool in one piece,
one window's records in memory at a time. Tiny student in vLLM, scripted teacher over HTTP,
real sandbox; no fine-tune."""
from __future__ import annotations

import shutil
from collections import Counter

import pytest

from common.errors import ConfigError
from engine.config import DataConfig, EvalConfig, RunConfig, TeacherConfig
from engine.run.store import RunStore
from engine.tasks import load_file
from tests.tiny import SCRIPTED_TEACHER, ScriptedTeacher

VIEWS = ("attempts", "grades", "refinements", "stand-answers", "verified", "persd",
         "persd-refine", "persd-combined", "stand", "inpd", "personalisation")


def _cfg(run_dir, task_file, student_cfg, tiny_model, url, window, **extra):
    extra.setdefault("skip_train", True)
    return RunConfig(
        run_dir=str(run_dir), dataset="persd-combined",
        student=student_cfg.__class__(**{**student_cfg.__dict__, "model": str(tiny_model)}),
        teacher=TeacherConfig(base_url=url, model="scripted", concurrency=4, **SCRIPTED_TEACHER),
        data=DataConfig(train_tasks=str(task_file), train_limit=0, eval_tasks=str(task_file),
                        eval_limit=2, window=window),
        eval=EvalConfig(n=1, max_tokens=32), **extra)


def _lines(run_dir, name) -> Counter:
    return Counter((run_dir / f"{name}.jsonl").read_bytes().splitlines())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, task_file, student_pool, student_cfg, tiny_model):
    from engine.distill import run_distill

    tasks = load_file(task_file)          # six tasks: windows of 4 make two (4 + 2)
    root = tmp_path_factory.mktemp("windows")
    with ScriptedTeacher(tasks) as teacher:
        def run(name, window, copy_of=None):
            if copy_of is not None:       # the same store and teacher cache: every job reused
                shutil.copytree(root / copy_of, root / name)
            asked = len(teacher.requests)
            cfg = _cfg(root / name, task_file, student_cfg, tiny_model, teacher.url, window)
            summary = run_distill(cfg, student_pool=student_pool).to_json()
            return summary, len(teacher.requests) - asked
        whole = run("whole", 0)
        reused = run("reused", 4, copy_of="whole")
        fresh = run("fresh", 4)
    return root, tasks, whole, reused, fresh


def test_windows_write_the_same_views_as_one_piece(runs):
    root, tasks, (whole, asked), (reused, asked_again), _ = runs
    assert asked > 0 and asked_again == 0          # the windows found every job in the store
    for name in VIEWS:
        assert _lines(root / "reused", name) == _lines(root / "whole", name), name
    assert not (root / "reused" / "parts").exists()      # the parts were joined and removed
    # the counts of the two windows add up to the whole pool's
    assert reused["attempts"] == whole["attempts"]
    assert reused["attempts"]["tasks"] == len(tasks)
    for k in ("persd", "persd-refine", "persd-combined", "stand", "inpd"):
        assert reused["datasets"][k] == whole["datasets"][k], k
    for part in ("refine", "stand"):
        for k in ("samples", "prompt_tokens", "completion_tokens", "verified", "unchanged"):
            assert reused["teacher"][part][k] == whole["teacher"][part][k], (part, k)
    assert reused["teacher"]["refine"]["verified_by_round"] == \
        whole["teacher"]["refine"]["verified_by_round"]
    assert reused["teacher"]["price_per_mtok"] == whole["teacher"]["price_per_mtok"]
    assert reused["personalisation"] == whole["personalisation"]
    assert reused["pass_before"] == whole["pass_before"]


def test_a_fresh_windowed_run_covers_the_pool_once(runs):
    import datasets

    root, tasks, _, _, (fresh, asked) = runs
    run = RunStore(root / "fresh", lock=False)
    attempts = _lines(root / "fresh", "attempts")
    assert sum(attempts.values()) == len(tasks) and max(attempts.values()) == 1
    assert fresh["attempts"]["tasks"] == len(tasks)
    assert asked == fresh["teacher"]["refine"]["calls"] + fresh["teacher"]["stand"]["calls"]
    combined = _lines(root / "fresh", "persd-combined")
    assert sum(combined.values()) == fresh["datasets"]["persd-combined"] > 0
    # the Hugging Face export is made from the joined views
    ds = datasets.load_from_disk(str(run.path / "hf" / "persd-combined"))
    assert len(ds) == fresh["datasets"]["persd-combined"]
    assert fresh["personalisation"]["persd"]["examples"] == fresh["datasets"]["persd"]
    events = (run.path / "events.jsonl").read_text()
    assert events.count('"0-setup"') >= 3     # the load, then one setup per window


def test_online_rounds_need_one_window(task_file, student_pool, student_cfg, tiny_model,
                                       tmp_path):
    """Refused before any work (the teacher's address here answers nothing)."""
    from engine.distill import run_distill

    cfg = _cfg(tmp_path / "run", task_file, student_cfg, tiny_model, "http://127.0.0.1:9", 4,
               online_rounds=1, skip_train=False)
    with pytest.raises(ConfigError, match="data.window"):
        run_distill(cfg, student_pool=student_pool)


def test_a_negative_window_is_refused():
    with pytest.raises(ConfigError, match="data.window"):
        DataConfig(window=-1)
