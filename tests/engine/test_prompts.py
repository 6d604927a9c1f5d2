"""Prompt building and code sanitising: what the student is shown and what gets graded."""
from __future__ import annotations

from engine.prompts import extract_code, refine_message, sanitize, task_message
from engine.records import Task, TestCase


def make_task() -> Task:
    return Task("t", 'def f(x):\n    """Add one."""\n', "f", (TestCase("assert f(1) == 2"),))


def test_sanitize_keeps_definitions_and_drops_demo_code():
    code = ("import math\nLIMIT = 3\n@cache\ndef f(x):\n    return x + 1\n"
            "print(f(2))\nassert f(1) == 3, 'my own wrong test'\nif __name__ == '__main__':\n    f(3)\n")
    out = sanitize(code)
    assert "@cache\ndef f(x)" in out and "import math" in out and "LIMIT = 3" in out
    assert "print" not in out and "assert" not in out and "__main__" not in out
    assert sanitize("def f(:\n") == "def f(:\n"  # unparsable: kept for the SyntaxError feedback


def test_extract_code_from_chat_reply_is_sanitised():
    reply = "Sure:\n```python\ndef f(x):\n    return x + 1\n\nprint(f(1))\n```\nDone."
    assert extract_code(reply, "f") == "def f(x):\n    return x + 1\n"


def test_task_and_refine_messages_carry_code_and_feedback():
    task = make_task()
    assert "def f(x):" in task_message(task)
    msg = refine_message(task, "def f(x):\n    return x\n", "Input: f(1) Output: 1 Expected: 2")
    assert "return x\n" in msg and "Input: f(1) Output: 1 Expected: 2" in msg


def test_a_class_prompt_is_shown_whole():
    task = Task("c", 'class C:\n    """A counter.\n    >>> C().n\n    0\n    """\n', "C",
                (TestCase("assert C().n == 0"),), instruction="A counter.")
    assert "Complete the following Python class." in task_message(task)
    assert ">>> C().n" in task_message(task)


def test_reference_edit_shows_the_reference_last_and_needs_one():
    import dataclasses

    from engine.prompts import teacher_messages
    from engine.tasks import BUILTIN_PATH, load_file

    task = load_file(BUILTIN_PATH)[0]
    [_, user] = teacher_messages("reference-edit", task, "def wrong(): pass", "AssertionError: x")
    text = user["content"]
    assert text.index("def wrong(): pass") < text.index("AssertionError: x") < \
        text.rindex(task.reference.strip().splitlines()[0])
    bare = dataclasses.replace(task, reference=None)
    assert teacher_messages("reference-edit", bare, "c", "f") == \
        teacher_messages("refine-feedback", bare, "c", "f")


def test_retry_template_replaces_the_later_rounds_template():
    from engine import stages
    from engine.records import Attempt, Grade, Refinement, Status
    from engine.tasks import BUILTIN_PATH, load_file

    task = load_file(BUILTIN_PATH)[0]
    att = Attempt(f"{task.task_id}#0", task.task_id, "x", "def f(): pass\n")
    grade = Grade(att.attempt_id, Status.FAILED, (False,), "wrong", 0.0)
    jobs = stages.first_round_jobs([att], {task.task_id: task}, {att.attempt_id: grade},
                                   "reference-two-turn", 1)
    rid = jobs[0].ids[0]
    ref = Refinement(rid, task.task_id, att.attempt_id, "reference-two-turn", "r",
                     "def f(): return 0\n", 0, 0)
    failed = {rid: Grade(rid, Status.FAILED, (False,), "still wrong", 0.0)}
    [kept] = stages.next_round_jobs(jobs, {rid: ref}, failed)
    [edit] = stages.next_round_jobs(jobs, {rid: ref}, failed, retry_template="reference-edit")
    assert (kept.template, edit.template) == ("reference-two-turn", "reference-edit")


def test_the_default_template_edits_the_reference_where_there_is_one():
    """`auto` (the config's default) is reference-edit for a task with a reference, the
    measured best on the default's failures (benchmarks/RESULTS.md), and refine-feedback
    for a task without one."""
    import dataclasses

    from engine.config import TeacherConfig
    from engine.prompts import resolve_template, teacher_messages
    from engine.tasks import BUILTIN_PATH, load_file

    task = load_file(BUILTIN_PATH)[0]
    default = TeacherConfig().template
    assert resolve_template(default, task) == "reference-edit"
    assert teacher_messages(default, task, "c", "f") == \
        teacher_messages("reference-edit", task, "c", "f")
    bare = dataclasses.replace(task, reference=None)
    assert resolve_template(default, bare) == "refine-feedback"
