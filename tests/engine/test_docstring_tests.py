"""Seen tests from docstring examples: every style HumanEval writes them in, the check against the
reference solution, and the counts on the real HumanEval files."""
from __future__ import annotations

import ast
import re

import pytest

from engine.prompts import program_code
from engine.records import Program, Task, TestCase
from engine.tasks import load_file, load_tasks
from engine.tasks.docstring_tests import docstring_examples, format_examples, verify_seen_tests


def examples(doc: str, signature: str = "def f(x):") -> list[tuple[str, str]]:
    prompt = f'{signature}\n    """{doc}\n    """\n'
    return [(t.call, t.expected) for t in docstring_examples(prompt, re.search(r"def (\w+)",
                                                                               signature)[1])]


@pytest.mark.parametrize("doc, found", [
    # doctest: output line, no output (None), a comparison, a wrapped call with a comment
    ("\n    >>> f(1)\n    2\n    >>> f([])\n    >>> f('a') == 'b'\n",
     [("f(1)", "2"), ("f([])", "None"), ("f('a')", "'b'")]),
    ("\n    >>> round(f([1, 2]), 2) # f(x) = 1 + 2x\n    -0.5\n",
     [("round(f([1, 2]), 2)", "-0.5")]),
    ("\n    >>> f(['3', '11'])\n    ['a 1',\n     'b 8']\n",
     [("f(['3', '11'])", "['a 1', 'b 8']")]),
    ("\n    >>> f(1)\n    Explanation: not a value\n", []),
    # call, separator, value
    ("\n    f(1) == 2\n    f(2) ➞ [1]\n    f(3) => true\n    f(4) ==> 'x'\n    f(5) -> (1, 2)\n"
     "    f(6) = -1\n    f(7)==>False\n",
     [("f(1)", "2"), ("f(2)", "[1]"), ("f(3)", "True"), ("f(4)", "'x'"), ("f(5)", "(1, 2)"),
      ("f(6)", "-1"), ("f(7)", "False")]),
    ('\n    f(15)   # returns "db1111db"\n    f("a.txt") # => \'Yes\'\n'
     "    f('Hi') returns 'Hi'\n    f(148) should return 16.\n",
     [("f(15)", "'db1111db'"), ("f('a.txt')", "'Yes'"), ("f('Hi')", "'Hi'"), ("f(148)", "16")]),
    ("\n    For example f('14.5') should\n    return 15 and f('-1') should return -1.\n",
     [("f('14.5')", "15"), ("f('-1')", "-1")]),
    ("\n    f('5 apples', 19) ->19 - 5 - 6 = 8\n    f([1, 3]) == 1 + 9 = 10\n",
     [("f('5 apples', 19)", "8"), ("f([1, 3])", "10")]),
    ("\n    * f([]) => []\n    for f(7, 34) == 34\n    assert f({'a': 1}) == {}\n",
     [("f([])", "[]"), ("f(7, 34)", "34"), ("f({'a': 1})", "{}")]),
    ("\n    f([\n      [1, 2],\n      [3]\n    ], 1) == [(0, 0)]\n",
     [("f([[1, 2], [3]], 1)", "[(0, 0)]")]),
    # bare words are strings, unless they are the parameter (a definition, not an example)
    ("\n    f(abc) => True\n    f(x) -> f(x - 1) + 1\n    f(x) = 1 + x / 2\n",
     [("f('abc')", "True")]),
    # "For ... the output should be"
    ('\n    For x = "AB" the output should be 1.\n    For x = [1,2] the result should be 3\n',
     [("f('AB')", "1"), ("f([1, 2])", "3")]),
    ('\n    For N = 1000, the sum of digits will be 1 the output should be "1".\n',
     [("f(1000)", "'1'")]),
    # Input: / Output:
    ("\n    Example 1:\n        Input: [4,2,3]\n        Output: [2, 1]\n        Explanation: ...\n",
     [("f([4, 2, 3])", "[2, 1]")]),
    ("\n        Input: 3\n        Output: (1, 2)\n", [("f(3)", "(1, 2)")]),
    # walk-through: the parameter's value, steps, then `return`
    ("\n      x = [2, 1]\n            -> sort x -> [1, 2]\n      return [1, 2]\n      x = []\n"
     "      return = []\n", [("f([2, 1])", "[1, 2]"), ("f([])", "[]")]),
    # not examples: prose about the function, values that are not literals
    ("\n    Write a function f() that returns 2.\n    f(1) ➞ something\n    f(2) [1, 2]\n", []),
], ids=[
    "doctest", "doctest-wrapped-call", "doctest-multiline-output", "doctest-not-a-value",
    "separators", "comment-returns-should-return", "should-return-wrapped", "worked-arithmetic",
    "line-prefixes", "multiline-call", "bare-words-and-definitions", "for-output-should-be",
    "for-with-prose", "input-output", "input-output-scalar", "walk-through", "not-examples"])
def test_each_docstring_style(doc, found):
    assert examples(doc) == found


@pytest.mark.parametrize("doc, signature, found", [
    ("\n    For s = 'abcde', c = 'ae', the result should be ('bcd',False)\n", "def f(s, c):",
     [("f('abcde', 'ae')", "('bcd', False)")]),
    ("\n    For c = 'ae', s = 'abcde' the result should be 1\n", "def f(s, c):",
     [("f('abcde', 'ae')", "1")]),
    ("\n        Input: arr = [-3, -4, 5], k = 3\n        Output: [-4, -3, 5]\n", "def f(arr, k):",
     [("f([-3, -4, 5], 3)", "[-4, -3, 5]")]),
    # names unlike the parameters' go in order
    ("\n        Input: \n            grid : [[0,1], [1,1]]\n            bucket_capacity : 1\n"
     "        Output: 6\n", "def f(grid, capacity):", [("f([[0, 1], [1, 1]], 1)", "6")]),
    ("\n        Input: arr = [1]\n        Output: [1]\n", "def f(arr, k):", []),  # k missing
    # the examples call the function by another name (a typo the docstring makes throughout)
    ("\n    assert grade([4.0, 3]) => ['A+', 'B']\n", "def f(x):",
     [("f([4.0, 3])", "['A+', 'B']")]),
], ids=[
    "names-in-order", "names-reordered", "input-assignments", "names-unlike-params",
    "argument-missing", "other-name"])
