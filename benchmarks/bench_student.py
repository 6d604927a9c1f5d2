"""Student sampling throughput: our vLLM pool vs HF `generate` one sequence at a time (the paper's
reference code) vs HF `generate` batched, on the same HumanEval prompts, in one process.

    python benchmarks/bench_student.py                      # 32 prompts x n=10, 256 max tokens
    python benchmarks/bench_student.py --prompts 164 --n 10 # the full HumanEval run (slow on CPU)

Each side samples with temperature 0.8 and counts generated tokens (EOS included) per wall second.
The HF baselines run on a few prompts only (they are 10x+ slower); rates are comparable because
each is tokens per second on the same model, dtype and prompt distribution.
"""
from __future__ import annotations

import argparse
import time

import torch

from engine import prompts
from engine.config import StudentConfig
from engine.models import resolve_model
from engine.student import GenRequest, StudentPool
from engine.tasks import load_tasks


def chat_text(tok, task) -> str:
    return tok.apply_chat_template([{"role": "user", "content": prompts.task_message(task)}],
                                   tokenize=False, add_generation_prompt=True)


def hf_rate(model, tok, texts: list[str], batch: int, max_tokens: int) -> tuple[float, int]:
    """Tokens/s of HF generate, `batch` sequences per call (1 = the reference approach)."""
    tok.padding_side = "left"
    total, t0 = 0, time.monotonic()
    for i in range(0, len(texts), batch):
        enc = tok(texts[i:i + batch], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_tokens, do_sample=True,
                                 temperature=0.8, top_p=0.95, pad_token_id=tok.pad_token_id)
        gen = out[:, enc.input_ids.shape[1]:]
        total += int(((gen != tok.pad_token_id) | (gen == tok.eos_token_id)).sum())
    return total / (time.monotonic() - t0), total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--hf-single", type=int, default=3, help="sequences for the one-at-a-time side")
    ap.add_argument("--hf-batch", type=int, default=16, help="batch size of the batched HF side")
    args = ap.parse_args()
    model_dir = resolve_model(args.model)
    tasks = load_tasks("humaneval", args.prompts)

    with StudentPool(model_dir, StudentConfig(cpu_threads="all")) as pool:
        reqs = [GenRequest(t.task_id, messages=({"role": "user",
                                                  "content": prompts.task_message(t)},),
                           n=args.n, temperature=0.8, top_p=0.95, max_tokens=args.max_tokens,
                           seed=i) for i, t in enumerate(tasks)]
        pool.generate([GenRequest("warm-up", prompt="def f():", max_tokens=8)])
        t0 = time.monotonic()
        outs = pool.generate(reqs)
        ours_s = time.monotonic() - t0
        ours_tokens = sum(o.completion_tokens for o in outs)
    ours = ours_tokens / ours_s

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=getattr(torch, StudentConfig().dtype)).eval()   # the engine's dtype here
    texts = [chat_text(tok, t) for t in tasks]
    single, single_tokens = hf_rate(model, tok, texts[:args.hf_single], 1, args.max_tokens)
    batched, batched_tokens = hf_rate(model, tok, (texts * args.n)[:args.hf_batch], args.hf_batch,
                                      args.max_tokens)
    print("| side | sequences | generated tokens | tokens/s | vs one-at-a-time |")
    print("|---|---|---|---|---|")
    print(f"| ours: vLLM pool (1 actor), n={args.n} | {len(tasks) * args.n} | {ours_tokens} | "
          f"{ours:.1f} | {ours / single:.1f}x |")
    print(f"| HF generate, batch {args.hf_batch} | {args.hf_batch} | {batched_tokens} | "
          f"{batched:.1f} | {batched / single:.1f}x |")
    print(f"| HF generate, one at a time | {args.hf_single} | {single_tokens} | {single:.1f} | 1.0x |")


if __name__ == "__main__":
    main()
