"""Seen tests from a prompt's docstring examples, and the other way round: examples for a docstring.

Multi-step inference may show a model feedback only from tests its prompt shows. For HumanEval
those are the docstring's examples, written in many styles; each one found becomes
`assert CALL == EXPECTED` with call/expected split out (so the sandbox compares them strictly):

| style            | as HumanEval writes it                                                      |
|------------------|-----------------------------------------------------------------------------|
| doctest          | `>>> f(x)` then the output line(s) (none: None); `>>> f(x) == y`            |
| call, sep, value | `f(x) SEP y`, SEP one of `==` `➞` `=>` `==>` `->` `=` `# =>` `# returns`    |
|                  | `returns` `should return`; `f(x) -> 19 - 5 - 6 = 8` reads as 8              |
| "should be"      | `For lst = [1, 2] the output should be 3`, `For s = "a", c = "b", the ...`  |
| Input / Output   | `Input: arr = [1], k = 1` ... `Output: [1]`; `Input: [4,2,3]` `Output: ...` |
| walk-through     | `arr = [2, 1]`, steps, `return ["Two", "One"]`                              |

Arguments and expected values must be Python literals (bare words such as `is_happy(abc)` are
read as strings unless they name a parameter, which marks a definition like `fib4(n) -> ...`);
the call must be to the entry point by name, or to the one other name a docstring uses throughout
(a typo: HumanEval/81, /149). Docstrings have typos, so `verify_seen_tests` grades
each task's reference solution against its examples in the sandbox and keeps only those it passes.

    python -m engine.tasks.docstring_tests humaneval   # how many tasks have seen tests, and which not
"""
from __future__ import annotations

import ast
import builtins
import re
from dataclasses import replace
from typing import Iterator, Sequence

from engine.records import Task, TestCase

_DOCTEST = re.compile(r"^[ \t]*>>>[ \t]?(.*)$", re.M)
# Between a call and its value. `\s` in "should return" lets the phrase wrap onto the next line.
_SEPARATOR = re.compile(r"[ \t]*(?:\#[ \t]*(?:=>|returns?)|==>|==|=>|->|➞|=(?!=)"
                        r"|(?:should\s+)?returns?\b)[ \t]*", re.I)
_ARITHMETIC = re.compile(r"[\d\s+\-*/().]+?=(?!=)\s*")   # "19 - 5 - 6 = " before the value
_FOR_SHOULD_BE = re.compile(r"\bFor\s+(?P<args>[^\n]*?)\bthe\s+(?:output|result)\s+should\s+be"
                            r"[ \t]+", re.I)
_INPUT_OUTPUT = re.compile(r"\bInput:\s*(?P<args>.*?)\s*\bOutput:[ \t]*", re.S)
_ASSIGNMENT = re.compile(r"\s*(\w+)\s*(?:=(?!=)|:)\s*")
_ASSIGNMENT_LINE = re.compile(r"^[ \t]*\w+[ \t]*=(?!=).*$", re.M)
_RETURN = re.compile(r"^[ \t]*return(?:[ \t]*=)?[ \t]+", re.M)
_NUMBER_OR_WORD = re.compile(r"[-+]?(?:\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|\.\d+)|\w+")
_WORDS = {"true": "True", "false": "False", "none": "None"}
_CLOSE = {"(": ")", "[": "]", "{": "}"}


# ------------------------------------------------------------------------------ scanning values

def _bracketed_end(text: str, start: int) -> int | None:
    """Index just past the bracket or quote opened at `start`, or None if it never closes."""
    stack, i = [], start
    while i < len(text):
        c = text[i]
        if c in "'\"":
            j = i + 1
            while j < len(text) and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            if j >= len(text):
                return None
            i = j
        elif c in _CLOSE:
            stack.append(_CLOSE[c])
        elif c in ")]}":
            if not stack or stack.pop() != c:
                return None
        i += 1
        if not stack:
            return i
    return None


