"""Test synthesis: built-in tasks stripped of their tests get tests from a scripted teacher's
proposed inputs (some invalid) and the reference's outputs, checked against mutants; a wrong
reference is flagged by the cross-check; a task without a reference gets majority tests."""
from __future__ import annotations

import dataclasses
import json
import re

import pytest

from engine.config import SynthConfig, SynthesizeConfig, TeacherConfig
from engine.records import Program
from engine.tasks import load_file
from engine.tasks.synthesize import literal, parse_calls
from sandbox import values
from tests.tiny import ScriptedTeacher

JUNK = ["x = 5", "print('hello')", "{ep}(undefined_name)", "{ep}(lambda: 1)", "not python ((",
        "{ep}()"]   # the last one parses but raises TypeError in the reference


def test_parse_calls_keeps_calls_of_the_entry_point_and_says_why_not():
    text = ("Here you go:\n```python\nf(1, 2)\n>>> f([1], 'a')\nassert f(3, 4) == 99\n"
            "print(f(5, 6))\nf(1, 2)\ng(1)\nf(x)\nf(lambda: 1)\nf(1,\n# a comment\n"
            "f(1).real\n```")
    calls, why = parse_calls(text, "f")
    assert calls == ["f(1, 2)", "f([1], 'a')", "f(3, 4)", "f(5, 6)", "f(1).real"]
    assert why == {"duplicate": 1, "not a call of the entry point": 1,
                   "uses names the task does not define": 2, "not Python": 1}


@pytest.mark.parametrize("value,ok", [
    ([1, (2, "a")], True), ({1, 2}, True), (set(), True), ({"a": [1.5]}, True), (None, True),
    (float("nan"), False), (float("inf"), False), ("x" * 400, False)])
def test_an_expected_value_is_a_literal_that_round_trips(value, ok):
    encoded = values.encode(value)
    text, why = literal(encoded, 300)
    assert (text is not None) == ok, why
    if ok:
        assert values.equal(values.encode(eval(text, {"set": set})), encoded)


def test_an_object_without_a_value_encoding_is_no_test():
    assert literal(["opaque", "mod.Thing"], 300) == (None, "no stable representation")
    assert literal(["list", [["int", "0x1"], ["ref", 3, "mod.T"]]], 300)[0] is None


class SynthTeacher(ScriptedTeacher):
    """Proposes each task's hand-written test calls plus junk; answers tasks from `answers`."""

    def __init__(self, originals, answers):
        super().__init__(originals)
        self.originals, self.answers = originals, answers

    def answer(self, user: str) -> str:
        for t in self.originals:
            if not re.search(rf"`{re.escape(t.entry_point)}`|def {re.escape(t.entry_point)}\b",
                             user):
                continue
            if "Propose" in user:
                lines = [tc.call for tc in t.tests if tc.call] + \
                    [j.format(ep=t.entry_point) for j in JUNK] + [t.tests[0].call]
                return "Sure:\n```python\n" + "\n".join(lines) + "\n```"
            return f"```python\n{self.answers.get(t.task_id, t.reference)}```"
        return "I cannot tell which task this is."


