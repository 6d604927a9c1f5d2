"""The built-in task set stays honest: references pass in the sandbox, broken variants fail, and
no task is a near-duplicate of a HumanEval or MBPP task."""
from __future__ import annotations

import ast
import re
from collections import Counter

import orjson
import pytest

from engine.prompts import program_code
from engine.records import Program
from engine.tasks import BUILTIN_PATH, load_file, load_tasks, split_tasks

TOPICS = {"strings", "lists", "dicts", "math", "number_theory", "sorting", "searching",
          "recursion", "dynamic_programming", "parsing", "classes", "dates", "formatting",
          "edge_cases"}
SIMILARITY_LIMIT = 0.5  # word-set Jaccard of normalised statements


@pytest.fixture(scope="module")
def tasks():
    return load_file(BUILTIN_PATH)


def test_size_fields_and_coverage(tasks):
    assert len(tasks) >= 200
    assert len({t.task_id for t in tasks}) == len(tasks)
    for t in tasks:
        assert len(t.tests) >= 5, t.task_id
        assert t.reference and t.instruction, t.task_id
        assert re.fullmatch(r"persd/[a-z_]+/[a-z0-9_]+", t.task_id), t.task_id
    topics = Counter(t.tags[0] for t in tasks)
    difficulty = Counter(t.tags[1] for t in tasks)
    assert set(topics) == TOPICS
    assert all(difficulty[d] >= 0.15 * len(tasks) for d in ("easy", "medium", "hard"))


def test_ids_are_stable(tasks):
    """Ids are the contract with run directories: the file order and ids only grow."""
    raw = [orjson.loads(line)["task_id"] for line in BUILTIN_PATH.read_bytes().splitlines()]
    assert raw == [t.task_id for t in tasks]
    assert "persd/strings/reverse_words" not in raw or raw.count("persd/strings/reverse_words") == 1


def test_every_reference_passes_in_the_sandbox(tasks, sandbox_pool):
    grades = sandbox_pool.grade([Program(t.task_id, program_code(t, t.reference), t.tests, t.setup)
                                 for t in tasks])
    failed = [(g.program_id, g.status.value, g.feedback) for g in grades if not g.passed]
    assert not failed


def _broken(reference: str, entry_point: str) -> str:
    """The reference with the entry point's body (every method, for a class) replaced by
    `return None`."""
    tree = ast.parse(reference)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == entry_point:
            targets = [node] if isinstance(node, ast.FunctionDef) else [
                m for m in node.body if isinstance(m, ast.FunctionDef) and m.name != "__init__"]
            for fn in targets:
                fn.body = [ast.Return(value=ast.Constant(None))]
    return ast.unparse(tree)


def test_a_wrong_variant_of_every_task_fails(tasks, sandbox_pool):
    grades = sandbox_pool.grade([Program(t.task_id, program_code(t, _broken(t.reference,
                                                                            t.entry_point)),
                                         t.tests, t.setup) for t in tasks])
    assert not [g.program_id for g in grades if g.passed]


def _words(text: str) -> set[str]:
    text = re.sub(r">>>.*|Example.*", " ", text, flags=re.S)  # statement only, not examples
    return set(re.findall(r"[a-z]+", text.lower())) - {"the", "a", "an", "of", "and", "to", "is",
                                                       "in", "given", "return", "function"}


def test_no_near_duplicates_of_benchmarks(tasks, shared_data):
    bench = []
    for line in (shared_data / "humaneval.jsonl").read_bytes().splitlines():
        d = orjson.loads(line)
        doc = re.search(r'"""(.*?)"""|\'\'\'(.*?)\'\'\'', d["prompt"], re.S)
        bench.append((d["task_id"], d["entry_point"], _words(doc.group(0) if doc else d["prompt"])))
    for line in (shared_data / "mbpp.jsonl").read_bytes().splitlines():
        d = orjson.loads(line)
        bench.append((f"MBPP/{d['task_id']}", d.get("entrypoint", ""), _words(d["text"])))
    names = {ep for _, ep, _ in bench}
    for t in tasks:
        assert t.entry_point not in names, f"{t.task_id} reuses benchmark name {t.entry_point}"
        mine = _words(t.instruction)
        for bid, _, theirs in bench:
            sim = len(mine & theirs) / max(len(mine | theirs), 1)
            assert sim <= SIMILARITY_LIMIT, f"{t.task_id} ~ {bid} (jaccard {sim:.2f})"


def test_split_helper_and_names(tasks):
    train, held = split_tasks(tasks, heldout_fraction=0.2, seed=0)
    assert 0.1 < len(held) / len(tasks) < 0.3
    assert load_tasks("builtin", 5) == train[:5]
    assert load_tasks("builtin-heldout") == held
