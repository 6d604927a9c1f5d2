"""Mutants of a reference solution, to measure whether a task's tests discriminate.

A test set that passes the reference and also passes most small corruptions of it teaches the
student little and judges it loosely. Each mutant here is the reference with one AST change at
one site, of the kinds that model real slips:

    compare   a comparison flipped: < <-> >=, > <-> <=, == <-> !=, in <-> not in, is <-> is not
    constant  an integer constant off by one (n -> n + 1), a boolean negated
    operator  an arithmetic operator swapped: + <-> -, * <-> //, % -> //, and <-> or
    return    the entry point's returns replaced by `return None`
    branch    an `if` whose body is dropped (the else part, if any, always runs)

`kill_rate` grades every mutant against the tests in the sandbox: a mutant is killed when any
test fails on it. Mutants that still compile are kept; equivalent mutants (same behaviour) are
possible, so a kill rate below 100% does not by itself mean a weak test set.
"""
from __future__ import annotations

import ast
import copy
import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

from engine.records import Grade, Program, Task

FLIP_CMP = {ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE, ast.LtE: ast.Gt, ast.Eq: ast.NotEq,
            ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot,
            ast.IsNot: ast.Is}
SWAP_OP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.FloorDiv, ast.FloorDiv: ast.Mult,
           ast.Mod: ast.FloorDiv}


@dataclass(frozen=True)
class Mutant:
    kind: str       # compare, constant, operator, return, branch
    site: int       # which site of that kind, in walk order
    line: int       # the line changed
    code: str


