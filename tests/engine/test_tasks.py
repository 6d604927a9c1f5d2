"""Task loaders: every supported format, and errors that name the file and line."""
from __future__ import annotations

import ast

import orjson
import pytest

from engine.prompts import task_message
from engine.records import TestCase
from engine.tasks import TaskFileError, assert_to_test, load_file, load_tasks, shown_in, split_tasks
from engine.tasks.docstring_tests import docstring_examples


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
    # no entry point and no reference to take it from (with a reference, see test_synthesize)
    (PLAIN.replace('"entry_point": "f", ', "").replace(', "reference": "def f(x): return 2*x"', ""),
     ":1: unrecognised task record"),
    (PLAIN.replace("assert f(1) == 2", "assert f(1 =="), ":1: test is not valid Python"),
    (PLAIN.replace('"signature": "def f(x):"', '"prompt": "def f(x):\\n    pass\\n"')
     .replace('"tests"', '"seen_tests": ["assert f(1) == 2"], "tests"'),
     ":1: seen test 'assert f(1) == 2' is not shown in the prompt"),
])
def test_bad_task_files_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "tasks.jsonl"
    path.write_text(content)
    with pytest.raises(TaskFileError) as err:
        load_file(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_a_file_read_again_is_reparsed_only_when_its_content_changed(tmp_path, monkeypatch):
    """Loads are memoised by content: an edit in place (same size, same second) is seen."""
    from engine.tasks import loaders

    parsed = []
    real = loaders.parse_records
    monkeypatch.setattr(loaders, "parse_records", lambda *a: parsed.append(1) or real(*a))
    path = tmp_path / "tasks.jsonl"
    path.write_text(PLAIN)
    first = load_file(path)
    assert load_file(path) == first and load_file(path) is not first  # a copy, not the cache
    assert len(parsed) == 1
    path.write_text(PLAIN.replace("f(1) == 2", "f(1) == 3"))
    assert "f(1) == 3" in load_file(path)[0].tests[0].source


def test_missing_task_file():
    with pytest.raises(FileNotFoundError, match="does-not-exist.jsonl"):
        load_tasks("does-not-exist.jsonl")


def test_seen_tests_are_shown_by_the_prompt(shared_data):
    """Feedback may only come from a test the model was shown: every seen test's call and
    expected value are in the prompt and in the chat message built from it (HumanEval's are
    checked in test_docstring_tests)."""
    mbpp = load_file(shared_data / "mbpp.jsonl")
    builtin = load_tasks("builtin-all")
    for t in mbpp + builtin:
        assert t.seen_tests, t.task_id
        for test in t.seen_tests:
            assert shown_in(test, t.prompt) and shown_in(test, task_message(t)), t.task_id
    for t in mbpp:   # the assert itself, as the file has it
        assert [t.seen_tests[0].source in m for m in (t.prompt, task_message(t))] == [True, True]
    for t in builtin:   # doctest examples, which read back as the same tests
        assert all(f">>> {test.call}\n" in task_message(t) for test in t.seen_tests), t.task_id
        assert docstring_examples(t.prompt, t.entry_point) == t.seen_tests, t.task_id


def test_plain_prompt_shows_seen_tests_as_examples(tmp_path):
    row = orjson.loads(PLAIN)
    row["tests"] = [{"call": "f(1)", "expected": "2"}, "assert abs(f(0)) < 1"]
    row["seen_tests"] = row["tests"]
    ready = {**row, "prompt": 'def f(x):\n    """Double x.\n    >>> f(1)\n    2\n    """\n'}
    del ready["signature"], ready["seen_tests"]
    path = tmp_path / "tasks.jsonl"
    path.write_bytes(orjson.dumps(row) + b"\n" + orjson.dumps({**ready, "task_id": "b"}) + b"\n"
                     + orjson.dumps({**ready, "task_id": "c", "tests": row["tests"][::-1]}))
    built, shown, unshown = load_file(path)
    assert built.prompt == ('def f(x):\n    """\n    Double x.\n\n    For example:\n    >>> f(1)\n'
                            '    2\n    >>> assert abs(f(0)) < 1\n    """\n')
    assert built.seen_tests == (TestCase("assert f(1) == 2", "f(1)", "2"),
                                TestCase("assert abs(f(0)) < 1"))
    assert shown.seen_tests == shown.tests[:1]   # the default, the first test, is in the prompt
    assert unshown.seen_tests == ()              # the first test is not: nothing is seen


def test_specs_join_with_plus_and_select_id_ranges(shared_data):
    path = shared_data / "mbpp.jsonl"
    pool = load_tasks(f"builtin+mbpp-ids:511-974:{path}")
    builtin = load_tasks("builtin")
    assert pool[:len(builtin)] == builtin                      # in the order given
    ids = [int(t.task_id.split("/")[1]) for t in pool[len(builtin):]]
    assert len(ids) == 464 and min(ids) == 511 and max(ids) == 974
    assert load_tasks(f"builtin+mbpp-ids:511-974:{path}", limit=5) == builtin[:5]
    assert load_tasks(f"mbpp-ids:11-510:{path}") == load_tasks(f"mbpp-test:{path}")
    with pytest.raises(ValueError, match="is in both"):
        load_tasks(f"mbpp-ids:11-20:{path}+mbpp-ids:15-30:{path}")
    with pytest.raises(ValueError, match="expected mbpp-ids:LO-HI:PATH"):
        load_tasks(f"mbpp-ids:511:{path}")
    with pytest.raises(ValueError, match="no task has an id in 2000-3000"):
        load_tasks(f"mbpp-ids:2000-3000:{path}")


def test_decontamination_drops_pool_tasks_sharing_a_13_gram(shared_data):
    from engine.records import Task
    from engine.tasks.overlap import decontaminate, find_overlaps, load_pool

    path = shared_data / "mbpp.jsonl"
    evalset = load_tasks(f"mbpp-test:{path}", verify_seen=False)
    # MBPP/602 restates MBPP/217 ("a python function to find the first repeated character in a
    # given string"): a near-copy the check must catch
    pool = load_tasks(f"mbpp-ids:600-610:{path}", verify_seen=False)
    found = {o.train_id: o for o in find_overlaps(pool, evalset)}
    assert found["MBPP/602"].eval_id == "MBPP/217"
    assert "first repeated character" in found["MBPP/602"].ngram
    kept, report = decontaminate(pool, evalset)
    assert "MBPP/602" not in {t.task_id for t in kept}
    assert report["dropped"] == len(found) == len(pool) - len(kept)
    # twelve shared words are not enough; thirteen are
    words = " ".join(f"w{i}" for i in range(13))
    a = Task("a/1", f"def f():\n    '''{words}'''\n", "f", ())
    b = Task("b/1", f"def g():\n    '''{words[:-4]} other'''\n", "g", ())
    assert find_overlaps([a], [b]) == [] and len(find_overlaps([a], [a])) == 1
    # the pool is cut to its limit after the check, so the run still gets `limit` tasks
    cut, rep = load_pool(f"mbpp-ids:600-610:{path}", 5, f"mbpp-test:{path}")
    assert len(cut) == 5 and "MBPP/602" not in {t.task_id for t in cut}
    assert rep["dropped"] == report["dropped"]


def test_hf_datasets_and_parquet_load_with_a_column_mapping(tmp_path):
    """A task set as a `datasets` directory or Parquet file, its columns mapped onto the task
    fields; a mapping to a column the dataset lacks names it and the columns there are."""
    import datasets

    rows = [{"id": f"t/{i}", "question": f"Return x plus {i}.", "fn": "add",
             "sig": "def add(x):", "checks": [f"assert add(1) == {1 + i}", f"assert add(2) == {2 + i}"]}
            for i in range(3)]
    ds = datasets.Dataset.from_list(rows)
    ds.save_to_disk(str(tmp_path / "dir"))
    ds.to_parquet(str(tmp_path / "t.parquet"))
    cols = "task_id=id,instruction=question,entry_point=fn,signature=sig,tests=checks"
    for where in ("dir", "t.parquet"):
        tasks = load_tasks(f"hf:{tmp_path / where}", columns=cols)
        assert [t.task_id for t in tasks] == ["t/0", "t/1", "t/2"]
        assert tasks[2].tests[1].call == "add(2)" and tasks[2].tests[1].expected == "4"
        assert "Return x plus 2." in tasks[2].prompt and tasks[2].source.endswith(":row 2")
    with pytest.raises(TaskFileError, match="no column 'question_text'.*has id, question"):
        load_tasks(f"hf:{tmp_path / 'dir'}", columns=cols.replace("=question", "=question_text"))
    with pytest.raises(ValueError, match="not FIELD=COLUMN"):
        load_tasks(f"hf:{tmp_path / 'dir'}", columns="instruction")
    # an MBPP-format dataset needs no mapping
    mbpp = datasets.Dataset.from_list([{"task_id": 1, "text": "Add one.", "code":
                                        "def inc(x):\n    return x + 1", "test_list":
                                        ["assert inc(1) == 2"]}])
    mbpp.to_parquet(str(tmp_path / "m.parquet"))
    [t] = load_tasks(f"hf:{tmp_path / 'm.parquet'}")
    assert t.entry_point == "inc" and t.reference.startswith("def inc")


def test_prompt_helpers_the_tests_call_are_the_tasks_own(sandbox_pool):
    """HumanEval/38 and 50 test `decode(encode(s)) == s` with the prompt's `encode_*`: a program
    that redefines the helper as the identity (and decodes by identity) must not pass."""
    from engine.prompts import program_code
    from engine.records import Program

    tasks = {t.task_id: t for t in load_tasks("humaneval", verify_seen=False)}
    progs = []
    for tid, enc, dec in (("HumanEval/38", "encode_cyclic", "decode_cyclic"),
                          ("HumanEval/50", "encode_shift", "decode_shift")):
        t = tasks[tid]
        forged = f"def {enc}(s):\n    return s\n\ndef {dec}(s):\n    return s\n"
        progs += [Program(f"{tid}/forged", program_code(t, forged), t.tests, t.setup),
                  Program(f"{tid}/honest", t.reference, t.tests, t.setup)]
    grades = {g.program_id: g for g in sandbox_pool.grade(progs)}
    for tid in ("HumanEval/38", "HumanEval/50"):
        assert grades[f"{tid}/honest"].passed, grades[f"{tid}/honest"]
        assert not grades[f"{tid}/forged"].passed, grades[f"{tid}/forged"]


def test_a_call_expected_pair_reads_the_same_as_an_assert():
    """The assert written for a {call, expected} pair is parenthesised only where the plain
    join would parse differently (a comparison in the call would chain)."""
    from engine.tasks.loaders import _plain_test

    assert _plain_test({"call": "f(1)", "expected": "[2]"}, "w").source == "assert f(1) == [2]"
    for call, expected in (("f(1) < 3", "True"), ("x", "lambda: 1"), ("a, b", "c")):
        source = _plain_test({"call": call, "expected": expected}, "w").source
        assert assert_to_test(source).call is not None   # splits back into the same pair
        assert (assert_to_test(source).call, assert_to_test(source).expected) == (
            ast.unparse(ast.parse(call, mode="eval").body),
            ast.unparse(ast.parse(expected, mode="eval").body))
