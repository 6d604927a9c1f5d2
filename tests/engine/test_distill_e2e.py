"""The whole loop on a handful of tasks: tiny student in vLLM, scripted teacher over HTTP,
real sandbox, real LoRA fine-tune, adapter evaluated through vLLM."""
from __future__ import annotations

import json

import orjson
import pytest

from engine.config import DataConfig, EvalConfig, RunConfig, TeacherConfig
from engine.records import Attempt, Example, Grade, Refinement
from engine.run.store import RunStore
from engine.summary import RunSummary
from engine.tasks import load_file
from tests.tiny import SCRIPTED_TEACHER, ScriptedTeacher, wrong_on_purpose
from train.config import TrainConfig


@pytest.fixture(scope="module")
def e2e(tmp_path_factory, task_file, student_pool, student_cfg, tiny_model):
    from engine.distill import run_distill

    tasks = load_file(task_file)
    run_dir = tmp_path_factory.mktemp("run")
    with ScriptedTeacher(tasks) as teacher:
        cfg = RunConfig(
            run_dir=str(run_dir), dataset="persd-combined",
            student=student_cfg.__class__(**{**student_cfg.__dict__, "model": str(tiny_model)}),
            teacher=TeacherConfig(base_url=teacher.url, model="scripted", concurrency=4,
                                  **SCRIPTED_TEACHER),
            data=DataConfig(train_tasks=str(task_file), train_limit=0,
                            eval_tasks=str(task_file), eval_limit=3),
            eval=EvalConfig(n=2, k=(1, 2), temperature=0.8, max_tokens=32),
            train=TrainConfig(epochs=2, lr=1e-3, batch_tokens=1024, save_every=100))
        summary = run_distill(cfg, student_pool=student_pool).to_json()
        first_requests = len(teacher.requests)
        # resume: the same run directory again makes no teacher call and redoes nothing
        again = run_distill(cfg, student_pool=student_pool).to_json()
        resumed_requests = len(teacher.requests) - first_requests
    return tasks, RunStore(run_dir, lock=False), summary, again, first_requests, resumed_requests


def test_run_directory_holds_every_stage(e2e):
    tasks, run, summary, again, *_ = e2e
    for name in ("attempts", "grades", "refinements", "stand-answers", "verified", "persd",
                 "persd-refine", "persd-combined", "stand", "eval-before-results",
                 "eval-after-results"):
        assert run.file(name).exists(), name
    assert json.loads((run.path / "config.json").read_text())["dataset"] == "persd-combined"
    saved = json.loads((run.path / "summary.json").read_text())
    assert set(saved["pass_before"]) == {"pass@1", "pass@2"}
    assert set(saved["pass_after"]) == {"pass@1", "pass@2"}
    assert saved["attempts"]["tasks"] == len(tasks)
    assert all(s >= 0 for s in saved["seconds_per_stage"].values())
    assert saved == again   # the last run_distill's record is the document on disk
    assert RunSummary.load(run.path).to_json() == saved   # and reads back field for field


def test_teacher_sees_failures_only_and_persd_holds_exactly_the_verified(e2e):
    tasks, run, summary, *_ = e2e
    attempts = run.read("attempts", Attempt)
    grades = {g.program_id: g for g in run.read("grades", Grade)}
    refinements = run.read("refinements", Refinement)
    verified = {g.program_id: g for g in run.read("verified", Grade)}
    failed = {a.attempt_id for a in attempts if not grades[a.attempt_id].passed}
    assert failed, "the tiny student should fail these tasks"
    assert {r.attempt_id for r in refinements} == failed
    passing = {r.refinement_id for r in refinements if verified[r.refinement_id].passed}
    persd = run.read("persd", Example)
    assert {e.example_id.removesuffix(":persd") for e in persd} == passing
    for r in refinements:  # the scripted teacher's wrong answers were rejected by the sandbox
        assert verified[r.refinement_id].passed == (not wrong_on_purpose(r.task_id))
    assert 0 < len(passing) < len(refinements)
    combined = run.read("persd-combined", Example)
    assert len(combined) == len(persd) + len(run.read("persd-refine", Example))
    # PersD-refine shows the student its own wrong code and the execution feedback
    refine_ex = run.read("persd-refine", Example)[0]
    att = next(a for a in attempts if a.task_id == refine_ex.task_id)
    assert grades[att.attempt_id].feedback.strip()[:40] in refine_ex.prompt[0]["content"]


