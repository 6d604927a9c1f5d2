"""pass@k evaluation of a base model, or base + LoRA adapter, through the student pool.

    python -m engine.evaluate --model qwen2.5-coder-0.5b-instruct --tasks humaneval --limit 20
    python -m engine.evaluate --model ./base --adapter runs/x/adapter --n 10 --k 1,5 --temperature 0.8
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from engine import stages
from engine.config import EvalConfig, StudentConfig
from engine.records import Attempt, EvalResult, Grade, Task
from engine.runlog import RunDir
from engine.student import StudentPool


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimator (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), computed stably."""
    if k > n:
        raise ValueError(f"k={k} > n={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


@dataclass(frozen=True)
class EvalSummary:
    adapter: str | None
    tasks: int
    n: int
    pass_at: dict[str, float]   # "pass@1" -> mean over tasks


def summarise(results: Sequence[EvalResult], ks: Sequence[int], adapter: str | None) -> EvalSummary:
    scores = {f"pass@{k}": float(np.mean([pass_at_k(r.n, r.correct, k) for r in results]))
              if results else 0.0 for k in ks}
    n = results[0].n if results else 0
    return EvalSummary(adapter, len(results), n, scores)


def evaluate(pool: StudentPool, sandbox, tasks: Sequence[Task], cfg: EvalConfig,
             student: StudentConfig, run: RunDir, name: str, adapter: str | None = None
             ) -> EvalSummary:
    """Sample n per task, grade on the hidden tests, write `<name>-attempts/grades/results`."""
    by_id = {t.task_id: t for t in tasks}

    def gen(chunk: list[Task]) -> list[Attempt]:
        return stages.sample(pool, chunk, n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p,
                             max_tokens=cfg.max_tokens, seed=student.seed,
                             prompt_format=student.prompt_format, adapter=adapter)

    # Stage keys are task ids for sampling (all n samples of a task are one request).
    attempts = run.stage(f"{name}-attempts", Attempt, list(tasks), key=lambda t: t.task_id,
                         rkey=lambda a: a.task_id, compute=gen, batch=64)
    attempts = run.read(f"{name}-attempts", Attempt)  # all n samples (stage() keeps one per key)

    def grade(chunk: list[Attempt]) -> list[Grade]:
        return sandbox.grade(stages.programs_for([(a.attempt_id, by_id[a.task_id], a.code)
                                                  for a in chunk]))

    grades = {g.program_id: g for g in run.stage(
        f"{name}-grades", Grade, attempts, key=lambda a: a.attempt_id,
        rkey=lambda g: g.program_id, compute=grade, batch=256)}
    results = []
    for t in tasks:
        mine = [grades[a.attempt_id] for a in attempts if a.task_id == t.task_id]
        results.append(EvalResult(t.task_id, adapter, len(mine), sum(g.passed for g in mine),
                                  0, tuple(g.status for g in mine)))
    run.rewrite(f"{name}-results", results)
    return summarise(results, cfg.k, adapter)


def main(argv: list[str] | None = None) -> None:
    from engine.models import resolve_model
    from engine.tasks import load_tasks
    from sandbox.config import SandboxConfig
    from sandbox.pool import SandboxPool

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default=StudentConfig.model)
    ap.add_argument("--adapter", default=None, help="LoRA adapter directory")
    ap.add_argument("--tasks", default="humaneval", help="humaneval, builtin-heldout or a file")
    ap.add_argument("--limit", type=int, default=0, help="first N tasks (0 = all)")
    ap.add_argument("--n", type=int, default=1)
    ap.add_argument("--k", default="1", help="comma-separated k values")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--prompt-format", default="chat", choices=("chat", "completion"))
    ap.add_argument("--out", default="runs/eval", help="directory for per-task JSONL")
    args = ap.parse_args(argv)
    if args.adapter and not Path(args.adapter, "adapter_config.json").exists():
        raise SystemExit(f"--adapter: {args.adapter} has no adapter_config.json")
    ks = tuple(int(k) for k in args.k.split(","))
    cfg = EvalConfig(n=args.n, k=ks, temperature=args.temperature, max_tokens=args.max_tokens)
    student = StudentConfig(model=args.model, prompt_format=args.prompt_format)
    tasks = load_tasks(args.tasks, args.limit)
    run = RunDir(args.out)
    with StudentPool(resolve_model(args.model), student) as pool, SandboxPool(SandboxConfig()) as sb:
        s = evaluate(pool, sb, tasks, cfg, student, run, "eval", args.adapter)
    print({"tasks": s.tasks, "n": s.n, **s.pass_at})


if __name__ == "__main__":
    main()