def _value(text: str) -> tuple[str, int] | None:
    """The Python literal at the start of `text` (as source) and where it ends, or None.

    A value is one bracketed or quoted chunk (which may span lines), a number, or a word
    (True / False / None, also lower-case); a trailing full stop is not part of a number."""
    if not text or text[0] in " \t\n":
        return None
    if text[0] in "([{'\"":
        end = _bracketed_end(text, 0)
    else:
        m = _NUMBER_OR_WORD.match(text)
        end = m.end() if m else None
    if end is None:
        return None
    src = text[:end]
    src = _WORDS.get(src, src)
    node = _parse_expr(src)
    return (ast.unparse(node), end) if node is not None and _is_literal(node) else None


def _expected(text: str) -> str | None:
    """The value after a separator; "19 - 5 - 6 = 8" is worked arithmetic ending in the value."""
    line = text.split("\n", 1)[0]
    m = _ARITHMETIC.match(line)
    while m:
        text = text[m.end():]
        m = _ARITHMETIC.match(text.split("\n", 1)[0])
    found = _value(text)
    return found[0] if found else None


def _call_of(node: ast.expr, entry_point: str, params: Sequence[str]) -> str | None:
    """`node` as a call of the entry point on literal arguments (bare words quoted), or None."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == entry_point):
        return None
    args = []
    for arg in [*node.args, *(k.value for k in node.keywords)]:
        if isinstance(arg, ast.Name) and arg.id not in params:
            args.append(ast.Constant(arg.id))   # is_happy(abcd): the docstring means "abcd"
        elif _is_literal(arg):
            args.append(arg)
        else:
            return None
    pos, kw = args[:len(node.args)], args[len(node.args):]
    keywords = [ast.keyword(k.arg, v) for k, v in zip(node.keywords, kw)]
    return ast.unparse(ast.Call(ast.Name(entry_point), pos, keywords))


def _is_literal(node: ast.expr) -> bool:
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


def _parse_expr(src: str) -> ast.expr | None:
    try:
        return ast.parse(src.strip(), mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None


def _calls_entry_point(node: ast.expr, entry_point: str) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
               and n.func.id == entry_point for n in ast.walk(node))


# ------------------------------------------------------------------------------ example finders

Found = Iterator[tuple[int, str, str]]   # (position in the docstring, call, expected)


def _doctests(doc: str, entry_point: str) -> Found:
    """`>>> expr` and the output line after it (a bracket left open continues onto the next
    lines); no output line (a blank line, the next `>>>` or the closing quotes) means None.
    `>>> f(x) == y` without output, or with `True`, is the comparison itself."""
    for m in _DOCTEST.finditer(doc):
        node = _parse_expr(m.group(1))
        if node is None or not _calls_entry_point(node, entry_point):
            continue
        rest = doc[m.end() + 1:]
        output = rest.lstrip(" \t")
        no_output = (not output or output[0] == "\n" or output.startswith((">>>", '"""', "'''")))
        if (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq)
                and (no_output or output.startswith("True"))):
            call, wanted = node.left, node.comparators[0]
            if _calls_entry_point(call, entry_point) and _is_literal(wanted):
                yield m.start(), ast.unparse(call), ast.unparse(wanted)
            continue
        if no_output:   # doctest prints nothing for None
            call = _call_of(node, entry_point, ())
            if call is not None:
                yield m.start(), call, "None"
            continue
        found = _value(output)
        end_of_line = output[found[1]:].split("\n", 1)[0] if found else "x"
        if found and not end_of_line.strip():   # the output is the whole line (or lines)
            yield m.start(), ast.unparse(node), found[0]


def _inline(doc: str, entry_point: str, params: Sequence[str]) -> Found:
    """`f(x) SEP y` anywhere in the text, the call possibly spanning lines (HumanEval/87)."""
    for m in re.finditer(rf"(?<![\w.]){re.escape(entry_point)}[ \t]*\(", doc):
        end = _bracketed_end(doc, m.end() - 1)
        if end is None:
            continue
        node = _parse_expr(doc[m.start():end])
        call = _call_of(node, entry_point, params) if node is not None else None
        sep = _SEPARATOR.match(doc, end)
        if call is None or sep is None:
            continue
        expected = _expected(doc[sep.end():])
        if expected is not None:
            yield m.start(), call, expected


