"""Prompt templates (student and teacher) and code extraction from model replies.

Teacher templates follow the paper's variants (Chen et al. 2023, sec. 3 and appendix):

| name               | the teacher sees                                     | used for            |
|--------------------|------------------------------------------------------|---------------------|
| refine-feedback    | task, student code, execution feedback               | PersD refinements   |
| refine-nofeedback  | task, student code; writes its own critique first    | PersD without tests |
| reference-guided   | task, student code, feedback, reference solution     | one-turn variant    |
| reference-two-turn | the task answered by the reference (first assistant  | the paper's         |
|                    | turn), then the student's code and error             | released prompt     |
| reference-edit     | task, student code, feedback, then the reference     | the default where a |
|                    | last, to be edited toward the student's code         | reference exists    |
| auto               | reference-edit where the task has a reference,       | default             |
|                    | else refine-feedback                                 |                     |
| answer             | task only                                            | StanD answers       |
"""
from __future__ import annotations

import ast
import re

from engine.records import Task

FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


def task_message(task: Task) -> str:
    """What the student (and, for StanD, the teacher) is asked: the same text in every stage.
    A code prompt defining the entry point is shown whole (its docstring shows the seen tests)."""
    m = re.search(rf"^\s*(def|class)\s+{re.escape(task.entry_point)}\b", task.prompt, re.M)
    if m:
        kind = "function" if m.group(1) == "def" else "class"
        return (f"Complete the following Python {kind}. Reply with the whole {kind} "
                "(and any imports it needs) in one ```python code block.\n\n"
                f"```python\n{task.prompt.rstrip()}\n```")
    return (f"{task.instruction or task.prompt}\n\nWrite a Python function `{task.entry_point}`. "
            "Reply with the code in one ```python code block.")


def refine_message(task: Task, code: str, feedback: str) -> str:
    """PersD-refine input: the task, the model's own wrong code and the execution feedback."""
    return (f"{task_message(task)}\n\nHere is an attempt:\n```python\n{code.rstrip()}\n```\n"
            f"It fails a test with this feedback:\n{feedback.strip()}\n\n"
            "Fix the code. Reply with the whole corrected function in one ```python code block.")


def resolve_template(template: str, task: Task) -> str:
    """`auto`: reference-edit where the task has a reference, else refine-feedback. On the
    default's 48 failures the local 1.5B teacher (4 samples at 0.8, 2 rounds) verified 47 with
    reference-edit and 18 with the paper's two-turn prompt (benchmarks/RESULTS.md)."""
    if template == "auto":
        return "reference-edit" if task.reference else "refine-feedback"
    if template in ("reference-two-turn", "reference-edit") and not task.reference:
        return "refine-feedback"
    return template


def cut_words(text: str, words: int = 50) -> str:
    """Each line of `text` cut to `words` words (the paper cuts input, output and expected)."""
    out = []
    for line in text.strip().splitlines():
        parts = line.split()
        out.append(" ".join(parts[:words]) + (" ..." if len(parts) > words else ""))
    return "\n".join(out)


def teacher_messages(template: str, task: Task, code: str = "", feedback: str = ""
                     ) -> list[dict[str, str]]:
    """Chat messages for the teacher under a named template (see the table above)."""
    system = {"role": "system", "content": "You are an expert Python programmer and a patient "
              "teacher. You fix students' code with the smallest change that makes it correct."}
    if template == "answer":
        return [system, {"role": "user", "content": task_message(task)}]
    if template not in TEMPLATES:
        raise ValueError(f"teacher.template: unknown template {template!r}; one of {TEMPLATES}")
    template = resolve_template(template, task)
    if template == "reference-two-turn":
        # The paper's released error prompt: the correct solution is the teacher's own first
        # turn, so the second turn asks it to rectify the student's code toward a known answer.
        return [system, {"role": "user", "content": task_message(task)},
                {"role": "assistant", "content": f"```python\n{task.reference.rstrip()}\n```"},
                {"role": "user", "content": (
                    "Here is a student's attempt at the same task, which is incorrect:\n"
                    f"```python\n{code.rstrip()}\n```\nRunning it against the tests gives:\n"
                    f"{cut_words(feedback)}\n\nRectify the student's code: return the corrected "
                    "code that is closest to the student's code, changing whatever is needed to "
                    "pass the tests; if it is badly wrong, rewrite it. Never return it unchanged. "
                    "Reply with the whole corrected code in one ```python code block.")}]
    if template == "reference-edit":
        # Small teachers copy the last code they are shown (Qwen2.5-Coder-1.5B returned the
        # student's code unchanged for 27 of 48 two-turn prompts): here that code is the correct
        # one, and the request is to bring it toward the student's, so a copy still passes.
        return [system, {"role": "user", "content": (
            f"{task_message(task)}\n\nA student wrote this code, which is wrong:\n"
            f"```python\n{code.rstrip()}\n```\nRunning it against the tests fails with:\n"
            f"{cut_words(feedback)}\n\nHere is a correct solution:\n"
            f"```python\n{task.reference.rstrip()}\n```\nWrite the student's corrected code: "
            "keep the student's function, names and structure wherever they are right, and take "
            "from the correct solution only what the student got wrong. The result must pass the "
            "tests. Reply with the whole corrected code in one ```python code block.")}]
    parts = [task_message(task),
             f"A student wrote this code, which is wrong:\n```python\n{code.rstrip()}\n```"]
    if template in ("refine-feedback", "reference-guided"):
        parts.append(f"Running it against the tests fails with:\n{feedback.strip()}")
    if template == "reference-guided" and task.reference:
        parts.append(f"A correct reference solution, for your eyes only:\n"
                     f"```python\n{task.reference.rstrip()}\n```")
    if template == "refine-nofeedback":
        parts.append("First explain in a few sentences what is wrong with it.")
    # Small teachers told only to "stay close" return the student's code unchanged (seen with
    # Qwen2.5-Coder-1.5B: 47 of 48 refinements were copies), so the wording insists on a fix.
    parts.append("Find the bug and rectify the student's code so that it passes the tests. Keep "
                 "the student's approach and names where they are sound, but change whatever is "
                 "needed; returning the code unchanged is never right. Reply with the whole "
                 "corrected function in one ```python code block.")
    return [system, {"role": "user", "content": "\n\n".join(parts)}]


