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
import functools
import sys
from dataclasses import dataclass
from types import CodeType
from typing import Any, Iterable

from sandbox.parse import Exec, Facts, Parsed, loads_of, names_for, names_in, parse_test
from sandbox.values import encode

SHIP = "__persd_ship__"   # the worker's function, in the test namespace, that runs an operation


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


def shapes(setup: str, code: str, tests: Iterable[Any]) -> list[str]:
    """How each test would be judged, without running anything (for counting, see
    benchmarks/bench_sandbox.py): "outside", "inside", "worker" (no program call at all) or
    "invalid". The setup's names are read statically; the worker uses the executed setup's."""
    trusted = set(names_in(ast.parse(setup))[1]) if setup.strip() else set()
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
            # A name the worker binds may hold a program object (a setup's `root = Node(1)`),
            # whose use is an operation no plan can foresee.
            fixed = None if step.facts.loads & local else _fixed_chains(step.stmt, remote, local)
            ahead = _extend(ahead, fixed)
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
            if SHIP in _all_names(msg) or _msg_local(step, local):
                ahead = None   # evaluated only when the test fails
        for side, facts in ((left_side, left_facts), (right_side, right_facts)):
            if side.op is not None:
                fixed = [side.op]
            elif side.code is None:
                fixed = []
            else:   # worker code: fixed unless it makes ops, or may use a program object
                fixed = None if SHIP in _all_names(side.code) or facts.loads & local else []
            ahead = _extend(ahead, fixed)
        steps.append(SplitPlan(left_side, right_side, msg, left_src, right_src))
    calls = any(SHIP in _names(s) for s in steps)
    return Plan(tuple(steps), None if ahead is None else tuple(ahead), inside, calls)


def _msg_local(step: Any, local: frozenset[str]) -> bool:
    return bool(loads_of(step.msg) & local)


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
        if stmt.msg is not None and loads_of(stmt.msg) & remote:
            return None
        node = stmt.test
    elif isinstance(stmt, ast.Expr):
        node = stmt.value
    elif isinstance(stmt, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        if any(loads_of(t) & remote for t in targets) or stmt.value is None:
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
    if not loads_of(node) & remote:
        return node
    return _Rewrite(remote, local).visit(ast.parse(ast.unparse(node), mode="eval").body)


def _compile_expr(node: ast.expr) -> CodeType:
    return compile(ast.fix_missing_locations(ast.Expression(node)), "<test>", "eval")


def _op(node: ast.expr, text: str, remote: frozenset[str], local: frozenset[str]) -> Op:
    """The lambda the child evaluates for `node` (whose source is `text`): test names it reads
    become its arguments; program names and builtins are resolved in the program's namespace."""
    loads, stores = names_in(node)
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
        touched = [bool(loads_of(o) & remote) for o in operands]
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