def _sites(tree: ast.AST, entry_point: str) -> list[tuple[str, ast.AST]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            out += [("compare", node)] if all(type(o) in FLIP_CMP for o in node.ops) else []
        elif isinstance(node, ast.Constant) and type(node.value) in (int, bool):
            out.append(("constant", node))
        elif isinstance(node, ast.BinOp) and type(node.op) in SWAP_OP:
            out.append(("operator", node))
        elif isinstance(node, ast.BoolOp):
            out.append(("operator", node))
        elif isinstance(node, ast.If):
            out.append(("branch", node))
        elif isinstance(node, ast.FunctionDef) and node.name == entry_point:
            out.append(("return", node))
    return out


def _mutate(kind: str, node: ast.AST) -> bool:
    """Change `node` in place; False when there is nothing to change."""
    if kind == "compare":
        node.ops = [FLIP_CMP[type(o)]() for o in node.ops]
    elif kind == "constant":
        node.value = (not node.value) if isinstance(node.value, bool) else node.value + 1
    elif kind == "operator" and isinstance(node, ast.BinOp):
        node.op = SWAP_OP[type(node.op)]()
    elif kind == "operator":
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif kind == "branch":
        node.body = [ast.Pass()]
    elif kind == "return":
        changed = False
        for sub in ast.walk(node):
            if isinstance(sub, ast.Return):
                sub.value, changed = ast.Constant(None), True
        return changed
    return True


def mutants(code: str, entry_point: str, limit: int = 40) -> list[Mutant]:
    """Up to `limit` one-change mutants of `code` that still compile, spread over the kinds
    (round-robin), each different from the original."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    original = ast.unparse(tree)
    by_kind: dict[str, list[int]] = {}
    for i, (kind, _) in enumerate(_sites(tree, entry_point)):
        by_kind.setdefault(kind, []).append(i)
    order = []
    queues = [list(v) for v in by_kind.values()]
    while any(queues):
        for q in queues:
            if q:
                order.append(q.pop(0))
    out, seen = [], {original}
    for i in order:
        copy_tree = copy.deepcopy(tree)
        kind, node = _sites(copy_tree, entry_point)[i]
        line = getattr(node, "lineno", 0)
        if not _mutate(kind, node):
            continue
        text = ast.unparse(ast.fix_missing_locations(copy_tree))
        if text in seen:
            continue
        try:
            compile(text, "<mutant>", "exec")
        except SyntaxError:
            continue
        seen.add(text)
        site = sum(1 for m in out if m.kind == kind)
        out.append(Mutant(kind, site, line, text))
        if len(out) >= limit:
            break
    return out


@dataclass(frozen=True)
class KillReport:
    task_id: str
    mutants: int
    killed: int
    survivors: tuple[str, ...]   # "kind@line" of each mutant no test caught

    @property
    def rate(self) -> float | None:
        return self.killed / self.mutants if self.mutants else None


def mutant_programs(tasks: Sequence[Task], limit: int = 40, timeout_s: float = 2.0
                    ) -> list[tuple[str, Mutant, Program]]:
    """(task id, mutant, the program grading it against the task's tests) for every mutant of
    each task's reference. A mutant often loops forever (a flipped loop condition), so each runs
    under `timeout_s`."""
    from engine.prompts import program_code

    return [(t.task_id, m, Program(f"{t.task_id}~m{j}", program_code(t, m.code), t.tests,
                                   t.setup, timeout_s))
            for t in tasks for j, m in enumerate(mutants(t.reference or "", t.entry_point, limit))]


def kill_reports(tasks: Sequence[Task], graded: Sequence[tuple[str, Mutant, Grade]]
                 ) -> list[KillReport]:
    """One report per task from its mutants' grades: a mutant any test fails (or that times out)
    is killed."""
    out = []
    for t in tasks:
        mine = [(m, g) for tid, m, g in graded if tid == t.task_id]
        out.append(KillReport(t.task_id, len(mine), sum(not g.passed for _, g in mine),
                              tuple(f"{m.kind}@{m.line}" for m, g in mine if g.passed)))
    return out


def kill_rate(tasks: Sequence[Task], sandbox, limit: int = 40, timeout_s: float = 2.0,
              grade: Callable[[list[Program]], list[Grade]] | None = None) -> list[KillReport]:
    """Grade every mutant of each task's reference against the task's tests (one batch;
    `grade`: how, default the pool directly, e.g. through a run store)."""
    jobs = mutant_programs(tasks, limit, timeout_s)
    grades = (grade or sandbox.grade)([p for _, _, p in jobs]) if jobs else []
    return kill_reports(tasks, [(tid, m, g) for (tid, m, _), g in zip(jobs, grades)])


def main(argv: list[str] | None = None) -> None:
    """Kill rate of a task set's own tests:

        python -m engine.tasks.mutants --tasks builtin-all --limit 20
    """
    import argparse
    import json

    from engine.tasks import load_tasks
    from sandbox.config import SandboxConfig
    from sandbox.pool import SandboxPool

    ap = argparse.ArgumentParser(prog="python -m engine.tasks.mutants", description=main.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="builtin-all", help="task spec (tasks need a reference)")
    ap.add_argument("--limit", type=int, default=20, help="mutants per task")
    ap.add_argument("--out", default="", help="per-task reports as JSONL")
    args = ap.parse_args(argv)
    tasks = [t for t in load_tasks(args.tasks, verify_seen=False) if t.reference]
    with SandboxPool(SandboxConfig()) as sandbox:
        reports = kill_rate(tasks, sandbox, args.limit)
    rates = [r.rate for r in reports if r.rate is not None]
    if args.out:
        with open(args.out, "w") as fh:
            for r in reports:
                fh.write(json.dumps({**dataclasses.asdict(r), "rate": r.rate}) + "\n")
    print(json.dumps({"tasks": len(tasks), "with_mutants": len(rates),
                      "mutants": sum(r.mutants for r in reports),
                      "killed": sum(r.killed for r in reports),
                      "mean_task_kill_rate": round(sum(rates) / len(rates), 4) if rates else None,
                      "tasks_all_killed": sum(x == 1 for x in rates),
                      "tasks_below_half": sum(x < 0.5 for x in rates)}))


if __name__ == "__main__":
    main()
