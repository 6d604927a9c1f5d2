"""Cutting a test into the inputs the program computes and the judgement the worker keeps.

A test is statements (usually one `assert`). Names the test uses that neither the task's setup,
the builtins nor the test itself define are *program names* (the entry point, a class the
program defines); every expression that starts from one, with its whole chain of calls,
attributes and subscripts (`f(x)`, `Stack().push(1).top()`, `candidate`), is an *operation*:
its source, as `lambda <bindings>: (<expression>)`, goes to the child, which evaluates it in the
program's namespace and sends back the strictly encoded value (harness.py). Everything else runs
in the worker, on the decoded values (judge.py). Shapes:

    assert CALL == EXPECTED   (also a TestCase's call/expected): EXPECTED is evaluated in the
        worker; CALL goes to the child as one operation (a test's input, with its lambdas and
        method chains, runs as written); the worker compares the two encodings (values.equal).
    anything else (`assert abs(f(x) - y) < 1e-6`, `assert not f(x)`, `check(candidate)`): the
        worker executes the statement, each program chain replaced by its operation's result.
    A test's operations are sent ahead of it when they are fixed (`Plan.ahead`); they then
    run even if the worker's part of that test fails before it needs their answers.

What the worker cannot judge alone is *inside*, counted per program: an EXPECTED that itself
uses program names (the program computes both sides); a CALL that contains a comparison
(`Ratio(1, 3) < Ratio(1, 2)`), whose value is then the program's own `__eq__`/`__lt__`, as
class-protocol tests inherently are; and a CALL whose operators mix a program value with test
data (`Vec(1) * 2`, or `abs(f(x) - y)`, where the child would see y).

Runs in the jail: stdlib and orjson only.
"""
from __future__ import annotations

import ast
import builtins
import functools
import re
import sys
from dataclasses import dataclass
from types import CodeType
from typing import Any, Collection, Iterable, Mapping

from sandbox.values import encode

BUILTIN_NAMES = frozenset(dir(builtins))
SHIP = "__persd_ship__"   # the worker's function, in the test namespace, that runs an operation


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


@dataclass(frozen=True)
class Op:
    """One operation: a lambda's source for the child and the test names it takes."""

    source: str
    bindings: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class Side:
    """How one side of a Split is computed: one whole operation, worker code (which may make
    operations), or a literal encoded once."""

    op: Op | None = None
    code: CodeType | None = None
    encoded: list | None = None


@dataclass(frozen=True, eq=False)
class SplitPlan:
    left: Side
    right: Side
    msg: CodeType | None
    left_src: str
    right_src: str


@dataclass(frozen=True, eq=False)
class ExecPlan:
    code: CodeType
    src: str


@dataclass(frozen=True, eq=False)
class Plan:
    steps: tuple[SplitPlan | ExecPlan, ...]
    ahead: tuple[str, ...] | None   # every op the test makes, in order, when they are fixed
                                    # (no test value in them, no branch or loop around them):
                                    # they can be sent before the test runs; None: not so
    inside: bool               # the verdict rests on a comparison the program makes
    calls_program: bool        # some part of the test runs in the child


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


def _names_in(node: ast.AST) -> tuple[set[str], set[str]]:
    """(names read, names bound) anywhere in `node`."""
    loads, stores = set(), set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            (loads if isinstance(n.ctx, ast.Load) else stores).add(n.id)
        elif isinstance(n, ast.arg):
            stores.add(n.arg)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            stores.add(n.name)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            stores.update((a.asname or a.name).split(".")[0] for a in n.names)
        elif isinstance(n, ast.ExceptHandler) and n.name:
            stores.add(n.name)
    return loads, stores


