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
    pass_at: dict[str, float]                # after the last round: "pass@1" -> mean over tasks
    rounds: tuple[dict[str, float], ...] = ()  # pass@k after each multi-step round (0 first)


def summarise(results: Sequence[EvalResult], ks: Sequence[int]) -> dict[str, float]:
    return {f"pass@{k}": float(np.mean([pass_at_k(r.n, r.correct, k) for r in results]))
            if results else 0.0 for k in ks}


def evaluate(pool: StudentPool, sandbox, tasks: Sequence[Task], cfg: EvalConfig,
             student: StudentConfig, run: RunDir, name: str, adapter: str | None = None
             ) -> EvalSummary:
    """pass@k with optional multi-step inference (the paper's sec. 3.3).

    Round 0 samples n per task. Each later round shows the student, for every sample that fails
    the task's *seen* tests, its own code and the seen-test feedback (PersD-refine prompt) and takes
    its fix. Hidden tests score every round but never reach a prompt. A task without seen tests
    gets no feedback, so its samples stay as they are. Writes `<name>[-roundR]-attempts`,
    `-grades`, `-seen-grades` and `-results` JSONL into the run directory.
    """
    by_id = {t.task_id: t for t in tasks}

    def grade(atts: list[Attempt], seen_only: bool) -> list[Grade]:
        return stages.grade(sandbox, [(a.attempt_id, by_id[a.task_id], a.code) for a in atts],
                            seen_only)

    current: list[Attempt] = []
    hidden: dict[str, Grade] = {}   # hidden-test grades of every sample of every round
    seen: dict[str, Grade] = {}     # seen-test grades of the current samples
    per_round = []
    for r in range(cfg.rounds + 1):
        tag = name if r == 0 else f"{name}-round{r}"
        if r == 0:
            jobs, n = stages.task_jobs(tasks), cfg.n
        else:
            jobs = [stages.refine_job(f"{a.attempt_id}~{r}", by_id[a.task_id],
                                      a.code or a.completion, seen[a.attempt_id].feedback)
                    for a in current if not seen[a.attempt_id].passed]
            n = 1
        run.stage(f"{tag}-attempts", Attempt, jobs, key=lambda j: j.job_id,
                  rkey=lambda a: a.attempt_id.rsplit("#", 1)[0],
                  compute=lambda chunk, n=n: stages.sample(
                      pool, chunk, n=n, temperature=cfg.temperature, top_p=cfg.top_p,
                      max_tokens=cfg.max_tokens, seed=student.seed + r,
                      prompt_format=student.prompt_format, adapter=adapter), batch=64)
        new = run.read(f"{tag}-attempts", Attempt)  # every sample (stage() keeps one per job)
        hidden.update({g.program_id: g for g in run.stage(
            f"{tag}-grades", Grade, new, key=lambda a: a.attempt_id, rkey=lambda g: g.program_id,
            compute=lambda c: grade(c, False), batch=256)})
        if r == 0:
            current = new
        else:
            fixed = {a.attempt_id.rsplit("~", 1)[0]: a for a in new}
            current = [fixed.get(a.attempt_id, a) for a in current]
        if r < cfg.rounds:
            seen = {g.program_id: g for g in run.stage(
                f"{tag}-seen-grades", Grade, current, key=lambda a: a.attempt_id,
                rkey=lambda g: g.program_id, compute=lambda c: grade(c, True), batch=256)}
        results = []
        for t in tasks:
            mine = [hidden[a.attempt_id] for a in current if a.task_id == t.task_id]
            results.append(EvalResult(t.task_id, adapter, len(mine), sum(g.passed for g in mine),
                                      r, tuple(g.status for g in mine)))
        run.rewrite(f"{tag}-results", results)
        per_round.append(summarise(results, cfg.k))
    return EvalSummary(adapter, len(tasks), cfg.n, per_round[-1], tuple(per_round))


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
    ap.add_argument("--rounds", type=int, default=0,
                    help="multi-step inference: extra rounds fixing samples that fail seen tests")
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--prompt-format", default="chat", choices=("chat", "completion"))
    ap.add_argument("--out", default="runs/eval", help="directory for per-task JSONL")
    args = ap.parse_args(argv)
    if args.adapter and not Path(args.adapter, "adapter_config.json").exists():
        raise SystemExit(f"--adapter: {args.adapter} has no adapter_config.json")
    ks = tuple(int(k) for k in args.k.split(","))
    cfg = EvalConfig(n=args.n, k=ks, temperature=args.temperature, max_tokens=args.max_tokens,
                     rounds=args.rounds)
    student = StudentConfig(model=args.model, prompt_format=args.prompt_format)
    tasks = load_tasks(args.tasks, args.limit)
    run = RunDir(args.out)
    with StudentPool(resolve_model(args.model), student) as pool, SandboxPool(SandboxConfig()) as sb:
        s = evaluate(pool, sb, tasks, cfg, student, run, "eval", args.adapter)
    print({"tasks": s.tasks, "n": s.n, **s.pass_at, "per_round": list(s.rounds)})


if __name__ == "__main__":
    main()
