"""Does streaming finished samples out of vLLM cost throughput? `LLM.generate` against
`StudentEngine.generate_stream` on the same requests, in one process, alternating.

    .venv/bin/python benchmarks/bench_student_stream.py            # 0.5B, 24 prompts x n=4

`generate_stream` steps the engine itself and yields finished requests (what every stage now
uses, through a Ray streaming generator); `LLM.generate` runs the same loop inside vLLM and
returns at the end. Same sampling, same seeds: both must produce the same number of tokens.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import prompts  # noqa: E402
from engine.config import StudentConfig  # noqa: E402
from engine.models import resolve_model  # noqa: E402
from engine.student.pool import GenRequest, StudentEngine  # noqa: E402
from engine.tasks import load_tasks  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    from vllm import SamplingParams

    eng = StudentEngine(resolve_model(args.student),
                        StudentConfig(engine_process="inline", kv_cache_gb=2))
    reqs = [GenRequest(t.task_id, messages=({"role": "user", "content": prompts.task_message(t)},),
                       n=args.n, temperature=0.8, top_p=0.95, max_tokens=args.max_tokens, seed=i)
            for i, t in enumerate(load_tasks("builtin", args.prompts))]

    def plain() -> int:
        params = [SamplingParams(n=r.n, temperature=r.temperature, top_p=r.top_p,
                                 max_tokens=r.max_tokens, seed=r.seed) for r in reqs]
        outs = eng.llm.generate([eng.render(r) for r in reqs], params, use_tqdm=False)
        return sum(len(c.token_ids) for o in outs for c in o.outputs)

    def streamed() -> int:
        return sum(o.completion_tokens for group in eng.generate_stream(reqs) for o in group)

    plain()   # warm-up: one-time allocations
    rates: dict[str, list[float]] = {"LLM.generate": [], "generate_stream": []}
    for rnd in range(args.rounds):
        for name, run in (("LLM.generate", plain), ("generate_stream", streamed)):
            t0 = time.monotonic()
            tokens = run()
            rate = tokens / (time.monotonic() - t0)
            rates[name].append(rate)
            print(f"round {rnd + 1} {name:16s} {tokens} tokens {rate:.1f} tokens/s", flush=True)
    a, b = (sum(v) / len(v) for v in rates.values())
    print(f"\ngenerate_stream / LLM.generate, mean tokens/s: {b / a:.3f}x")


if __name__ == "__main__":
    main()
