"""Reading a test: its statements, each `assert LEFT == RIGHT` split out, and the names it reads
and binds; and which of those names are the program's (see plan.py for what is done with them).

    parse_test("assert f(1) == 2", "f(1)", "2").steps[0].left_src   # 'f(1)'

Runs in the jail: stdlib only.
"""
from __future__ import annotations

import ast
import builtins
import functools
import re
from dataclasses import dataclass
from typing import Any, Collection, Mapping

BUILTIN_NAMES = frozenset(dir(builtins))


@dataclass(frozen=True)
class Facts:
    """What one expression holds, from one walk."""

    loads: frozenset[str]      # names it reads
    stores: frozenset[str]     # names it binds (lambda arguments, comprehension targets...)
    operators: bool            # it has a BinOp, BoolOp, Compare or IfExp somewhere


@dataclass(frozen=True, eq=False)
class Split:
    """`assert LEFT == RIGHT[, MSG]`: judged by comparing encodings."""

    left: ast.expr
    right: ast.expr
    msg: ast.expr | None
    left_src: str              # for feedback, "Input: <left_src> ... Expected: <right_src>",
    right_src: str             # and the text of an operation
    left_facts: Facts
    right_facts: Facts


@dataclass(frozen=True, eq=False)
class Exec:
    """Any other statement: executed by the worker."""

    stmt: ast.stmt
    src: str
    facts: Facts


@dataclass(frozen=True, eq=False)
class Parsed:
    """What a test says, independent of the program and the setup (cached per test)."""

    steps: tuple[Split | Exec, ...]
    loads: frozenset[str]      # every name the test reads
    stores: frozenset[str]     # every name the test binds (assignments, lambda arguments, ...)
    error: str = ""            # the test is not valid Python


# --------------------------------------------------------------------------------- parsing

@functools.lru_cache(maxsize=8192)
def parse_test(source: str, call: str | None, expected: str | None) -> Parsed:
    try:
        if call is not None and expected is not None:   # the caller's split: judge the pair
            left, right = _pair(call, expected)
            steps: tuple = (Split(left, right, None, call, expected, _scan(left), _scan(right)),)
        else:
            text = _Text(source)
            steps = tuple(_step(stmt, text) for stmt in ast.parse(source).body)
    except SyntaxError as exc:
        return Parsed((), frozenset(), frozenset(), f"SyntaxError: {exc.msg} (in the test)")
    loads, stores = set(), set()
    for step in steps:
        facts = (step.left_facts, step.right_facts) if isinstance(step, Split) else (step.facts,)
        if isinstance(step, Split) and step.msg is not None:
            facts += (_scan(step.msg),)
        for fact in facts:
            loads |= fact.loads
            stores |= fact.stores
    return Parsed(steps, frozenset(loads), frozenset(stores))


def _pair(call: str, expected: str) -> tuple[ast.expr, ast.expr]:
    """Both expressions from one parse (a parse costs more than the rest of planning)."""
    try:
        both = ast.parse(f"(\n{call}\n),(\n{expected}\n)", mode="eval").body
    except SyntaxError:
        both = None
    if isinstance(both, ast.Tuple) and len(both.elts) == 2:
        return both.elts[0], both.elts[1]
    return ast.parse(call, mode="eval").body, ast.parse(expected, mode="eval").body   # the error


def _step(stmt: ast.stmt, text: _Text) -> Split | Exec:
    compare = _compare(stmt)
    if compare is None:
        return Exec(stmt, text.of(stmt), _scan(stmt))
    left, right = compare.left, compare.comparators[0]
    return Split(left, right, stmt.msg, text.of(left), text.of(right), _scan(left), _scan(right))


def _compare(stmt: ast.stmt) -> ast.Compare | None:
    test = getattr(stmt, "test", None)
    if (isinstance(stmt, ast.Assert) and isinstance(test, ast.Compare) and len(test.ops) == 1
            and isinstance(test.ops[0], ast.Eq)):
        return test
    return None


