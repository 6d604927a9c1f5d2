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