def a_slip(task, sandbox_pool, passing: int = 0) -> str:
    """A mutant of the task's reference (not a `return` swap) that fails its hand-written tests
    while passing at least `passing` of them."""
    from engine.tasks.mutants import mutants

    slips = [m.code for m in mutants(task.reference, task.entry_point) if m.kind != "return"]
    grades = sandbox_pool.grade([Program(f"m{i}", code, task.tests, task.setup, 2.0)
                                 for i, code in enumerate(slips)])
    return next(slips[i] for i, g in enumerate(grades)
                if g.status.value == "failed" and sum(g.test_passed) >= passing)


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory, builtin_tasks, sandbox_pool):
    from engine.synthesize import synthesize

    originals = [t for t in builtin_tasks if len([c for c in t.tests if c.call]) >= 4][:8]
    wrong, voter = originals[1], originals[2]
    # a reference with a slip the teacher's own solution does not share (a mutant that fails
    # some hand-written tests and passes others): the cross-check must flag it
    bad_ref = a_slip(wrong, sandbox_pool, passing=3)
    lines = []
    for t in originals:
        d = {"task_id": t.task_id, "prompt": t.prompt, "entry_point": t.entry_point,
             "reference": None if t is voter else bad_ref if t is wrong else t.reference}
        lines.append(json.dumps(d))
    out = tmp_path_factory.mktemp("synth")
    task_path = out / "in.jsonl"
    task_path.write_text("\n".join(lines) + "\n")
    with SynthTeacher(originals, {}) as teacher:
        cfg = SynthesizeConfig(tasks=str(task_path), out=str(out / "run"),
                               synth=SynthConfig(cross_check=True, votes=3, mutants=12),
                               teacher=TeacherConfig(base_url=teacher.url, model="scripted",
                                                     concurrency=4))
        summary = synthesize(cfg)
        first = len(teacher.requests)
        again = synthesize(cfg)
        resumed = len(teacher.requests) - first
    return originals, wrong, voter, out / "run", summary, again, resumed


def test_tests_that_let_mutants_live_are_not_kept(synthesized, tmp_path):
    """The same tasks with a stricter kill-rate bar: tasks whose tests let more mutants live
    are reported weak and left out."""
    from engine.synthesize import synthesize

    originals, wrong, voter, run, summary, *_ = synthesized
    rates = {r["task_id"]: r["kill_rate"] for r in map(json.loads, (run / "synthesis.jsonl").open())
             if r["status"] == "kept"}
    bar = sorted(r for r in rates.values() if r is not None)[0] + 0.01   # the weakest fails it
    assert bar < 1
    with SynthTeacher(originals, {}) as teacher:
        cfg = SynthesizeConfig(tasks=str(run.parent / "in.jsonl"), out=str(tmp_path),
                               synth=SynthConfig(cross_check=True, votes=3, mutants=12,
                                                 min_kill=bar),
                               teacher=TeacherConfig(base_url=teacher.url, model="scripted",
                                                     concurrency=4))
        strict = synthesize(cfg)
    weak = {t for t, r in rates.items() if r is not None and r < bar}
    per = {r["task_id"]: r for r in map(json.loads, (tmp_path / "synthesis.jsonl").open())}
    assert weak and all(per[t]["status"] == "weak-tests" for t in weak)
    assert strict["kept"] == summary["kept"] - len(weak)
    assert not weak & {json.loads(x)["task_id"] for x in (tmp_path / "tasks.jsonl").open()}


def test_tasks_without_tests_load_only_when_asked(tmp_path):
    from common.errors import TaskFileError

    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"task_id": "a", "entry_point": "f",
                                "signature": "def f(x):", "instruction": "Double x."}) + "\n")
    with pytest.raises(TaskFileError, match="no tests.*engine.synthesize"):
        load_file(path)
    assert load_file(path, require_tests=False)[0].tests == ()


def test_instruction_and_reference_rows_need_no_entry_point_or_signature(tmp_path):
    """CodeAlpaca-style data: the entry point and signature come from the reference."""
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"task_id": "a", "instruction": "Add a and b.",
                                "reference": "import math\n\ndef add(a, b=1):\n    return a + b\n"})
                    + "\n")
    [t] = load_file(path, require_tests=False)
    assert t.entry_point == "add" and t.prompt.startswith("def add(a, b=1):\n")
    path.write_text(json.dumps({"task_id": "a", "instruction": "x", "reference": "x = 1\n"}) + "\n")
    with pytest.raises(Exception, match="t.jsonl:1: no entry_point, and the reference defines"):
        load_file(path, require_tests=False)


