"""The sort-free top-p sampler (engine/student/cpu_sampler.py) against vLLM's own top-p, and its
environment (engine/student/cpu_env.py)."""
from __future__ import annotations

import os

import pytest
import torch

from engine.student import GenRequest, cpu_env, cpu_sampler


def vllm_mask(logits: torch.Tensor, k, p) -> torch.Tensor:
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch

    return apply_top_k_top_p_pytorch(logits.clone(), k, p, allow_cpu_sync=True)


def lm_like(batch: int, vocab: int, seed: int) -> torch.Tensor:
    """Peaked rows like a code model's (a few strong tokens over a long tail) and a few flat
    rows whose nucleus is wider than every cap."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, vocab, generator=g) * 2
    strong = torch.randint(0, vocab, (batch, 8), generator=g)
    logits.scatter_(1, strong, 12 + 4 * torch.rand(batch, 8, generator=g))
    logits[-2:] = torch.randn(2, vocab, generator=g) * 0.1   # flat: falls back to the sort
    return logits


def kept_sets(logits, k, p) -> list[set[int]]:
    """The token ids the sampler may draw per row: ours, read off the candidate selection."""
    seen: list[set[int]] = [set() for _ in range(logits.shape[0])]
    for s in range(300):
        gens = {i: torch.Generator().manual_seed(1000 * s + i) for i in range(logits.shape[0])}
        out = cpu_sampler.sample(logits.clone(), gens, k, p, wide_vllm)
        for i, t in enumerate(out.tolist()):
            seen[i].add(t)
    return seen


def wide_vllm(rows, seeds, p):
    """The fallback the plugin uses: vLLM's sort, then Gumbel-max over the kept vocabulary."""
    if p is not None and bool((p < 1).any()):
        rows = vllm_mask(rows, None, p)
    g = torch.Generator().manual_seed(int(seeds[0]))
    noise = -torch.log(-torch.log(torch.rand(rows.shape, generator=g).clamp(1e-20, 1 - 1e-7)))
    return (rows + noise).argmax(dim=1)


@pytest.mark.parametrize("p_value", [0.5, 0.9, 0.95])
def test_draws_only_from_vllms_nucleus(p_value):
    logits = lm_like(12, 5000, seed=int(p_value * 100))
    p = torch.full((12,), p_value)
    allowed = vllm_mask(logits, None, p) > float("-inf")
    for i, drawn in enumerate(kept_sets(logits, None, p)):
        assert drawn <= set(torch.nonzero(allowed[i]).flatten().tolist()), f"row {i}"


def test_frequencies_follow_the_renormalised_nucleus():
    # the top five hold 0.89 of the mass, so the nucleus reaches ~100 tokens into the tail
    # (distinct values: among tied logits any subset is a valid nucleus)
    logits = (-6.0 - 1e-3 * torch.arange(2000.0)).unsqueeze(0)
    logits[0, :5] = torch.tensor([3.0, 2.4, 2.0, 1.0, 0.2])
    p = torch.tensor([0.9])
    ref = vllm_mask(logits, None, p).softmax(dim=1)[0]
    n = 6000
    counts = torch.zeros(2000)
    for s in range(n):
        counts[cpu_sampler.sample(logits.clone(), {0: torch.Generator().manual_seed(s)}, None, p,
                                  wide_vllm)] += 1
    assert float((counts / n - ref).abs().max()) < 0.02   # ~4 standard errors at n = 6000
    assert int(((counts > 0) & (ref == 0)).sum()) == 0


def test_seeded_rows_reproduce_and_seeds_differ():
    logits = lm_like(6, 3000, seed=3)
    p = torch.full((6,), 0.95)

    def draw(seed: int) -> list[int]:
        gens = {i: torch.Generator().manual_seed(seed + i) for i in range(6)}
        return cpu_sampler.sample(logits.clone(), gens, None, p, wide_vllm).tolist()

    assert draw(1) == draw(1)
    assert any(draw(s) != draw(1) for s in range(2, 8))


def test_top_k_and_p_one_rows_take_the_wide_path():
    logits = lm_like(4, 1000, seed=5)
    p = torch.tensor([1.0, 0.9, 1.0, 0.9])
    k = torch.tensor([3, 1000, 1000, 2])
    calls = []

    def wide(rows, seeds, rows_p):
        calls.append(rows.shape[0])
        return wide_vllm(rows, seeds, rows_p)

    top3 = set(logits[0].topk(3).indices.tolist())
    top2 = set(logits[3].topk(2).indices.tolist())
    for s in range(40):
        out = cpu_sampler.sample(logits.clone(), {0: torch.Generator().manual_seed(s)}, k, p, wide)
        assert int(out[0]) in top3 and int(out[3]) in top2
    assert set(calls) == {2}   # the two p = 1 rows; the flat row 2 is one of them


def test_registered_in_vllms_sampler():
    from vllm.v1.sample.ops.topk_topp_sampler import TopKTopPSampler

    from engine import vllm_plugin

    vllm_plugin.register()
    assert getattr(TopKTopPSampler, "_persd_cpu_sampler", False)


def test_top_p_sampling_through_vllm_reproduces(student_pool):
    msgs = ({"role": "user", "content": "def add(a, b):"},)
    req = GenRequest("a", messages=msgs, n=4, temperature=0.8, top_p=0.9, max_tokens=16, seed=11)
    first = student_pool.generate([req])[0].texts
    assert student_pool.generate([req])[0].texts == first
    other = student_pool.generate([GenRequest("a", messages=msgs, n=4, temperature=0.8,
                                              top_p=0.9, max_tokens=16, seed=12)])[0].texts
    assert other != first


def test_engine_env_binds_every_core_and_preloads(monkeypatch):
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    env = cpu_env.vllm_cpu_env("all", 2)
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == ",".join(map(str, sorted(os.sched_getaffinity(0))))
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert "libtcmalloc" in env["LD_PRELOAD"] and "libiomp5" in env["LD_PRELOAD"]
    assert cpu_env.vllm_cpu_env("auto", 2, "")["VLLM_CPU_OMP_THREADS_BIND"] == "auto"
    assert "LD_PRELOAD" not in cpu_env.vllm_cpu_env("auto", 2, "")


def test_missing_library_warns_with_the_fix(monkeypatch):
    monkeypatch.setattr(cpu_env, "find_tcmalloc", lambda: None)
    with pytest.warns(UserWarning, match="libtcmalloc-minimal4"):
        cpu_env.preload("tcmalloc")
    with pytest.raises(ValueError, match="unknown library 'jemalloc'"):
        cpu_env.preload("jemalloc")
