"""Refinement yield per teacher setting, on one fixed set of failed attempts.

    python benchmarks/bench_yield.py --from runs/default-3 --limit 40 --out runs/yield
    python benchmarks/bench_yield.py --from runs/x --base_url URL --model M --settings two-turn

`--from` is a run directory whose attempts were graded (any `python -m engine.distill` run, e.g.
with `--skip_train true`); its config names the task pool. Without `--base_url` the local
Qwen2.5-Coder-1.5B teacher is served by vLLM on 127.0.0.1. Each setting runs the refine rounds
of the engine itself (engine/stages/) into its own run store under `--out` (resumable; its
own teacher cache, so its time is its own) and reports: failures, teacher requests, verified
yield (failures with at least one passing refinement), unchanged replies, teacher tokens per
verified refinement, seconds. The same teacher's StanD pass rate on the same failed tasks is
the bar a refinement setting must clear. Writes `<out>/yield.json`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import stages  # noqa: E402
from engine.config import RunConfig, TeacherConfig  # noqa: E402
from engine.records import Attempt, Grade  # noqa: E402
from engine.run.store import RunStore, read_view  # noqa: E402

# name -> overrides of the base below (greedy, one sample, refine-feedback)
SETTINGS = {
    "feedback": dict(template="refine-feedback", rounds=1),
    "nofeedback": dict(template="refine-nofeedback", rounds=1),
    "reference": dict(template="reference-guided", rounds=1),
    "two-turn": dict(template="reference-two-turn", rounds=1),
    "two-turn-r2": dict(template="reference-two-turn", rounds=2),
    "two-turn-n4": dict(template="reference-two-turn", rounds=1, samples=4, temperature=0.8),
    "feedback-r2": dict(template="refine-feedback", rounds=2),
    "feedback-n4": dict(template="refine-feedback", rounds=1, samples=4, temperature=0.8),
    "two-turn-n4-r2": dict(template="reference-two-turn", rounds=2, samples=4, temperature=0.8),
    "edit": dict(template="reference-edit", rounds=1),
    "two-turn-edit-r2": dict(template="reference-two-turn", retry_template="reference-edit",
                             rounds=2),
    "edit-r2": dict(template="reference-edit", rounds=2),
    "edit-n4": dict(template="reference-edit", rounds=1, samples=4, temperature=0.8),
    "edit-n4-r2": dict(template="reference-edit", rounds=2, samples=4, temperature=0.8),
    "two-turn-n4-edit-r2": dict(template="reference-two-turn", retry_template="reference-edit",
                                rounds=2, samples=4, temperature=0.8),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="source", required=True, help="run directory with grades")
    ap.add_argument("--limit", type=int, default=0, help="first N failed attempts (0 = all)")
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names")
    ap.add_argument("--base_url", default="")
    ap.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--out", default="runs/yield")
    args = ap.parse_args()

    from engine.tasks import load_tasks
    from engine.teacher.endpoint import teacher_endpoint
    from sandbox.pool import SandboxPool

    source = Path(args.source)
    cfg = json.loads((source / "config.json").read_text())
    tasks = {t.task_id: t for t in load_tasks(cfg["data"]["train_tasks"],
                                              cfg["data"]["train_limit"])}
    grades = {g.program_id: g for g in read_view(source, "grades", Grade)}
    failed = [a for a in read_view(source, "attempts", Attempt)
              if a.task_id in tasks and not grades[a.attempt_id].passed]
    failed = failed[: args.limit or None]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # settings override a fixed base (greedy, one sample), not the engine's current defaults
    base = TeacherConfig(base_url=args.base_url, model=args.model, concurrency=args.concurrency,
                         template="refine-feedback", samples=1, temperature=0.0)
    run_cfg = RunConfig(teacher=base)
    rows, passing = {}, {}
    with SandboxPool(RunConfig().sandbox) as sandbox, \
            teacher_endpoint(run_cfg, SimpleNamespace(path=out)) as endpoint:
        names = args.settings.split(",")
        for name in names + ["stand"]:
            tc = replace(base, **SETTINGS.get(name, {}))
            with RunStore(out / name) as store:
                teacher = endpoint.teacher(tc, store.path / "teacher-cache.jsonl")
                asyncio.run(teacher.check_reachable())
                t0 = time.monotonic()
                if name == "stand":
                    jobs = stages.stand_jobs([tasks[t] for t in sorted({a.task_id for a in failed})])
                    refs = stages.refine_stage(store, "stand-answers", teacher, jobs, "stand")
                    requests = len(jobs)
                else:
                    refs, rounds = stages.refine_rounds(store, teacher, sandbox, failed, tasks,
                                                        grades, tc)
                    requests = sum(len(js) for js in rounds)
                verified = stages.verify_stage(store, sandbox, list(refs.values()), tasks)
                seconds = time.monotonic() - t0
            ok = [r for r in refs.values() if verified.get(r.refinement_id) and
                  verified[r.refinement_id].passed]
            passing[name] = ok
            units = ({r.task_id for r in ok} if name == "stand" else {r.attempt_id for r in ok})
            denom = len({a.task_id for a in failed}) if name == "stand" else len(failed)
            tokens = sum(r.prompt_tokens + r.completion_tokens for r in refs.values())
            rows[name] = {"failures": denom, "requests": requests, "verified": len(units),
                          "yield": round(len(units) / denom, 3) if denom else 0.0,
                          "unchanged": sum(r.unchanged for r in refs.values()),
                          "replies": len(refs), "tokens": tokens,
                          "tokens_per_verified": round(tokens / len(ok)) if ok else None,
                          "seconds": round(seconds, 1)}
            print(json.dumps({name: rows[name]}), flush=True)
    personalisation(rows, passing, {a.attempt_id: a for a in failed})
    (out / "yield.json").write_text(json.dumps({"source": str(source), "teacher": args.model,
                                                "rows": rows}, indent=2))
    print(f"{'setting':<14}{'yield':>7}{'verified':>10}{'failures':>10}{'unchanged':>11}"
          f"{'tok/verified':>14}{'s':>7}")
    for name, r in rows.items():
        print(f"{name:<14}{r['yield']:>7.3f}{r['verified']:>10}{r['failures']:>10}"
              f"{r['unchanged']:>11}{str(r['tokens_per_verified']):>14}{r['seconds']:>7}")


def personalisation(rows: dict, passing: dict, attempts: dict) -> None:
    """Per setting: the mean similarity (difflib on normalised code) of the kept refinement (the
    closest passing one per attempt) to the student's attempt, and the share of attempts whose
    refinement is closer to it than the same teacher's verified StanD answer for the task."""
    from engine.stages.personal import similarity

    stand = {r.task_id: r.code for r in passing.get("stand", [])}
    for name, ok in passing.items():
        if name == "stand":
            continue
        best: dict[str, float] = {}
        for r in ok:
            sim = similarity(attempts[r.attempt_id].code, r.code).text
            best[r.attempt_id] = max(sim, best.get(r.attempt_id, -1.0))
        vs = [(s, similarity(attempts[a].code, stand[attempts[a].task_id]).text)
              for a, s in best.items() if attempts[a].task_id in stand]
        rows[name]["similarity"] = round(sum(best.values()) / len(best), 3) if best else None
        rows[name]["stand_similarity"] = round(sum(t for _, t in vs) / len(vs), 3) if vs else None
        rows[name]["closer_than_stand"] = (round(sum(s > t for s, t in vs) / len(vs), 3)
                                           if vs else None)
        print(json.dumps({name: {k: rows[name][k] for k in (
            "similarity", "stand_similarity", "closer_than_stand")}}), flush=True)


if __name__ == "__main__":
    main()
