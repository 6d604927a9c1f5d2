"""The student pool: vLLM in a Ray actor, n samples per prompt, reproducible seeds."""
from __future__ import annotations

from engine.student import GenRequest


def test_n_samples_and_seeds_reproduce(student_pool):
    msgs = ({"role": "user", "content": "def add(a, b):"},)
    reqs = [GenRequest("a", messages=msgs, n=3, temperature=1.0, max_tokens=16, seed=7),
            GenRequest("b", prompt="def mul(a, b):\n", n=2, temperature=1.0, max_tokens=16, seed=3)]
    first = student_pool.generate(reqs)
    assert [o.request_id for o in first] == ["a", "b"]
    assert [len(o.texts) for o in first] == [3, 2]
    assert first[0].completion_tokens > 0
    second = student_pool.generate(reqs)
    assert [o.texts for o in second] == [o.texts for o in first]
    other = student_pool.generate([GenRequest("a", messages=msgs, n=3, temperature=1.0,
                                              max_tokens=16, seed=8)])
    assert other[0].texts != first[0].texts
