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
from pathlib import Path
from typing import Iterator, Sequence

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

    def pair(self) -> dict[str, str]:
        """As the run summary's decontamination report lists it."""
        return {"train": self.train_id, "eval": self.eval_id, "ngram": self.ngram}


def _index(against: Sequence[Task], n: int) -> dict[tuple[str, ...], str]:
    index: dict[tuple[str, ...], str] = {}
    for t in against:
        for g in _ngrams(t, n):
            index.setdefault(g, t.task_id)
    return index


def _overlap(t: Task, index: dict[tuple[str, ...], str], n: int) -> Overlap | None:
    hits = sorted((index[g], g) for g in _ngrams(t, n) if g in index)
    return Overlap(t.task_id, hits[0][0], " ".join(hits[0][1])) if hits else None


def find_overlaps(pool: Sequence[Task], against: Sequence[Task], n: int = N) -> list[Overlap]:
    """Every training task sharing a word n-gram with an evaluation task (its first match)."""
    index = _index(against, n)
    return [o for o in (_overlap(t, index, n) for t in pool) if o is not None]


def decontaminate(pool: Sequence[Task], against: Sequence[Task], n: int = N
                  ) -> tuple[list[Task], dict]:
    """(the pool without contaminated tasks, a report for the run summary)."""
    overlaps = find_overlaps(pool, against, n)
    bad = {o.train_id for o in overlaps}
    report = {"n": n, "pool": len(pool), "against": len(against), "dropped": len(bad),
              "pairs": [o.pair() for o in overlaps]}
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


def iter_pool(spec: str, limit: int, against: str, columns: str = "",
              require_tests: bool = True) -> tuple[Iterator[Task], dict | None]:
    """load_pool, one task at a time, for a pool of any size in bounded memory: a task file is
    read line by line and checked against `against`'s n-gram index (the evaluation sets: small)
    as it goes, and reading stops at `limit`. The report fills in as the iterator runs (its
    `pool` counts the tasks read). Other specs (named sets, `A+B`, `hf:`) are loaded whole, as
    load_pool does: they are the small ones."""
    from engine.tasks import load_tasks
    from engine.tasks.loaders import iter_file

    single_file = ("+" not in spec and ":" not in spec and Path(spec).is_file())
    if not single_file:
        pool, report = load_pool(spec, limit, against, columns, require_tests)
        return iter(pool), report
    report = None
    index: dict = {}
    if against:
        ref = load_tasks(against, 0, verify_seen=False)
        index = _index(ref, N)
        report = {"n": N, "pool": 0, "against": len(ref), "dropped": 0, "pairs": []}

    def tasks() -> Iterator[Task]:
        kept = 0
        for t in iter_file(spec, require_tests):
            if limit and kept >= limit:
                return
            if report is not None:
                report["pool"] += 1
                o = _overlap(t, index, N)
                if o is not None:
                    report["dropped"] += 1
                    report["pairs"].append(o.pair())
                    continue
            kept += 1
            yield t
    return tasks(), report