def test_arguments_by_name_and_position(doc, signature, found):
    assert examples(doc, signature) == found


def test_only_the_entry_points_docstring_counts():
    prompt = ('def helper(s):\n    """\n    >>> f(1)\n    5\n    """\n\n'
              'def f(x):\n    """Twice x.\n    >>> f(1)\n    2\n    """\n')
    assert [(t.source, t.call, t.expected) for t in docstring_examples(prompt, "f")] == [
        ("assert f(1) == 2", "f(1)", "2")]
    assert docstring_examples('def f(x):\n    """Twice x.\n    ord(1) = 0\n    """\n', "f") == ()


def test_format_examples_reads_back():
    tests = (TestCase("assert g('a b', 2) == ['a', 'b']", "g('a b', 2)", "['a', 'b']"),
             TestCase("assert g('', 1) == []", "g('', 1)", "[]"))
    prompt = f'def g(s, n):\n    """Split.\n\n    For example:\n{format_examples(tests)}\n    """\n'
    assert ">>> g('a b', 2)\n    ['a', 'b']\n" in prompt
    assert docstring_examples(prompt, "g") == tests


def test_verify_drops_examples_the_reference_fails(sandbox_pool):
    ok, typo = (TestCase(f"assert f({x}) == {y}", f"f({x})", str(y)) for x, y in ((1, 2), (2, 5)))
    task = Task("t", 'def f(x):\n    """Twice x."""\n', "f", (ok,), seen_tests=(ok, typo),
                reference="def f(x):\n    return 2 * x\n")
    no_ref = Task("u", task.prompt, "f", (ok,), seen_tests=(typo,))
    assert [t.seen_tests for t in verify_seen_tests([task, no_ref], sandbox_pool)] == [
        (ok,), (typo,)]


# ------------------------------------------------------------------------- the real HumanEval files

# No example in the docstring at all (38, 50: decode_* of an encoder; 41, 83), an example only
# described in words (160: "operator['+', '*', '-'] array = [2, 3, 4, 5] => result = 9"), and
# three examples that contradict the canonical solution and the hidden tests (116).
WITHOUT_SEEN = {38, 41, 50, 83, 116, 160}
# Docstring examples the canonical solution fails: median(...) == 15.0 (47), all three of 116,
# the Tribonacci definition lines tri(1) = 3 etc. (130), ("Venus") for a tuple (148) and
# ""aaaaaaa" (158).
TYPOS = {47, 116, 130, 148, 158}


@pytest.fixture(scope="module")
def humaneval() -> tuple[list[Task], list[Task]]:
    """The package's file: tasks as parsed, and with the seen tests checked on the reference."""
    return load_tasks("humaneval", verify_seen=False), load_tasks("humaneval")


def _number(task: Task) -> int:
    return int(task.task_id.split("/")[1])


def test_humaneval_seen_test_counts(humaneval, shared_data):
    shared = load_file(shared_data / "humaneval.jsonl")
    for tasks in (humaneval[1], shared):
        assert len(tasks) == 164
        assert {_number(t) for t in tasks if not t.seen_tests} == WITHOUT_SEEN
    assert [t.seen_tests for t in shared] == [t.seen_tests for t in humaneval[1]]


def test_every_doctest_call_is_parsed(humaneval):
    raw = humaneval[0]
    for t in raw:
        doc = t.prompt[t.prompt.index(f"def {t.entry_point}("):]
        shown = len(re.findall(rf"^\s*>>> .*\b{t.entry_point}\(.*\n\s*[^\s>]", doc, re.M))
        assert len(t.seen_tests) >= shown, t.task_id


def test_raw_examples_fail_the_reference_only_where_the_docstring_is_wrong(humaneval,
                                                                             sandbox_pool):
    raw, checked = humaneval
    grades = sandbox_pool.grade([Program(t.task_id, program_code(t, t.reference), t.seen_tests,
                                         t.setup) for t in raw if t.seen_tests])
    assert {_number(t) for t, g in zip([t for t in raw if t.seen_tests], grades)
            if not g.passed} == TYPOS
    kept = [t for t in checked if t.seen_tests]
    grades = sandbox_pool.grade([Program(t.task_id, program_code(t, t.reference), t.seen_tests,
                                         t.setup) for t in kept])
    assert all(g.passed for g in grades), [g.feedback for g in grades if not g.passed][:3]


def _squeezed(src: str) -> str:
    return re.sub(r"[\s'\"]", "", src).lower()


def test_humaneval_seen_tests_are_shown_by_the_prompt(humaneval):
    """Each argument and the expected value of every seen test occur in the docstring (quotes,
    spaces and case aside: `6.00` reads as 6.0, `true` as True)."""
    for t in humaneval[1]:
        doc = _squeezed(t.prompt[t.prompt.index(f"def {t.entry_point}("):])
        for test in t.seen_tests:
            call = ast.parse(test.call, mode="eval").body
            while not (isinstance(call, ast.Call) and call.func.id == t.entry_point):
                call = call.args[0]   # round(find_zero([1, 2]), 2)
            for part in [*call.args, ast.parse(test.expected, mode="eval").body]:
                assert _squeezed(ast.unparse(part)) in doc, (t.task_id, test.source)
