"""The stages of one distillation pass, each a function on batches of typed records.

attempt (student samples) -> grade (sandbox) -> refine (teacher, failures only) -> verify
(sandbox) -> build datasets. `evaluate.py` reuses attempt + grade for pass@k.
"""
from __future__ import annotations

import asyncio
from typing import Callable, Sequence

from engine import prompts
from engine.records import Attempt, Example, Grade, Program, Refinement, Task
from engine.runlog import Progress
from engine.student import GenRequest, StudentPool
from engine.teacher import Teacher


# ------------------------------------------------------------------------------------ 1. attempt

def sample(pool: StudentPool, tasks: Sequence[Task], *, n: int, temperature: float, top_p: float,
           max_tokens: int, seed: int, prompt_format: str, adapter: str | None = None,
           messages_for: Callable[[Task], list[dict[str, str]]] | None = None,
           id_suffix: str = "") -> list[Attempt]:
    """n samples per task. Request seeds are seed + task position, so a run reproduces."""
    reqs = []
    for i, t in enumerate(tasks):
        common = dict(n=n, temperature=temperature, top_p=top_p if temperature > 0 else 1.0,
                      max_tokens=max_tokens, seed=seed + i, adapter=adapter)
        if prompt_format == "chat":
            msgs = messages_for(t) if messages_for else [
                {"role": "user", "content": prompts.task_message(t)}]
            reqs.append(GenRequest(t.task_id + id_suffix, messages=tuple(msgs), **common))
        else:
            reqs.append(GenRequest(t.task_id + id_suffix, prompt=t.prompt, **common))
    outs = pool.generate(reqs)
    attempts = []
    for t, out in zip(tasks, outs):
        for j, text in enumerate(out.texts):
            if prompt_format == "chat":
                code = prompts.extract_code(text, t.entry_point, t.prompt) or ""
            else:
                code = t.prompt + prompts.truncate_completion(text)
            attempts.append(Attempt(f"{t.task_id}{id_suffix}#{j}", t.task_id, text, code, adapter))
    return attempts


# -------------------------------------------------------------------------------------- 2. grade

def programs_for(pairs: Sequence[tuple[str, Task, str]], seen_only: bool = False,
                 timeout_s: float = 10.0) -> list[Program]:
    """(program_id, task, solution code) -> sandbox Programs against hidden (or seen) tests."""
    return [Program(pid, prompts.program_code(t, code),
                    t.seen_tests if seen_only else t.tests, t.setup, timeout_s)
            for pid, t, code in pairs]


# ------------------------------------------------------------------------------------- 3. refine

def refine(teacher: Teacher, template: str, items: Sequence[tuple[Task, Attempt | None, Grade | None]]
           ) -> list[Refinement]:
    """One teacher call per (task, failed attempt, its grade); attempt None asks for a plain answer
    (StanD). Replies are cached by the teacher, so a resumed run pays nothing twice."""
    msgs = []
    for task, att, grade in items:
        if att is None:
            msgs.append(prompts.teacher_messages("answer", task))
        else:
            msgs.append(prompts.teacher_messages(template, task, att.code or att.completion,
                                                 grade.feedback if grade else ""))
    progress = Progress("refine" if items and items[0][1] else "stand", len(items), unit="calls")
    replies = asyncio.run(teacher.complete_many(msgs, lambda i, r: progress.update()))
    out = []
    for (task, att, _), reply in zip(items, replies):
        rid = f"{att.attempt_id}>r" if att else f"{task.task_id}>stand"
        code = prompts.extract_code(reply.text, task.entry_point, task.prompt) if reply.text else None
        out.append(Refinement(rid, task.task_id, att.attempt_id if att else None,
                              template if att else "answer", reply.text or f"<error: {reply.error}>",
                              code, reply.prompt_tokens, reply.completion_tokens, reply.cached))
    return out


# ----------------------------------------------------------------------------- 5. build datasets

def _answer(code: str) -> tuple[dict[str, str], ...]:
    return ({"role": "assistant", "content": f"```python\n{code.rstrip()}\n```"},)


def build_datasets(tasks: dict[str, Task], attempts: dict[str, Attempt], grades: dict[str, Grade],
                   refinements: Sequence[Refinement], verified: dict[str, Grade]
                   ) -> dict[str, list[Example]]:
    """PersD, PersD-refine, PersD-combined, StanD and InpD, in TRL's prompt-completion format.

    Only refinements whose verification passed are used; one example per (task, source) so a task
    with several passing refinements is not over-weighted.
    """
    persd, refine_ex, stand, inpd = [], [], [], []
    seen_persd: set[str] = set()
    for r in refinements:
        v = verified.get(r.refinement_id)
        if r.code is None or v is None or not v.passed:
            continue
        task = tasks[r.task_id]
        user = ({"role": "user", "content": prompts.task_message(task)},)
        if r.attempt_id is None:
            stand.append(Example(f"{r.refinement_id}", task.task_id, "stand", user, _answer(r.code)))
            continue
        att = attempts[r.attempt_id]
        if task.task_id not in seen_persd:
            seen_persd.add(task.task_id)
            persd.append(Example(f"{r.refinement_id}:persd", task.task_id, "persd", user,
                                 _answer(r.code)))
        feedback = grades[att.attempt_id].feedback
        refine_user = ({"role": "user",
                        "content": prompts.refine_message(task, att.code or att.completion, feedback)},)
        refine_ex.append(Example(f"{r.refinement_id}:refine", task.task_id, "persd-refine",
                                 refine_user, _answer(r.code)))
    failed_tasks = {a.task_id for a in attempts.values() if not grades[a.attempt_id].passed}
    for tid in sorted(failed_tasks):
        task = tasks[tid]
        if task.reference:
            inpd.append(Example(f"{tid}>ref:inpd", tid, "inpd",
                                ({"role": "user", "content": prompts.task_message(task)},),
                                _answer(task.reference)))
    return {"persd": persd, "persd-refine": refine_ex, "persd-combined": persd + refine_ex,
            "stand": stand, "inpd": inpd}
