"""The student engine's processes: `--student.engine_process separate` (vLLM's engine core and its
worker each in a process of their own) against `inline` (both in the Ray actor's process), on the
same model and prompts: seconds from `StudentPool(...)` to ready, and sampling tokens/s.

    python benchmarks/bench_engine_start.py                 # 0.5B, 2 rounds, ~6 min on 2 cores
    python benchmarks/bench_engine_start.py --rounds 1 --prompts 8

Each engine starts in a fresh process (a start pays every vLLM import, as a run's does); the
modes alternate so that drift in the machine's load hits both. Rates: generated tokens (EOS
included) per wall second of one submission of `--prompts` built-in tasks x n=4, temperature
0.8, top-p 0.95, a seed per request, `--max-tokens` tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
from engine.config import StudentConfig
from engine.models import resolve_model
from engine.student import GenRequest, StudentPool
from engine.tasks import load_tasks
from engine import prompts
model, mode, n_prompts, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
path = str(resolve_model(model))
t0 = time.monotonic()
pool = StudentPool(path, StudentConfig(model=model, engine_process=mode))
start = time.monotonic() - t0
tasks = load_tasks("builtin-all")[:n_prompts]
reqs = [GenRequest(t.task_id, messages=({"role": "user", "content": prompts.task_message(t)},),
                   n=4, temperature=0.8, top_p=0.95, max_tokens=max_tokens, seed=i)
        for i, t in enumerate(tasks)]
pool.generate(reqs[:1])   # the first request pays one-time allocations in either mode
t1 = time.monotonic()
outs = pool.generate(reqs)
wall = time.monotonic() - t1
tokens = sum(o.completion_tokens for o in outs)
pool.close()
print("RESULT " + json.dumps({"start_s": start, "tokens": tokens, "wall_s": wall}), flush=True)
"""


def one(model: str, mode: str, prompts: int, max_tokens: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "VLLM_HOST_IP": os.environ.get("VLLM_HOST_IP", "127.0.0.1")}
    done = subprocess.run([sys.executable, "-c", CHILD, model, mode, str(prompts),
                           str(max_tokens)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1800)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{mode}: the child failed (exit {done.returncode}):\n"
                         f"{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return json.loads(line[7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rows: dict[str, list[dict]] = {"separate": [], "inline": []}
    for r in range(args.rounds):
        for mode in rows:
            res = one(args.model, mode, args.prompts, args.max_tokens)
            rows[mode].append(res)
            print(f"round {r + 1} {mode:8s} start {res['start_s']:5.1f} s  "
                  f"{res['tokens'] / res['wall_s']:6.1f} tokens/s", flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print("| engine_process | start s (each round) | tokens/s (each round) | vs separate |")
    print("|---|---|---|---:|")
    base = sum(x["tokens"] / x["wall_s"] for x in rows["separate"]) / args.rounds
    for mode, results in rows.items():
        rate = sum(x["tokens"] / x["wall_s"] for x in results) / args.rounds
        starts = " / ".join(f"{x['start_s']:.1f}" for x in results)
        rates = " / ".join(f"{x['tokens'] / x['wall_s']:.1f}" for x in results)
        print(f"| {mode} | {starts} | {rates} | {rate / base:.3f}x |")


if __name__ == "__main__":
    main()