def test_synthesized_tests_pass_the_reference_and_reject_wrong_code(synthesized, sandbox_pool):
    originals, wrong, voter, run, summary, *_ = synthesized
    kept = load_file(run / "tasks.jsonl")     # the output is a task file the engine loads
    by_id = {t.task_id: t for t in originals}
    assert len(kept) >= 5 and wrong.task_id not in {t.task_id for t in kept}
    progs = []
    for t in kept:
        assert 3 <= len(t.tests) <= 10
        ref = by_id[t.task_id].reference
        none = f"def {t.entry_point}(*args, **kwargs):\n    return None\n"
        progs += [Program(f"{t.task_id}/ref", ref, t.tests, t.setup),
                  Program(f"{t.task_id}/none", none, t.tests, t.setup)]
    grades = {g.program_id: g for g in sandbox_pool.grade(progs)}
    for t in kept:
        assert grades[f"{t.task_id}/ref"].passed, grades[f"{t.task_id}/ref"]
        assert not grades[f"{t.task_id}/none"].passed
    reports = {r["task_id"]: r for r in map(json.loads, (run / "synthesis.jsonl").open())}
    rates = [reports[t.task_id]["kill_rate"] for t in kept]
    assert all(r is None or r >= 0.6 for r in rates) and summary["mean_kill_rate"] >= 0.6


def test_invalid_inputs_are_dropped_with_a_reason(synthesized):
    originals, wrong, voter, run, summary, *_ = synthesized
    reports = [json.loads(line) for line in (run / "synthesis.jsonl").open()]
    per = {r["task_id"]: r for r in reports}
    t = originals[0]
    assert per[t.task_id]["dropped"] == {
        "not a call": 1, "not a call of the entry point": 1,
        "uses names the task does not define": 2, "not Python": 1, "duplicate": 1, "raised": 1}
    # the task without a reference: no solution answers `f()`, so no majority either
    assert summary["calls_dropped"]["raised"] == len(originals) - 1
    assert per[voter.task_id]["dropped"]["no majority"] == 1


def test_a_wrong_reference_is_flagged_by_the_cross_check(synthesized):
    originals, wrong, voter, run, summary, *_ = synthesized
    per = {r["task_id"]: r for r in map(json.loads, (run / "synthesis.jsonl").open())}
    assert per[wrong.task_id]["status"] == "flagged" and per[wrong.task_id]["flagged"]
    assert summary["status"]["flagged"] == 1


def test_a_task_without_a_reference_gets_majority_tests(synthesized, sandbox_pool):
    originals, wrong, voter, run, summary, *_ = synthesized
    lines = {json.loads(x)["task_id"]: json.loads(x) for x in (run / "tasks.jsonl").open()}
    assert lines[voter.task_id]["synthesized"]["reference"] == "teacher-majority"
    assert lines[voter.task_id]["reference"].strip() == voter.reference.strip()
    # the majority tests agree with the hand-written ones: the true reference passes them
    t = next(t for t in load_file(run / "tasks.jsonl") if t.task_id == voter.task_id)
    [g] = sandbox_pool.grade([Program("v", voter.reference, t.tests, t.setup)])
    assert g.passed


def test_a_rerun_resumes_without_asking_the_teacher_again(synthesized):
    originals, wrong, voter, run, summary, again, resumed = synthesized
    assert resumed == 0
    assert again["kept"] == summary["kept"] and again["tests_kept"] == summary["tests_kept"]
    assert again["teacher"]["prompt_tokens"] == summary["teacher"]["prompt_tokens"] > 0