def _loads(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


# --------------------------------------------------------------------------------- planning

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


def shapes(setup: str, code: str, tests: Iterable[Any]) -> list[str]:
    """How each test would be judged, without running anything (for counting, see
    benchmarks/bench_sandbox.py): "outside", "inside", "worker" (no program call at all) or
    "invalid". The setup's names are read statically; the worker uses the executed setup's."""
    trusted = set(_names_in(ast.parse(setup))[1]) if setup.strip() else set()
    parsed = [parse_test(t.source, t.call, t.expected) for t in tests]
    trusted.update(*(p.stores for p in parsed))
    labels = []
    for facts in parsed:
        if facts.error:
            labels.append("invalid")
            continue
        remote, local, _ = names_for(facts, trusted, code, sys.modules)
        plan = plan_test(facts, remote, local)
        labels.append("inside" if plan.inside else "outside" if plan.calls_program else "worker")
    return labels


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


@functools.lru_cache(maxsize=8192)
def plan_test(parsed: Parsed, remote: frozenset[str], local: frozenset[str]) -> Plan:
    """`remote`: the test's program names (and builtins the program redefines, for a test with
    no other program name); `local`: the names the test reads that the worker binds."""
    steps: list[SplitPlan | ExecPlan] = []
    ahead: list[str] | None = []
    inside = False
    for step in parsed.steps:
        if isinstance(step, Exec):
            stmt = step.stmt
            if step.facts.loads & remote:
                stmt = _Rewrite(remote, local).visit(ast.parse(step.src).body[0])
            module = ast.fix_missing_locations(ast.Module([stmt], []))
            steps.append(ExecPlan(compile(module, "<test>", "exec"), step.src))
            ahead = _extend(ahead, _fixed_chains(step.stmt, remote, local))
            continue
        left, right, left_src, right_src = step.left, step.right, step.left_src, step.right_src
        left_facts, right_facts = step.left_facts, step.right_facts
        if right_facts.loads & remote and not left_facts.loads & remote:   # `assert 5 == f(2)`
            left, right, left_src, right_src = right, left, right_src, left_src
            left_facts, right_facts = right_facts, left_facts
        left_side = _side(left, left_src, left_facts, remote, local)
        right_side = _side(right, right_src, right_facts, remote, local)
        inside |= bool(right_facts.loads & remote) or bool(left_facts.loads & remote) and (
            left_facts.operators and (_compares(left, remote) or not _clean(left, remote)))
        msg = None
        if step.msg is not None:
            msg = _compile_expr(_rewritten(step.msg, remote, local))
            if SHIP in _all_names(msg):
                ahead = None   # evaluated only when the test fails
        for side in (left_side, right_side):
            fixed = [side.op] if side.op is not None else (
                [] if side.code is None or SHIP not in _all_names(side.code) else None)
            ahead = _extend(ahead, fixed)
        steps.append(SplitPlan(left_side, right_side, msg, left_src, right_src))
    calls = any(SHIP in _names(s) for s in steps)
    return Plan(tuple(steps), None if ahead is None else tuple(ahead), inside, calls)


def _extend(ahead: list[str] | None, ops: list[Op] | None) -> list[str] | None:
    if ahead is None or ops is None or any(op.bindings for op in ops):
        return None
    ahead.extend(op.source for op in ops)
    return ahead


_BRANCHING = (ast.BoolOp, ast.IfExp, ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp,
              ast.GeneratorExp, ast.NamedExpr, ast.Dict, ast.Await, ast.Yield, ast.YieldFrom)


def _fixed_chains(stmt: ast.stmt, remote: frozenset[str], local: frozenset[str]
                  ) -> list[Op] | None:
    """The ops a simple statement makes, in evaluation order, or None when they depend on
    branches, loops or order the AST fields do not show (a dict display, assignment targets)."""
    if isinstance(stmt, (ast.Import, ast.ImportFrom, ast.Pass)):
        return []
    if isinstance(stmt, ast.Assert):
        if stmt.msg is not None and _loads(stmt.msg) & remote:
            return None
        node = stmt.test
    elif isinstance(stmt, ast.Expr):
        node = stmt.value
    elif isinstance(stmt, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        if any(_loads(t) & remote for t in targets) or stmt.value is None:
            return None
        node = stmt.value
    else:
        return None
    chains: list[ast.AST] = []

    def visit(n: ast.AST) -> bool:
        if _is_chain(n, remote):
            chains.append(n)
            return True
        if isinstance(n, _BRANCHING):
            return False
        return all(visit(child) for child in ast.iter_child_nodes(n))

    return [_op(c, ast.unparse(c), remote, local) for c in chains] if visit(node) else None


def _names(step: SplitPlan | ExecPlan) -> set[str]:
    if isinstance(step, ExecPlan):
        return _all_names(step.code)
    names = set()
    for side in (step.left, step.right):
        names |= {SHIP} if side.op is not None else (
            _all_names(side.code) if side.code is not None else set())
    return names | (_all_names(step.msg) if step.msg is not None else set())


def _all_names(code: CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, CodeType):
            names |= _all_names(const)
    return names


def _side(node: ast.expr, text: str, facts: Facts, remote: frozenset[str],
          local: frozenset[str]) -> Side:
    if facts.loads & remote:
        bindings = tuple(sorted((facts.loads - facts.stores - remote) & local))
        return Side(op=Op(f"lambda {', '.join(bindings)}: ({text})", bindings))
    try:
        return Side(encoded=encode(ast.literal_eval(node)))   # the same for every program
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return Side(code=_compile_expr(node))


def _rewritten(node: ast.expr, remote: frozenset[str], local: frozenset[str]) -> ast.expr:
    if not _loads(node) & remote:
        return node
    return _Rewrite(remote, local).visit(ast.parse(ast.unparse(node), mode="eval").body)


def _compile_expr(node: ast.expr) -> CodeType:
    return compile(ast.fix_missing_locations(ast.Expression(node)), "<test>", "eval")


def _op(node: ast.expr, text: str, remote: frozenset[str], local: frozenset[str]) -> Op:
    """The lambda the child evaluates for `node` (whose source is `text`): test names it reads
    become its arguments; program names and builtins are resolved in the program's namespace."""
    loads, stores = _names_in(node)
    bindings = tuple(sorted((loads - stores - remote) & local))
    return Op(f"lambda {', '.join(bindings)}: ({text})", bindings)

def _chain_root(node: ast.AST) -> ast.AST:
    while isinstance(node, (ast.Call, ast.Attribute, ast.Subscript)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node


def _is_chain(node: ast.AST, remote: frozenset[str]) -> bool:
    """A read that starts from a program name: `f`, `f(x)`, `Obj(1).method(2)[0]`."""
    if not isinstance(node, (ast.Name, ast.Call, ast.Attribute, ast.Subscript)):
        return False
    if not isinstance(getattr(node, "ctx", ast.Load()), ast.Load):
        return False
    root = _chain_root(node)
    return isinstance(root, ast.Name) and root.id in remote


def _outside_chains(node: ast.AST, remote: frozenset[str]):
    """The nodes of `node` that are not inside a program chain (whose arguments are input)."""
    if _is_chain(node, remote):
        return
    yield node
    for child in ast.iter_child_nodes(node):
        yield from _outside_chains(child, remote)


def _clean(node: ast.expr, remote: frozenset[str]) -> bool:
    """No operator mixes a program value with test data (which the child would then see)."""
    for n in _outside_chains(node, remote):
        if isinstance(n, ast.BinOp):
            operands = [n.left, n.right]
        elif isinstance(n, ast.BoolOp):
            operands = n.values
        elif isinstance(n, ast.Compare):
            operands = [n.left, *n.comparators]
        elif isinstance(n, ast.IfExp):
            operands = [n.test, n.body, n.orelse]
        else:
            continue
        touched = [bool(_loads(o) & remote) for o in operands]
        if any(touched) and not all(touched):
            return False
    return True


def _compares(node: ast.expr, remote: frozenset[str]) -> bool:
    return any(isinstance(n, ast.Compare) for n in _outside_chains(node, remote))


class _Rewrite(ast.NodeTransformer):
    """Replace each program chain by `__persd_ship__(source, (bindings...))`."""

    def __init__(self, remote: frozenset[str], local: frozenset[str]) -> None:
        self.remote, self.local = remote, local

    def visit(self, node: ast.AST) -> ast.AST:
        if _is_chain(node, self.remote):
            op = _op(node, ast.unparse(node), self.remote, self.local)
            args = ast.Tuple([ast.Name(b, ast.Load()) for b in op.bindings], ast.Load())
            return ast.copy_location(
                ast.Call(ast.Name(SHIP, ast.Load()), [ast.Constant(op.source), args], []), node)
        return self.generic_visit(node)
