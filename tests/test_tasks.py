"""Task loaders: every supported format, and errors that name the file and line."""
from __future__ import annotations

import pytest

from engine.tasks import (TaskFileError, assert_to_test, load_file, load_tasks, split_tasks)


def test_humaneval_package_file_loads_with_split_tests():
    tasks = load_tasks("humaneval")
    assert len(tasks) == 164
    t = tasks[0]
    assert t.entry_point == "has_close_elements" and len(t.tests) == 7
    assert all("candidate" not in c.source for c in t.tests)
    assert t.seen_tests and t.seen_tests[0].expected == "False"


def test_shared_humaneval_and_mbpp_load(shared_data):
    he = load_file(shared_data / "humaneval.jsonl")
    mbpp = load_file(shared_data / "mbpp.jsonl")
    assert len(he) == 164 and len(mbpp) == 974
    assert mbpp[0].task_id == "MBPP/601" and len(mbpp[0].tests) == 3
    assert mbpp[0].seen_tests == mbpp[0].tests[:1]
    test_split = load_tasks(f"mbpp-test:{shared_data / 'mbpp.jsonl'}")
    assert len(test_split) == 500 and test_split[0].task_id == "MBPP/11"


def test_assert_split_into_call_and_expected():
    t = assert_to_test("assert f(1, [2]) == {'a': 3}")
    assert (t.call, t.expected) == ("f(1, [2])", "{'a': 3}")
    assert assert_to_test("assert abs(f(1) - 2) < 1e-6").call is None


def test_builtin_split_is_deterministic_and_disjoint():
    all_tasks = load_tasks("builtin-all")
    train, held = split_tasks(all_tasks)
    assert train and held and len(train) + len(held) == len(all_tasks)
    assert {t.task_id for t in train}.isdisjoint({t.task_id for t in held})
    assert [t.task_id for t in split_tasks(all_tasks)[1]] == [t.task_id for t in held]
    assert [t.task_id for t in load_tasks("builtin")] == [t.task_id for t in train]


PLAIN = ('{"task_id": "a", "signature": "def f(x):", "instruction": "Double x.", '
         '"entry_point": "f", "tests": ["assert f(1) == 2"], "reference": "def f(x): return 2*x"}')


@pytest.mark.parametrize("content, message", [
    (PLAIN + "\n{not json\n", ":2: malformed JSON"),
    (PLAIN.replace('["assert f(1) == 2"]', "[]"), ":1: task 'a' has no tests"),
    (PLAIN + "\n" + PLAIN, ":2: duplicate task_id 'a'"),
    ('{"foo": 1}', ":1: unrecognised task record"),
    (PLAIN.replace('"entry_point": "f", ', ""), ":1: unrecognised task record"),
    (PLAIN.replace("assert f(1) == 2", "assert f(1 =="), ":1: test is not valid Python"),
])
def test_bad_task_files_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "tasks.jsonl"
    path.write_text(content)
    with pytest.raises(TaskFileError) as err:
        load_file(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_missing_task_file():
    with pytest.raises(FileNotFoundError, match="does-not-exist.jsonl"):
        load_tasks("does-not-exist.jsonl")
