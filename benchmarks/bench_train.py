"""Training throughput and peak memory: our LoRA trainer vs a plain HF Trainer full fine-tune of
the same model, each in its own process (peak RSS from the kernel), on the same examples.

    python benchmarks/bench_train.py                 # Qwen2.5-Coder-0.5B, 6 steps each
    python benchmarks/bench_train.py --steps 20 --model /path/to/model

Examples: built-in tasks with their reference solutions, in the prompt/completion format the
pipeline writes. Tokens/s counts every token of a batch (prompt + completion, no padding).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from engine import prompts
from engine.models import resolve_model
from engine.tasks import load_tasks

HF_FULL = r'''
import json, sys, time, torch, orjson
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments
from train.lora import load_examples, tokenize
data, model_dir, steps, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
tok = AutoTokenizer.from_pretrained(model_dir)
rows = [tokenize(tok, ex, 1024) for ex in load_examples(data)]
rows = [{"input_ids": x, "labels": y} for x, y in rows if x]
def collate(batch):
    w = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), w), tok.pad_token_id); lab = torch.full((len(batch), w), -100)
    att = torch.zeros((len(batch), w), dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"]); ids[i, :n] = torch.tensor(b["input_ids"])
        lab[i, :n] = torch.tensor(b["labels"]); att[i, :n] = 1
    return {"input_ids": ids, "labels": lab, "attention_mask": att}
from common.hardware import cpu_bf16
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if cpu_bf16() else torch.float32)
args = TrainingArguments(output_dir=out, per_device_train_batch_size=4, max_steps=steps,
                         learning_rate=1e-5, bf16=cpu_bf16(), logging_steps=1, save_strategy="no",
                         report_to=[], use_cpu=True, dataloader_num_workers=0)
tr = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate)
t0 = time.monotonic(); tr.train(); dt = time.monotonic() - t0
tokens = sum(len(r["input_ids"]) for r in rows[: steps * 4])
print(json.dumps({"tokens": tokens, "seconds": dt}))
'''


# Runs a module or a code string and reports its own peak RSS on stderr when it exits.
MEASURED = r'''
import atexit, resource, runpy, sys
atexit.register(lambda: print(f"PEAK_MB={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}",
                              file=sys.stderr))
mode, target, sys.argv = sys.argv[1], sys.argv[2], sys.argv[2:]
runpy.run_module(target, run_name="__main__") if mode == "module" else exec(target)
'''


def run_measured(mode: str, target: str, *args: str) -> tuple[str, float]:
    """(stdout, peak RSS in MB) of a child process running `target`."""
    done = subprocess.run([sys.executable, "-c", MEASURED, mode, target, *args],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{target[:40]} failed:\n{done.stderr[-3000:]}")
    peak = float(done.stderr.rsplit("PEAK_MB=", 1)[1].split()[0])
    return done.stdout, peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()
    model_dir = resolve_model(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    data = tmp / "examples.jsonl"
    tasks = load_tasks("builtin-all")[: args.steps * 4]
    data.write_bytes(b"".join(orjson.dumps({
        "prompt": [{"role": "user", "content": prompts.task_message(t)}],
        "completion": [{"role": "assistant", "content": f"```python\n{t.reference}```"}]}) + b"\n"
        for t in tasks))

    # ours: batch of ~4 examples (batch_tokens), one optimizer step per micro-batch
    t0 = time.monotonic()
    _, peak_lora = run_measured("module", "train.lora", "--data", str(data), "--model", model_dir,
                                "--out", str(tmp / "lora"), "--max_steps", str(args.steps),
                                "--epochs", "1", "--batch_tokens", "1600", "--save_every", "1000")
    wall = time.monotonic() - t0
    log = [orjson.loads(x) for x in (tmp / "lora" / "train-log.jsonl").read_bytes().splitlines()]
    lora_rate = log[-1]["tokens_per_s"]

    out, peak_full = run_measured("code", HF_FULL, str(data), model_dir, str(args.steps),
                                  str(tmp / "full"))
    res = json.loads(out.strip().splitlines()[-1])
    full_rate = res["tokens"] / res["seconds"]
    print("| trainer | steps | tokens/s (training loop) | peak RSS MB |")
    print("|---|---|---|---|")
    print(f"| ours: LoRA r=16, bf16 base, fp32 adapter | {len(log)} | {lora_rate:.0f} | "
          f"{peak_lora:.0f} |")
    print(f"| HF Trainer full fine-tune, bf16 | {args.steps} | {full_rate:.0f} | "
          f"{peak_full:.0f} |")
    print(f"ratio tokens/s ours/full: {lora_rate / full_rate:.2f}x; whole LoRA process {wall:.0f}s")


if __name__ == "__main__":
    main()
