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


def test_finished_requests_stream_out_before_the_batch_ends(student_pool):
    """A short request comes back in its own group while the long ones still decode, so a
    stage commits and grades it (and progress moves) without waiting for the batch."""
    long = [GenRequest(f"long{i}", prompt="def f(x):\n", max_tokens=200, temperature=1.0,
                       seed=i) for i in range(4)]
    short = GenRequest("short", prompt="def g(x):\n", max_tokens=1)
    groups = [[o.request_id for o in g]
              for g in student_pool.generate_stream(long + [short], flush_s=0)]
    assert sorted(i for g in groups for i in g) == sorted(r.request_id for r in long + [short])
    assert groups[0] == ["short"] and len(groups) > 1
    # and the engine is free for the next batch, which gives the same texts as `generate`
    assert student_pool.generate([short])[0].request_id == "short"
