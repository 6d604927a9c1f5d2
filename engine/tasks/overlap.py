"""Decontamination: training tasks that share an n-gram with an evaluation set are dropped.

A training pool drawn from the same sources as the benchmark (MBPP's train and test splits were
written by the same people, in the same words) can hold near-copies of evaluation tasks; training
on them inflates the after-score. The check is GPT-3's (Brown et al. 2020, appendix C): a training
task is contaminated when one of its word 13-grams (lower-cased `\\w+` tokens of the prompt and the
reference solution) also occurs in an evaluation task. It is symmetric in what it compares, cheap
(a set lookup per n-gram), and its report names every pair it found, so a reader can judge it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from engine.records import Task

N = 13


def _ngrams(task: Task, n: int) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", f"{task.prompt}\n{task.reference or ''}".lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


@dataclass(frozen=True)
class Overlap:
    """One contaminated training task, the evaluation task it overlaps and a shared n-gram."""
    train_id: str
    eval_id: str
    ngram: str


def find_overlaps(pool: Sequence[Task], against: Sequence[Task], n: int = N) -> list[Overlap]:
    """Every training task sharing a word n-gram with an evaluation task (its first match)."""
    index: dict[tuple[str, ...], str] = {}
    for t in against:
        for g in _ngrams(t, n):
            index.setdefault(g, t.task_id)
    found = []
    for t in pool:
        hits = sorted((index[g], g) for g in _ngrams(t, n) if g in index)
        if hits:
            found.append(Overlap(t.task_id, hits[0][0], " ".join(hits[0][1])))
    return found


def decontaminate(pool: Sequence[Task], against: Sequence[Task], n: int = N
                  ) -> tuple[list[Task], dict]:
    """(the pool without contaminated tasks, a report for the run summary)."""
    overlaps = find_overlaps(pool, against, n)
    bad = {o.train_id for o in overlaps}
    report = {"n": n, "pool": len(pool), "against": len(against), "dropped": len(bad),
              "pairs": [{"train": o.train_id, "eval": o.eval_id, "ngram": o.ngram}
                        for o in overlaps]}
    return [t for t in pool if t.task_id not in bad], report


def load_pool(spec: str, limit: int, against: str, columns: str = "",
              require_tests: bool = True) -> tuple[list[Task], dict | None]:
    """The training pool of a run: `spec`'s tasks, less those overlapping the task spec
    `against` (when given), then the first `limit` (0 = all). Seen tests are not verified here
    (the caller does, in its own sandbox pool)."""
    from engine.tasks import load_tasks

    pool = load_tasks(spec, 0, verify_seen=False, columns=columns, require_tests=require_tests)
    report = None
    if against:
        pool, report = decontaminate(pool, load_tasks(against, 0, verify_seen=False))
    return (pool[:limit] if limit else pool), report