def _statement(task: Task) -> str:
    """The task as shown to someone who tests it: its code prompt, or its instruction."""
    if re.search(rf"^\s*(def|class)\s+{re.escape(task.entry_point)}\b", task.prompt, re.M):
        return f"```python\n{task.prompt.rstrip()}\n```"
    return task.instruction or task.prompt


def inputs_messages(task: Task, count: int) -> list[dict[str, str]]:
    """Test synthesis (engine/tasks/synthesize.py): the teacher proposes inputs only. Expected
    values come from running the reference, never from the teacher."""
    return [{"role": "system", "content": "You are an expert Python programmer who writes "
             "thorough unit tests."},
            {"role": "user", "content": (
                f"{_statement(task)}\n\n"
                f"Propose {count} different calls of `{task.entry_point}` that together test it "
                "well: typical cases, edge cases (empty, zero, one element, negative, large, "
                "ties) and tricky cases. Each call must use only literal arguments. Write one "
                f"call per line, like `{task.entry_point}(...)`, with no assert and no expected "
                "value, in one ```python code block.")}]


TEMPLATES = ("refine-feedback", "refine-nofeedback", "reference-guided", "reference-two-turn",
             "reference-edit", "auto", "answer")


def extract_code(reply: str, entry_point: str, prompt: str = "") -> str | None:
    """Solution code from a model reply, or None when there is none.

    Handles fenced blocks (the last block defining `entry_point` wins, since models often show the
    buggy code before the fix), several blocks, missing fences, chat preambles, and bare function
    bodies (re-attached to the prompt's signature).
    """
    blocks = [body for lang, body in FENCE.findall(reply)
              if lang.lower() in ("", "python", "py", "python3")]
    defines = re.compile(rf"^\s*(?:async\s+)?(?:def|class)\s+{re.escape(entry_point)}\b", re.M)
    chosen = [b for b in blocks if defines.search(b)]
    if chosen:
        code = chosen[-1]
    elif blocks:
        code = max(blocks, key=len)
    else:  # no fences: drop prose before the first line that looks like code
        m = re.search(r"^(?:from |import |def |class |@|async def )", reply, re.M)
        code = reply[m.start():] if m else ""
        if not code and reply.startswith((" ", "\t")):
            code = reply
    code = code.strip("\n")
    if not code.strip():
        return None
    if not defines.search(code) and code.startswith((" ", "\t")) and prompt:
        code = prompt.rstrip("\n") + "\n" + code  # a bare body continues the prompt's signature
    return sanitize(code) + "\n"


_KEEP = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
         ast.Assign, ast.AnnAssign)


def sanitize(code: str) -> str:
    """Keep the definitions (imports, functions, classes, constants) and drop top-level demo code:
    prints, the model's own asserts, `if __name__ == "__main__":` blocks. Models often append
    usage examples; a wrong example must not fail a correct function (evalplus does the same).
    Code that does not parse is returned as is, so the sandbox reports its SyntaxError."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code
    lines = code.splitlines()
    kept = []
    for node in tree.body:
        if isinstance(node, _KEEP):
            start = min([d.lineno for d in getattr(node, "decorator_list", [])] + [node.lineno])
            kept.append("\n".join(lines[start - 1:node.end_lineno]))
    return "\n\n".join(kept) if kept else code


def truncate_completion(text: str) -> str:
    """For completion-format models: cut a function body where the next top-level code starts."""
    m = re.search(r"\n(?:def |class |if __name__|print\(|assert |#|```)", text)
    return text[: m.start()] if m else text


def program_code(task: Task, code: str) -> str:
    """The graded program: the prompt (its imports and helpers) and then the solution, whose
    own `def` replaces the prompt's stub."""
    return f"{task.prompt.rstrip()}\n\n{code}"
