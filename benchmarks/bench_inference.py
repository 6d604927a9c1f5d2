"""Inference speed on this machine, in one run: the student's vLLM pool and the teacher's vLLM
server against the compute roofline and HF `generate`, with vLLM's own CPU defaults as the baseline.

    .venv/bin/python benchmarks/bench_inference.py                  # ~15 min on 2 cores
    .venv/bin/python benchmarks/bench_inference.py --skip teacher,baseline --prompts 16

Rows (tokens/s = generated tokens, EOS included, per wall second of the whole submission):
  roofline        matmul GFLOPS (in the dtype the engine picks here: common/hardware.py)
                  measured now at the model's MLP shape with `--roofline-m` rows, divided
                  by the model's matmul FLOPs per token (2 x every linear weight, the LM head
                  included; attention over the context is left out, so the bound is
                  a little loose). The best any engine could do on these cores.
  student greedy  the evaluation shape: `--eval-prompts` HumanEval prompts, greedy, 512 tokens,
                  one submission (as engine/evaluate.py sends it)
  student sample  the sampling shape: `--prompts` prompts x n=10, temperature 0.8, top-p 0.95,
                  a seed per request, 128 tokens
  vLLM defaults   the sampling shape on fewer prompts with vLLM-CPU's own defaults (threads
                  `auto`, no preloads, vLLM's top-p sampler): what the engine did before; then
                  ours on the same prompts, for a same-shape ratio (vLLM's sort costs grow with
                  the sequences in flight, so fewer prompts flatter the baseline)
  HF one-at-a-time  transformers `generate`, one sequence per call, the same sampling (the
                  reference code's way), on `--hf-sequences` sequences
  teacher @C      the local teacher server (engine/teacher/server.py with the engine's
                  defaults), a burst of C chat requests sent at once (as the refine stage sends
                  a round), greedy, 256 tokens at most, timed until the last reply (its tail
                  included); `--teacher-baseline` adds the server with `auto` threads and no
                  preloads at 16 in flight

Load average is printed before and after: compare ratios only from a quiet machine.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import prompts  # noqa: E402
from engine.config import StudentConfig  # noqa: E402
from engine.models import resolve_model  # noqa: E402
from engine.student import GenRequest, StudentPool  # noqa: E402
from engine.tasks import load_tasks  # noqa: E402


def matmul_flops_per_token(model_dir: str) -> float:
    """2 x (every linear weight a token passes through, the LM head included)."""
    cfg = json.loads(Path(model_dir, "config.json").read_text())
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    kv = cfg.get("num_key_value_heads", cfg["num_attention_heads"]) * (h // cfg["num_attention_heads"])
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * inter     # q, o; k, v; gate, up, down
    return 2.0 * (layers * per_layer + h * cfg["vocab_size"])


def roofline(model_dir: str, m: int) -> tuple[float, float]:
    """(GFLOPS of a matmul [m, hidden] x [hidden, intermediate] in the engine's dtype, tokens/s
    bound)."""
    import torch

    cfg = json.loads(Path(model_dir, "config.json").read_text())
    dtype = getattr(torch, StudentConfig().dtype)
    a = torch.randn(m, cfg["hidden_size"], dtype=dtype)
    b = torch.randn(cfg["hidden_size"], cfg["intermediate_size"], dtype=dtype)
    for _ in range(5):
        a @ b
    reps, t0 = 40, time.perf_counter()
    for _ in range(reps):
        a @ b
    gflops = 2 * m * a.shape[1] * b.shape[1] * reps / (time.perf_counter() - t0) / 1e9
    return gflops, gflops * 1e9 / matmul_flops_per_token(model_dir)


def chat(task) -> tuple[dict[str, str], ...]:
    return ({"role": "user", "content": prompts.task_message(task)},)


def student_rate(model_dir: str, cfg: StudentConfig, reqs: list[GenRequest]) -> tuple[float, int, float]:
    """(tokens/s, tokens, seconds) of one submission, the engine loaded and warmed first."""
    with StudentPool(model_dir, cfg) as pool:
        pool.generate([GenRequest("warm-up", prompt="def f():", max_tokens=8)])
        t0 = time.monotonic()
        outs = pool.generate(reqs)
        dt = time.monotonic() - t0
    tokens = sum(o.completion_tokens for o in outs)
    return tokens / dt, tokens, dt


def sampling_requests(tasks, max_tokens: int) -> list[GenRequest]:
    return [GenRequest(t.task_id, messages=chat(t), n=10, temperature=0.8, top_p=0.95,
                       max_tokens=max_tokens, seed=i) for i, t in enumerate(tasks)]


def hf_one_at_a_time(model_dir: str, tasks, sequences: int, max_tokens: int) -> tuple[float, int]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=getattr(torch, StudentConfig().dtype)).eval()
    total, t0 = 0, time.monotonic()
    for i in range(sequences):
        text = tok.apply_chat_template(list(chat(tasks[i % len(tasks)])), tokenize=False,
                                       add_generation_prompt=True)
        enc = tok(text, return_tensors="pt")
        torch.manual_seed(i)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_tokens, do_sample=True,
                                 temperature=0.8, top_p=0.95, pad_token_id=tok.eos_token_id)
        total += out.shape[1] - enc.input_ids.shape[1]
    return total / (time.monotonic() - t0), total


async def _burst(url: str, model: str, messages: list, max_tokens: int) -> int:
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="EMPTY", timeout=1800, max_retries=0)
    replies = await asyncio.gather(*[client.chat.completions.create(
        model=model, messages=m, max_tokens=max_tokens, temperature=0.0) for m in messages])
    await client.close()
    return sum(r.usage.completion_tokens for r in replies)


def teacher_rates(model_dir: str, tasks, inflight: list[int], max_tokens: int, threads: str,
                  preload: str) -> tuple[dict[int, tuple[float, int]], float]:
    """{in flight: (tokens/s, tokens)} with one server, and its start-up seconds. Each level
    sends exactly `in flight` requests at once, so the whole burst is in flight together."""
    from engine.teacher.server import LocalServer

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        server = LocalServer(model_dir, "teacher", Path(tmp) / "server.log", threads=threads,
                             preload=preload, eager=True)
        with server as url:
            startup = time.monotonic() - t0
            asyncio.run(_burst(url, "teacher", [list(chat(tasks[0]))], 8))   # warm-up
            for c in inflight:
                msgs = [list(chat(tasks[i % len(tasks)])) for i in range(c)]
                t0 = time.monotonic()
                tokens = asyncio.run(_burst(url, "teacher", msgs, max_tokens))
                out[c] = (tokens / (time.monotonic() - t0), tokens)
    return out, startup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--teacher", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--prompts", type=int, default=24, help="prompts of the sampling shape (x10)")
    ap.add_argument("--eval-prompts", type=int, default=64, help="prompts of the greedy shape")
    ap.add_argument("--baseline-prompts", type=int, default=4)
    ap.add_argument("--hf-sequences", type=int, default=2)
    ap.add_argument("--inflight", default="1,16,64,128", help="teacher requests in flight")
    ap.add_argument("--roofline-m", type=int, default=256, help="matmul rows for the roofline")
    ap.add_argument("--skip", default="", help="comma-separated: student, baseline, hf, teacher")
    ap.add_argument("--teacher-baseline", action="store_true")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    print(f"load average before: {os.getloadavg()}", flush=True)
    student_dir = resolve_model(args.student)
    tasks = load_tasks("humaneval")   # 164 distinct prompts (no prefix-cache hits up to 164)
    rows = []

    gflops, roof = roofline(student_dir, args.roofline_m)
    rows.append((f"roofline ({StudentConfig().dtype} matmul, student)",
                 f"{gflops:.0f} GFLOPS at {args.roofline_m} rows",
                 roof))
    cfg = StudentConfig(model=args.student)
    sample_rate = hf = None
    if "student" in skip:
        skip |= {"baseline", "hf"}
    else:
        sample_rate = student_part(args, student_dir, cfg, tasks, rows, skip)
        hf = rows[-1][2] if "hf" not in skip else None
    teacher_part(args, tasks, rows, skip)
    print(f"\nload average after: {os.getloadavg()}\n")
    print("| what | detail | tokens/s |")
    print("|---|---|---:|")
    for name, detail, rate in rows:
        print(f"| {name} | {detail} | {rate:.1f} |")
    if sample_rate:
        print(f"\nstudent sampling: {sample_rate / roof:.0%} of the roofline (target >= 75%)"
              + (f", {sample_rate / hf:.1f}x HF one-at-a-time (target >= 25x)" if hf else ""))


def student_part(args, student_dir: str, cfg: StudentConfig, tasks, rows: list, skip: set
                 ) -> float:
    """The student rows; returns the sampling shape's tokens/s."""
    rate, tokens, dt = student_rate(student_dir, cfg, [
        GenRequest(t.task_id, messages=chat(t), max_tokens=512) for t in tasks[:args.eval_prompts]])
    rows.append((f"student greedy, {args.eval_prompts} prompts", f"{tokens} tokens in {dt:.0f} s",
                 rate))
    rate, tokens, dt = student_rate(student_dir, cfg, sampling_requests(tasks[:args.prompts], 128))
    sample_rate = rate
    rows.append((f"student sample, {args.prompts} prompts x 10", f"{tokens} tokens in {dt:.0f} s",
                 rate))
    if "baseline" not in skip:
        os.environ["PERSD_CPU_TOPP_PATCH"] = "0"   # inherited by the Ray actor it starts
        base = StudentConfig(model=args.student, cpu_threads="auto", preload="")
        rate, tokens, dt = student_rate(student_dir, base,
                                        sampling_requests(tasks[:args.baseline_prompts], 128))
        del os.environ["PERSD_CPU_TOPP_PATCH"]
        rows.append((f"vLLM defaults sample, {args.baseline_prompts} prompts x 10",
                     f"{tokens} tokens in {dt:.0f} s", rate))
        ours, tokens, dt = student_rate(student_dir, cfg,
                                        sampling_requests(tasks[:args.baseline_prompts], 128))
        rows.append((f"student sample, {args.baseline_prompts} prompts x 10 (same shape)",
                     f"{tokens} tokens in {dt:.0f} s; {ours / rate:.2f}x vLLM defaults", ours))
    if "hf" not in skip:
        hf, tokens = hf_one_at_a_time(student_dir, tasks, args.hf_sequences, 128)
        rows.append((f"HF generate one at a time, {args.hf_sequences} sequences",
                     f"{tokens} tokens", hf))
    return sample_rate


def teacher_part(args, tasks, rows: list, skip: set) -> None:
    if "teacher" not in skip:
        teacher_dir = resolve_model(args.teacher)
        t_gflops, t_roof = roofline(teacher_dir, args.roofline_m)
        rows.append((f"roofline ({StudentConfig().dtype} matmul, teacher)",
                     f"{t_gflops:.0f} GFLOPS at {args.roofline_m} rows", t_roof))
        levels = [int(c) for c in args.inflight.split(",")]
        rates, startup = teacher_rates(teacher_dir, tasks, levels, 256, "all", "tcmalloc,iomp")
        for c, (rate, tokens) in rates.items():
            rows.append((f"teacher @{c} in flight", f"{tokens} tokens; start-up {startup:.0f} s",
                         rate))
        if args.teacher_baseline:
            rates, startup = teacher_rates(teacher_dir, tasks, [16], 256, "auto", "")
            rows.append(("teacher @16, threads auto, no preloads",
                         f"{rates[16][1]} tokens; start-up {startup:.0f} s", rates[16][0]))


if __name__ == "__main__":
    main()
