"""Multi-step inference: each round refines samples that fail the *seen* tests, shown seen-test
feedback only; hidden tests score every round and never reach a prompt."""
from __future__ import annotations

import json

from engine.config import EvalConfig
from engine.evaluate import evaluate
from engine.records import EvalResult, Grade, Task, TestCase
from engine.run.store import RunStore

HIDDEN_MARK = "777001"


def make_task(i: int) -> Task:
    return Task(task_id=f"t{i}", prompt=f"def double{i}(x):\n    \"\"\"Return 2 * x.\"\"\"\n",
                entry_point=f"double{i}",
                tests=tuple(TestCase(f"assert double{i}({v}) == {2 * v}", f"double{i}({v})",
                                     str(2 * v)) for v in (HIDDEN_MARK, 5, -3)),
                seen_tests=(TestCase(f"assert double{i}(1) == 2", f"double{i}(1)", "2"),),
                reference=f"def double{i}(x):\n    return 2 * x\n")


class Recording:
    """Passes requests to the real pool and keeps them, to inspect the prompts built."""

    def __init__(self, pool):
        self.pool, self.requests = pool, []

    def generate_stream(self, requests):
        self.requests += requests
        return self.pool.generate_stream(requests)


def test_rounds_use_seen_feedback_only(student_pool, student_cfg, sandbox_pool, tmp_path):
    tasks = [make_task(i) for i in range(3)]
    spy = Recording(student_pool)
    run = RunStore(tmp_path)
    cfg = EvalConfig(n=2, k=(1, 2), temperature=1.0, max_tokens=24, rounds=2,
                     fix_temperature=0.7)
    summary = evaluate(spy, sandbox_pool, tasks, cfg, student_cfg, run, "ms")
    assert len(summary.rounds) == 3 and summary.pass_at == summary.rounds[-1]
    first = [r for r in spy.requests if "~" not in r.request_id]
    later = [r for r in spy.requests if "~" in r.request_id]
    assert len(first) == 3 and all(r.n == 2 and r.temperature == 1.0 for r in first)
    assert later, "the tiny model fails the seen test, so round 1 must ask for fixes"
    assert all(r.n == 1 and r.temperature == 0.7 for r in later)   # eval.fix_temperature
    for r in spy.requests:
        text = json.dumps(r.messages) + r.prompt
        assert HIDDEN_MARK not in text  # a hidden test never reaches a prompt
    seen = {g.program_id: g for tag in ("ms", "ms-round1")
            for g in run.read(f"{tag}-seen-grades", Grade)}
    for r in later:  # each fix request shows exactly its sample's seen-test feedback
        attempt_id = r.request_id.rsplit("~", 1)[0]
        assert not seen[attempt_id].passed
        assert seen[attempt_id].feedback.strip() in r.messages[0]["content"]
    for rnd, tag in enumerate(("ms", "ms-round1", "ms-round2")):
        results = run.read(f"{tag}-results", EvalResult)
        assert [x.task_id for x in results] == ["t0", "t1", "t2"]
        assert all(x.round == rnd and x.n == 2 for x in results)