def _assigned_call(args: str, entry_point: str, params: Sequence[str]) -> str | None:
    """`name = value, name = value` (or `name : value` lines) as a call of the entry point; the
    names order the arguments where they are the parameters' names, else they go in order. A
    lone value is the argument of a one-parameter function. Text after the last value is ignored
    ("For N = 1000, the sum of digits will be 1")."""
    names, values, pos = [], [], 0
    while (m := _ASSIGNMENT.match(args, pos)) and (found := _value(args[m.end():])):
        names.append(m.group(1))
        values.append(found[0])
        pos = m.end() + found[1]
        sep = re.match(r"\s*(?:,|\band\b)?", args[pos:])
        pos += sep.end()
    if not values:
        found = _value(args.strip())
        if not (found and len(params) == 1 and not args.strip()[found[1]:].strip()):
            return None
        names, values = list(params), [found[0]]
    if len(values) != len(params):
        return None
    if set(names) == set(params):
        values = [values[names.index(p)] for p in params]
    return f"{entry_point}({', '.join(values)})"


def _described(doc: str, entry_point: str, params: Sequence[str]) -> Found:
    """"For x = 1 the output should be 2" and "Input: x = 1 ... Output: 2" examples."""
    for pattern in (_FOR_SHOULD_BE, _INPUT_OUTPUT):
        for m in pattern.finditer(doc):
            call = _assigned_call(m.group("args"), entry_point, params)
            expected = _expected(doc[m.end():]) if call else None
            if expected is not None:
                yield m.start(), call, expected


def _walkthroughs(doc: str, entry_point: str, params: Sequence[str]) -> Found:
    """`arr = [2, 1]`, steps, then `return ["Two", "One"]` (HumanEval/105): the last line that
    assigns parameters before each `return` line, and after the one before it."""
    start = 0
    for m in _RETURN.finditer(doc):
        lines = [a for a in _ASSIGNMENT_LINE.finditer(doc, start, m.start())
                 if _ASSIGNMENT.match(a.group(0)).group(1) in params]
        call = _assigned_call(lines[-1].group(0), entry_point, params) if lines else None
        expected = _expected(doc[m.end():]) if call else None
        if expected is not None:
            yield lines[-1].start(), call, expected
        start = m.end()


# ----------------------------------------------------------------------------------- public API

def _signature(prompt: str, entry_point: str) -> tuple[str, tuple[str, ...]]:
    """The text after `def entry_point(` (its docstring and body) and the parameter names."""
    m = re.search(rf"^[ \t]*(?:async[ \t]+)?def[ \t]+{re.escape(entry_point)}[ \t]*\(", prompt,
                  re.M)
    if m is None:
        return prompt, ()
    params: tuple[str, ...] = ()
    try:
        for node in ast.walk(ast.parse(prompt)):
            if (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                    and node.name == entry_point):
                a = node.args
                params = tuple(x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs])
                break
    except SyntaxError:
        pass
    return prompt[m.end():], params


def _alias(doc: str, prompt: str, entry_point: str) -> str | None:
    """The one other name a docstring calls its function by in examples (HumanEval/81 writes
    grade_equation, /149 list_sort), or None: a name called at the start of a line that is not
    defined in the prompt and is not a builtin."""
    called = set(re.findall(r"^[ \t]*(?:assert[ \t]+|for[ \t]+|\*[ \t]*)?(\w+)\(", doc, re.M))
    defined = set(re.findall(r"^[ \t]*(?:async[ \t]+)?(?:def|class)[ \t]+(\w+)", prompt, re.M))
    names = called - defined - set(dir(builtins)) - {entry_point}
    return names.pop() if len(names) == 1 else None