def test_adapter_was_trained_and_evaluated_through_vllm(e2e):
    tasks, run, summary, *_ = e2e
    adapter = run.path / "train" / "adapter"
    assert (adapter / "adapter_config.json").exists()
    log = [orjson.loads(line) for line in (run.path / "train" / "train-log.jsonl").read_bytes().splitlines()]
    assert log and log[-1]["loss"] < log[0]["loss"]
    after = run.read("eval-after-attempts", Attempt)
    assert after and all(a.adapter == str(adapter) for a in after)
    before = run.read("eval-before-attempts", Attempt)
    assert len(before) == 3 * 2  # eval_limit tasks x n samples
    # the fine-tune changed what the student writes
    assert [a.completion for a in before] != [a.completion for a in after]


def test_resumed_run_repeats_no_work(e2e):
    tasks, run, summary, again, first, resumed = e2e
    assert first == summary["teacher"]["refine"]["calls"] + summary["teacher"]["stand"]["calls"]
    assert resumed == 0
    assert again["datasets"] == summary["datasets"]
    assert again["pass_after"] == summary["pass_after"]


def test_personalisation_is_measured_and_stand_matched_has_persd_size(e2e):
    from engine.stages.personal import Personalisation

    tasks, run, summary, *_ = e2e
    rows = run.read("personalisation", Personalisation)
    counts = summary["datasets"]
    assert len(rows) == sum(counts[k] for k in ("persd", "persd-refine", "stand", "inpd"))
    for kind, stats in summary["personalisation"].items():
        assert stats["examples"] == counts[kind]
        assert all(0.0 <= v <= 1.0 for v in stats["target_vs_attempt"].values())
    persd = [r for r in rows if r.kind == "persd"]
    assert persd and all(r.reference is not None for r in persd)
    matched = run.read("stand-matched", Example)
    stand_ids = {e.example_id for e in run.read("stand", Example)}
    assert len(matched) == min(counts["persd"], counts["stand"])
    assert {e.example_id for e in matched} <= stand_ids
    # the scripted teacher's wrong answer comes back unchanged when it is shown again in
    # round 1; round 0 shows it the student's code, which it never copies
    refinements = run.read("refinements", Refinement)
    unchanged = [r for r in refinements if r.unchanged]
    assert unchanged and all(">r1." in r.refinement_id and wrong_on_purpose(r.task_id)
                             for r in unchanged)
    assert summary["teacher"]["refine"]["unchanged"] == len(unchanged)


def test_the_run_ends_with_a_report_of_its_own_numbers(e2e):
    """report.md holds every section with the run's real numbers, and its plots are PNGs;
    `python -m engine.report` rebuilds it, and compares runs side by side."""
    import subprocess
    import sys

    tasks, run, summary, *_ = e2e
    text = (run.path / "report.md").read_text()
    for section in ("## pass@k", "## Funnel", "## Personalisation", "## Teacher",
                    "## Where the time went", "## Tasks that changed"):
        assert section in text, section
    before, after = summary["pass_before"]["pass@1"], summary["pass_after"]["pass@1"]
    assert f"| pass@1 | {100 * before:.1f} | {100 * after:.1f} |" in text
    assert f"| failed attempts | {summary['attempts']['failed']} |" in text
    assert f"| refinements | {summary['teacher']['refine']['samples']} |" in text
    assert "95% bootstrap interval" in text and "1-step" in text
    for name in ("pass", "funnel", "personal", "time"):
        png = (run.path / f"report-{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000, name
    (run.path / "report.md").unlink()
    done = subprocess.run([sys.executable, "-m", "engine.report", str(run.path), str(run.path),
                           "--out", str(run.path / "compare.md")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert (run.path / "report.md").read_text() == text
    compare = (run.path / "compare.md").read_text()
    assert "| +0.0 | [+0.0, +0.0] | within noise |" in compare   # a run against itself


def test_datasets_are_written_as_hf_datasets_that_train(e2e, tiny_model, tmp_path):
    """Every dataset is also a `datasets` directory and a Parquet file with a card, and the
    trainer takes the directory as it takes JSONL."""
    import datasets

    from train.config import TrainConfig as TC
    from train.lora import train

    tasks, run, summary, *_ = e2e
    for name, count in summary["datasets"].items():
        if count:
            ds = datasets.load_from_disk(str(run.path / "hf" / name))
            assert len(ds) == count and set(ds.column_names) >= {"prompt", "completion"}
            assert len(datasets.Dataset.from_parquet(str(run.path / "hf" / f"{name}.parquet"))) \
                == count
    card = (run.path / "hf" / "README.md").read_text()
    assert f"| persd-combined | {summary['datasets']['persd-combined']} |" in card
    adapter = train(run.path / "hf" / "persd-combined", str(tiny_model), tmp_path / "t",
                    TC(max_steps=1, save_every=100))
    assert (adapter / "adapter_config.json").exists()
