"""pass@k evaluation of a base model, or base + LoRA adapter, through the student pool.

    python -m engine.evaluate --model qwen2.5-coder-0.5b-instruct --tasks humaneval --limit 20
    python -m engine.evaluate --adapter runs/x/adapter --eval.n 10 --eval.k 1,5 --eval.temperature 0.8
    python -m engine.evaluate --tasks humaneval --eval.rounds 2      # multi-step inference

Results go to `--out` (default runs/eval) under a name made from what was evaluated (model and
adapter content hashes, eval settings, task set): `eval-<id>-results.jsonl`, `-summary.json`.
Evaluating two adapters into one directory gives two results; re-running one reuses its samples.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from common.errors import ConfigError, PersdError
from engine import stages
from engine.config import EvalConfig, EvaluateConfig, StudentConfig, add_config_args, config_from_args
from engine.records import Attempt, EvalResult, Grade, Task
from engine.run.store import RunStore, content_hash, fingerprint
from engine.student import Decoding, LazyPool, Sampling, StudentPool


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
    model_id: str = ""                       # content hash of the model the sampler loaded
    adapter_id: str | None = None            # content hash of the adapter it applied
    without_samples: int = 0                 # tasks that got no sample (scored 0)


def summarise(results: Sequence[EvalResult], ks: Sequence[int]) -> dict[str, float]:
    """Mean pass@k over tasks; a task without samples scores 0 (never a crash). Samples the
    executor broke on are no verdict: a task all of whose samples faulted is left out of the
    mean, and one with some faulted is scored on the rest (pass@min(k, judged))."""
    def one(r: EvalResult, k: int) -> float:
        if r.n == 0:
            return 0.0
        if k > r.n and not r.faulted:
            raise ValueError(f"pass@{k} of task {r.task_id}: only {r.n} samples")
        return pass_at_k(r.n, r.correct, min(k, r.n))
    scored = [r for r in results if r.n or not r.faulted]
    return {f"pass@{k}": float(np.mean([one(r, k) for r in scored])) if scored else 0.0
            for k in ks}


def paired_bootstrap(a: dict[str, float], b: dict[str, float], resamples: int = 10000,
                     seed: int = 0) -> dict:
    """Mean per-task difference b - a over the tasks both have, with a 95% percentile bootstrap
    interval that resamples tasks (each task's pair kept together): the interval a reader needs
    to tell a change from noise when both runs were scored on the same tasks."""
    ids = sorted(set(a) & set(b))
    if not ids:
        raise ValueError("paired_bootstrap: the two evaluations share no task")
    d = np.array([b[i] - a[i] for i in ids])
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"tasks": len(ids), "diff": round(float(d.mean()), 4),
            "ci95": [round(float(lo), 4), round(float(hi), 4)],
            "within_noise": bool(lo <= 0 <= hi)}


def task_set_id(tasks: Sequence[Task]) -> str:
    """Content hash of a task set (prompts, tests, setup): results are only reused for it."""
    return fingerprint("tasks", list(tasks))


def eval_id(model_id: str, adapter_id: str | None, cfg: EvalConfig, student: StudentConfig,
            tasks: Sequence[Task]) -> str:
    """What was evaluated: model, adapter, eval settings, student decoding settings, task set."""
    dec = {k: getattr(student, k) for k in ("dtype", "max_model_len", "prompt_format", "seed")}
    return fingerprint("eval", model_id, adapter_id, cfg, dec, task_set_id(tasks))


def evaluate(pool: StudentPool, sandbox, tasks: Sequence[Task], cfg: EvalConfig,
             student: StudentConfig, run: RunStore, name: str, adapter: str | None = None,
             model_id: str = "") -> EvalSummary:
    """pass@k with optional multi-step inference (the paper's sec. 3.3).

    Round 0 samples n per task. Each later round shows the student, for every sample that fails
    the task's *seen* tests, its own code and the seen-test feedback (PersD-refine prompt) and takes
    its fix. Hidden tests score every round but never reach a prompt. A task without seen tests
    gets no feedback, so its samples stay as they are. Writes `<name>[-roundR]-attempts`,
    `-grades`, `-seen-grades` and `-results` JSONL into the run directory.

    Every sample is stored under a fingerprint of its request, `model_id` (the model's content
    hash) and the adapter's content hash, so evaluations of different models or adapters in one
    run directory never see each other's samples. The sampler reports what it loaded; a sample
    from another model or adapter than asked for is an error, never a result.
    """
    by_id = {t.task_id: t for t in tasks}
    adapter_id = content_hash(adapter) if adapter else None
    decoding = Decoding.of(student)

    def grade_stage(stage: str, atts: list[Attempt], seen_only: bool) -> dict[str, Grade]:
        return stages.grade_stage(run, stage, sandbox, [
            (a.attempt_id, by_id[a.task_id], a.code) for a in atts], seen_only)

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
        temperature = cfg.temperature if r == 0 or cfg.fix_temperature < 0 \
            else cfg.fix_temperature
        sampling = Sampling(n, temperature, cfg.top_p, cfg.max_tokens, student.seed + r,
                            student.prompt_format, adapter)
        # one submission per round: vLLM batches it continuously
        new = stages.attempt_stage(run, f"{tag}-attempts", pool, jobs, model_id=model_id,
                                   decoding=decoding, sampling=sampling)
        hidden.update(grade_stage(f"{tag}-grades", new, False))
        if r == 0:
            current = new
        else:
            fixed = {a.attempt_id.rsplit("~", 1)[0]: a for a in new}
            current = [fixed.get(a.attempt_id, a) for a in current]
        if r < cfg.rounds:
            seen = grade_stage(f"{tag}-seen-grades", current, True)
        per_task: dict[str, list[Grade]] = {t.task_id: [] for t in tasks}
        for a in current:
            per_task[a.task_id].append(hidden[a.attempt_id])
        # a sample the executor broke on (twice) has no verdict: it is not in n
        results = [EvalResult(tid, adapter, sum(not g.faulted for g in gs),
                              sum(g.passed for g in gs), r, tuple(g.status for g in gs),
                              model_id, adapter_id, sum(g.faulted for g in gs))
                   for tid, gs in per_task.items()]
        run.export(f"{tag}-results", results)
        per_round.append(summarise(results, cfg.k))
    missing = sum(1 for gs in per_task.values() if not gs) if tasks else 0
    return EvalSummary(adapter, len(tasks), cfg.n, per_round[-1], tuple(per_round), model_id,
                       adapter_id, missing)


def main(argv: list[str] | None = None) -> None:
    from engine.tasks import load_tasks

    ap = argparse.ArgumentParser(prog="python -m engine.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(ap, EvaluateConfig)   # the same config machinery as engine.distill
    ap.add_argument("--model", help="shorthand for --student.model")
    args = ap.parse_args(argv)
    if args.model:
        setattr(args, "student.model", args.model)
    try:
        cfg = config_from_args(args, EvaluateConfig)
        if cfg.adapter and not Path(cfg.adapter, "adapter_config.json").exists():
            raise ConfigError(f"adapter: {cfg.adapter} has no adapter_config.json")
        out = evaluate_into(Path(cfg.out), cfg.student.model, cfg.adapter or None,
                            load_tasks(cfg.tasks, cfg.limit, columns=cfg.columns), cfg.eval,
                            cfg.student,
                            task_spec=cfg.tasks)
    except PersdError as e:   # a bad setting, a missing model or task file, a run in use
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(out))


def evaluate_into(out_dir: Path, model: str, adapter: str | None, tasks: Sequence[Task],
                  cfg: EvalConfig, student: StudentConfig, pool=None, task_spec: str = "") -> dict:
    """Evaluate into `out_dir` under a name made from what is evaluated, and return (and write
    as `<name>-summary.json`) the result. `pool`: an open student pool (tests), else one is
    started when a sample is missing."""
    from engine.models import resolve_model
    from sandbox.config import SandboxConfig
    from sandbox.pool import SandboxPool

    model_dir = resolve_model(model)
    model_id = content_hash(model_dir) if Path(model_dir).is_dir() else f"hub:{model_dir}"
    adapter_id = content_hash(adapter) if adapter else None
    # results live under what was evaluated, so one directory holds many models and adapters
    name = f"eval-{eval_id(model_id, adapter_id, cfg, student, tasks)[:12]}"
    with RunStore(out_dir) as run, LazyPool(model_dir, student) as lazy, \
            SandboxPool(SandboxConfig()) as sb:
        s = evaluate(pool or lazy, sb, tasks, cfg, student, run, name, adapter, model_id)
    result = {"name": name, "model": model, "model_id": model_id, "adapter": adapter,
              "adapter_id": adapter_id, "tasks": task_spec, "n_tasks": s.tasks,
              "task_set_id": task_set_id(tasks), "eval": dataclasses.asdict(cfg),
              "pass_at": s.pass_at, "per_round": list(s.rounds),
              "without_samples": s.without_samples}
    (out_dir / f"{name}-summary.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