def _examples(doc: str, name: str, params: Sequence[str]) -> list[tuple[int, str, str]]:
    return sorted([*_doctests(doc, name), *_inline(doc, name, params),
                   *_described(doc, name, params), *_walkthroughs(doc, name, params)])


def docstring_examples(prompt: str, entry_point: str) -> tuple[TestCase, ...]:
    """Every example of `entry_point`'s docstring in `prompt` (styles in the module docstring), in
    the order they appear, each once. A docstring whose examples all call the function by one
    other name (a typo) has them renamed. Not checked against any solution: see
    verify_seen_tests."""
    doc, params = _signature(prompt, entry_point)
    found = _examples(doc, entry_point, params)
    if not found and (alias := _alias(doc, prompt, entry_point)):
        found = [(pos, entry_point + call[len(alias):], expected)
                 for pos, call, expected in _examples(doc, alias, params)]
    out, seen = [], set()
    for _, call, expected in found:
        if (call, expected) not in seen:
            seen.add((call, expected))
            out.append(TestCase(f"assert {call} == {expected}", call, expected))
    return tuple(out)


def format_examples(tests: Sequence[TestCase], indent: str = "    ") -> str:
    """Doctest lines showing `tests` in a docstring: `>>> call` and the expected value, or
    `>>> assert ...` for a test without call/expected. docstring_examples reads them back."""
    lines = []
    for t in tests:
        if t.call is not None and t.expected is not None:
            lines += [f"{indent}>>> {t.call}", f"{indent}{t.expected}"]
        else:
            lines.append(f"{indent}>>> {t.source}")
    return "\n".join(lines)


def verify_seen_tests(tasks: Sequence[Task], sandbox=None) -> list[Task]:
    """The tasks with each seen test their reference solution fails dropped (a typo in the
    docstring), graded in the sandbox as any attempt would be. Tasks without a reference keep
    their seen tests. `sandbox`: a SandboxPool, or None to start a small one for this."""
    todo = [t for t in tasks if t.seen_tests and t.reference]
    if not todo:
        return list(tasks)
    if sandbox is None:
        import os

        from sandbox.config import SandboxConfig
        from sandbox.pool import SandboxPool

        with SandboxPool(SandboxConfig(workers=min(4, os.cpu_count() or 1))) as pool:
            return verify_seen_tests(tasks, pool)
    from engine.prompts import program_code
    from engine.records import Program

    grades = sandbox.grade([Program(f"seen:{t.task_id}", program_code(t, t.reference),
                                    t.seen_tests, t.setup, sandbox.config.timeout_s)
                            for t in todo])
    kept = {t.task_id: tuple(c for c, ok in zip(t.seen_tests, g.test_passed) if ok)
            for t, g in zip(todo, grades)}
    return [replace(t, seen_tests=kept[t.task_id]) if t.task_id in kept else t for t in tasks]


def main(argv: list[str] | None = None) -> None:
    import argparse

    from engine.tasks import load_tasks

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("tasks", help="a task spec or file, e.g. humaneval")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every task's seen tests")
    args = ap.parse_args(argv)
    raw = load_tasks(args.tasks, verify_seen=False)
    kept = {t.task_id: t for t in load_tasks(args.tasks)}
    for t in raw:
        ok = kept[t.task_id].seen_tests
        if args.verbose or not ok:
            print(f"{t.task_id}: {len(ok)} seen ({len(t.seen_tests) - len(ok)} dropped)")
        if args.verbose:
            for c in t.seen_tests:
                print(f"    {'ok  ' if c in ok else 'DROP'} {c.source}")
    print(f"{sum(bool(t.seen_tests) for t in kept.values())} of {len(raw)} tasks have seen tests "
          f"({sum(len(t.seen_tests) for t in kept.values())} tests; "
          f"{sum(bool(t.seen_tests) for t in raw)} tasks before checking the reference)")


if __name__ == "__main__":
    main()