def test_a_run_synthesises_tests_first_for_its_tasks_without_any(tmp_path, builtin_tasks,
                                                                 tiny_model, student_cfg,
                                                                 student_pool):
    """`--data.synthesize`: the run's first step gives its test-less tasks checked tests (the
    same synthesis, through the run's store and teacher cache), then the run goes on with them;
    without it, such a task file is an error naming the task."""
    import dataclasses

    from common.errors import TaskFileError
    from engine.config import DataConfig, EvalConfig, RunConfig
    from engine.distill import run_distill
    from engine.tasks import BUILTIN_PATH
    from tests.tiny import SCRIPTED_TEACHER

    originals = [t for t in builtin_tasks if len([c for c in t.tests if c.call]) >= 4][:4]
    rows = {json.loads(line)["task_id"]: json.loads(line)
            for line in BUILTIN_PATH.read_text().splitlines()}
    lines = []
    for i, t in enumerate(originals):
        row = dict(rows[t.task_id])
        if i < 2:   # the first two lose their tests
            row.pop("tests"), row.pop("seen_tests", None)
        lines.append(json.dumps(row))
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with SynthTeacher(originals, {}) as teacher:
        cfg = RunConfig(
            run_dir=str(tmp_path / "run"), skip_train=True,
            student=dataclasses.replace(student_cfg, model=str(tiny_model)),
            teacher=TeacherConfig(base_url=teacher.url, model="scripted", concurrency=4,
                                  rounds=1, **SCRIPTED_TEACHER),
            data=DataConfig(train_tasks=str(path), eval_tasks="builtin-heldout", eval_limit=1,
                            synthesize=True),
            eval=EvalConfig(n=1, k=(1,), temperature=0.0, max_tokens=24),
            synth=SynthConfig(mutants=12))
        summary = run_distill(cfg, student_pool=student_pool)
        asked = len(teacher.requests)
        again = run_distill(cfg, student_pool=student_pool)   # resumed: nothing asked again
        assert len(teacher.requests) == asked and again.synthesis == summary.synthesis
        with pytest.raises(TaskFileError, match=re.escape(originals[0].task_id)):
            run_distill(dataclasses.replace(cfg, run_dir=str(tmp_path / "strict"),
                                            data=dataclasses.replace(cfg.data, synthesize=False)),
                        student_pool=student_pool)
    kept = load_file(tmp_path / "run" / "synthesis" / "tasks.jsonl")
    assert summary.synthesis["tasks"] == 2 and summary.synthesis["kept"] == len(kept) >= 1
    assert {t.task_id for t in kept} <= {t.task_id for t in originals[:2]}
    assert all(len(t.tests) >= 3 and all(c.call and c.expected for c in t.tests) for t in kept)
    assert summary.attempts.tasks == 2 + len(kept)   # the synthesised tasks were attempted


def test_stripping_references_sends_every_task_down_the_majority_path():
    """`strip_references` (bench_synth.py --no_reference) measures the no-reference path on
    tasks whose own tests and references are known: synthesis sees neither."""
    from engine.synthesize import input_tasks

    cfg = SynthesizeConfig(tasks="builtin-all", limit=5, strip_tests=True)
    assert all(t.tests == () and t.reference for t in input_tasks(cfg))
    bare = input_tasks(dataclasses.replace(cfg, strip_references=True))
    assert len(bare) == 5 and all(t.tests == () and t.reference is None for t in bare)


def test_a_stricter_agreement_drops_the_inputs_the_votes_split_on(synthesized, sandbox_pool,
                                                                  tmp_path):
    """synth.agree: one vote in three is a wrong program, so on the inputs where it differs
    two of three agree: kept at the default (more than half), dropped at 0.7."""
    from engine.synthesize import synthesize

    originals, wrong, voter, *_ = synthesized
    bad = a_slip(voter, sandbox_pool)

    class SplitVotes(SynthTeacher):
        votes = 0

        def answer(self, user: str) -> str:
            if "Propose" not in user and re.search(rf"def {re.escape(voter.entry_point)}\b", user):
                self.votes += 1
                if self.votes % 3 == 0:
                    return f"```python\n{bad}```"
            return super().answer(user)

    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"task_id": voter.task_id, "prompt": voter.prompt,
                                "entry_point": voter.entry_point, "reference": None}) + "\n")
    reports = {}
    for agree in (0.5, 0.7):
        with SplitVotes(originals, {}) as teacher:
            out = tmp_path / f"agree-{agree}"
            synthesize(SynthesizeConfig(
                tasks=str(path), out=str(out), synth=SynthConfig(votes=3, mutants=12, agree=agree),
                teacher=TeacherConfig(base_url=teacher.url, model="scripted", concurrency=4)))
        [reports[agree]] = map(json.loads, (out / "synthesis.jsonl").open())
    split = {agree: r["dropped"].get("no majority", 0) for agree, r in reports.items()}
    assert split[0.7] > split[0.5] and reports[0.7]["kept"] < reports[0.5]["kept"]
