"""Mutants of a reference: one AST change each, and the kill rate of a task's tests."""
from __future__ import annotations

import dataclasses

from engine.tasks.mutants import kill_rate, mutants

CODE = '''def clip(xs, lo):
    out = []
    for x in xs:
        if x < lo:
            out.append(lo)
        else:
            out.append(x + 0)
    return out and len(out) > 1
'''


def test_each_mutant_is_one_compiling_change():
    ms = mutants(CODE, "clip")
    kinds = {m.kind for m in ms}
    assert kinds == {"compare", "constant", "operator", "return", "branch"}
    assert len({m.code for m in ms}) == len(ms) and all(m.code != CODE for m in ms)
    for m in ms:
        compile(m.code, "m", "exec")
    [ret] = [m for m in ms if m.kind == "return"]
    assert "return None" in ret.code and "return out" not in ret.code
    assert any("x >= lo" in m.code for m in ms)            # the comparison flipped
    assert any("x + 1" in m.code for m in ms)              # the constant off by one
    assert mutants("def f(:", "f") == [] and len(mutants(CODE, "clip", limit=3)) == 3


def test_full_tests_kill_more_mutants_than_one_test(builtin_tasks, sandbox_pool):
    tasks = [t for t in builtin_tasks if len(t.tests) >= 3][:6]
    full = kill_rate(tasks, sandbox_pool, limit=10)
    assert all(r.mutants and r.killed for r in full)
    assert all("return@" not in " ".join(r.survivors) for r in full)   # `return None` dies
    weak = kill_rate([dataclasses.replace(t, tests=t.tests[:1]) for t in tasks], sandbox_pool,
                     limit=10)
    assert sum(r.killed for r in weak) < sum(r.killed for r in full)
    assert sum(r.killed for r in full) / sum(r.mutants for r in full) >= 0.8