class _Text:
    """The source text of a node (ast.get_source_segment, without re-splitting per node)."""

    def __init__(self, source: str) -> None:
        self.lines = [line.encode() for line in source.splitlines(keepends=True)]

    def of(self, node: ast.AST) -> str:
        first, last = node.lineno - 1, node.end_lineno - 1
        if first == last:
            return self.lines[first][node.col_offset:node.end_col_offset].decode()
        parts = [self.lines[first][node.col_offset:], *self.lines[first + 1:last],
                 self.lines[last][:node.end_col_offset]]
        return b"".join(parts).decode()


_OPERATORS = (ast.BinOp, ast.BoolOp, ast.Compare, ast.IfExp)


_BINDERS = (ast.arg, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import,
            ast.ImportFrom, ast.ExceptHandler)


def _scan(node: ast.AST) -> Facts:
    loads, stores = set(), set()
    operators = False
    for n in ast.walk(node):
        kind = type(n)
        if kind is ast.Name:
            (loads if type(n.ctx) is ast.Load else stores).add(n.id)
        elif kind in _OPERATORS:
            operators = True
        elif kind in _BINDERS:
            _bound(n, stores)
    return Facts(frozenset(loads), frozenset(stores), operators)


def _bound(n: ast.AST, stores: set[str]) -> None:
    if isinstance(n, ast.arg):
        stores.add(n.arg)
    elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        stores.add(n.name)
    elif isinstance(n, (ast.Import, ast.ImportFrom)):
        stores.update((a.asname or a.name).split(".")[0] for a in n.names)
    elif isinstance(n, ast.ExceptHandler) and n.name:
        stores.add(n.name)


def names_in(node: ast.AST) -> tuple[set[str], set[str]]:
    """(names read, names bound) anywhere in `node`."""
    loads, stores = set(), set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            (loads if isinstance(n.ctx, ast.Load) else stores).add(n.id)
        else:
            _bound(n, stores)
    return loads, stores


def loads_of(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}



# ------------------------------------------------------------------------- program names

def names_for(parsed: Parsed, trusted: Collection[str], code: str, modules: Mapping[str, Any]
              ) -> tuple[frozenset[str], frozenset[str], tuple[str, ...]]:
    """(remote, local, imported) for one test of one program: `trusted` are the names the
    worker binds (setup, tests); `imported`, program names that are stdlib modules the
    program imports (`sys`), which the worker binds to its own copy instead."""
    remote = set(parsed.loads - BUILTIN_NAMES).difference(trusted)
    imported = tuple(sorted(n for n in remote if n in modules and imports(code, n)))
    remote.difference_update(imported)
    bound = set(trusted).union(imported)
    if not remote:   # no program name: a builtin the program redefines is one (`def sum`)
        remote = {n for n in parsed.loads & BUILTIN_NAMES if n not in bound and defines(code, n)}
    return frozenset(remote), frozenset(parsed.loads & bound), imported


def imports(code: str, name: str) -> bool:
    """Whether the program's text has an import line naming `name`."""
    return _importer(name).search(code) is not None


@functools.lru_cache(maxsize=1024)
def _importer(name: str) -> re.Pattern:
    return re.compile(rf"^[ \t]*(?:import|from)[ \t][^\n]*\b{re.escape(name)}\b", re.M)


def defines(code: str, name: str) -> bool:
    """Whether the program's text binds `name` at the start of a line (a def, class or `=`)."""
    return _definer(name).search(code) is not None


@functools.lru_cache(maxsize=1024)
def _definer(name: str) -> re.Pattern:
    word = re.escape(name)
    return re.compile(rf"^[ \t]*(?:(?:async[ \t]+)?def|class)[ \t]+{word}\b"
                      rf"|^[ \t]*{word}[ \t]*(?::[^=\n]*)?=(?!=)", re.M)
