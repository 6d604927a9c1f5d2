"""One pass of personalised distillation, end to end.

    python -m engine.distill                       # the embedded default, offline, on this machine
    python -m engine.distill --data.train_limit 200 --eval.n 10 --eval.k 1,5 --eval.temperature 0.8
    python -m engine.distill --teacher.base_url https://api.openai.com/v1 --teacher.model gpt-4o-mini
    python -m engine.distill --run_dir runs/x      # resume a killed run: finished work is skipped

Stages (each writes JSONL records into the run directory as it goes):
 1 attempt   the student samples code for every training task (vLLM in Ray actors)
 2 grade     attempts run against the tasks' tests in the sandbox pool
 3 refine    the teacher rectifies failures given the student's code and the error
 4 verify    refinements run against the same tests; only passing ones are kept
 5 datasets  PersD, PersD-refine, PersD-combined, StanD, InpD as prompt/completion JSONL
 6 train     LoRA fine-tune in a separate process -> adapter/
 7 evaluate  pass@k before and after (adapter through vLLM's LoRA support)
 8 report    summary.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from engine import stages
from engine.config import RunConfig, add_config_args, config_from_args, to_dict
from engine.records import Attempt, Grade, Refinement
from engine.runlog import RunDir


@contextmanager
def timed(timings: dict[str, float], name: str):
    t0 = time.monotonic()
    print(f"== {name}", file=sys.stderr, flush=True)
    yield
    timings[name] = round(timings.get(name, 0.0) + time.monotonic() - t0, 1)


@contextmanager
def teacher_endpoint(cfg: RunConfig, run: RunDir):
    """(base_url, model name, cache identity): the configured endpoint, or a local vLLM server."""
    if cfg.teacher.base_url:
        yield cfg.teacher.base_url, cfg.teacher.model, cfg.teacher.base_url
        return
    from engine.models import resolve_model
    from engine.server import LocalServer

    model_dir = resolve_model(cfg.teacher.model)
    server = LocalServer(model_dir, cfg.teacher.model, run.path / "teacher-server.log",
                         kv_cache_gb=cfg.teacher.server_kv_cache_gb,
                         startup_s=cfg.teacher.server_startup_s)
    with server as url:
        # the cache identity must not contain the random port, or a re-run would miss the cache
        yield url, cfg.teacher.model, f"local:{model_dir}"


@contextmanager
def _student(pool, model_dir: str, cfg: RunConfig):
    """The caller's pool when given (tests, notebooks: one engine serves every stage), else a new
    one that is closed after use, so its memory and cores are free for the teacher and trainer."""
    if pool is not None:
        yield pool
        return
    from engine.student import StudentPool

    with StudentPool(model_dir, cfg.student) as new:
        yield new


def run_distill(cfg: RunConfig, student_pool=None) -> dict:
    from engine.evaluate import evaluate
    from engine.models import resolve_model
    from engine.tasks import load_tasks
    from engine.teacher import Teacher
    from sandbox.pool import SandboxPool

    run = RunDir(cfg.run_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    (run.path / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    print(f"run directory: {run.path}", file=sys.stderr)
    timings: dict[str, float] = {}
    summary: dict = {"run_dir": str(run.path), "dataset": cfg.dataset}

    with timed(timings, "0-setup"):
        train_tasks = load_tasks(cfg.data.train_tasks, cfg.data.train_limit)
        eval_tasks = load_tasks(cfg.data.eval_tasks, cfg.data.eval_limit)
        student_dir = resolve_model(cfg.student.model)
        tasks = {t.task_id: t for t in train_tasks}
    sandbox = SandboxPool(cfg.sandbox)
    try:
        with _student(student_pool, student_dir, cfg) as pool:
            with timed(timings, "1-attempt"):
                st = cfg.student
                run.stage("attempts", Attempt, train_tasks, key=lambda t: t.task_id,
                          rkey=lambda a: a.task_id,
                          compute=lambda chunk: stages.sample(
                              pool, stages.task_jobs(chunk), n=st.samples, temperature=st.temperature,
                              top_p=st.top_p, max_tokens=st.max_tokens, seed=st.seed,
                              prompt_format=st.prompt_format))
                attempts = {a.attempt_id: a for a in run.read("attempts", Attempt)}
            with timed(timings, "2-grade"):
                grades = {g.program_id: g for g in run.stage(
                    "grades", Grade, list(attempts.values()), key=lambda a: a.attempt_id,
                    rkey=lambda g: g.program_id, compute=lambda chunk: stages.grade(
                        sandbox, [(a.attempt_id, tasks[a.task_id], a.code) for a in chunk]),
                    batch=256)}
            with timed(timings, "7a-eval-before"):
                before = evaluate(pool, sandbox, eval_tasks, cfg.eval, cfg.student, run,
                                  "eval-before")

        failed = [a for a in attempts.values() if not grades[a.attempt_id].passed]
        summary["attempts"] = {"tasks": len(train_tasks), "samples": len(attempts),
                               "passed": len(attempts) - len(failed), "failed": len(failed)}

        with teacher_endpoint(cfg, run) as (url, model, identity):
            import asyncio

            from engine.teacher import Usage

            tc = cfg.teacher
            teacher = Teacher(tc, url, model, Path(run.path) / "teacher-cache.jsonl",
                              identity=identity)
            asyncio.run(teacher.check_reachable())

            def ask(name: str, jobs: list, stage: str) -> dict[str, Refinement]:
                with timed(timings, "3-refine"):
                    return {r.refinement_id: r for r in run.stage(
                        name, Refinement, jobs, key=lambda j: j.job_id,
                        rkey=lambda r: r.refinement_id, batch=256,
                        compute=lambda chunk: stages.refine(teacher, chunk, stage=stage))}

            def verify(refs: list[Refinement]) -> dict[str, Grade]:
                with timed(timings, "4-verify"):
                    return {g.program_id: g for g in run.stage(
                        "verified", Grade, [r for r in refs if r.code is not None],
                        key=lambda r: r.refinement_id, rkey=lambda g: g.program_id, batch=256,
                        compute=lambda chunk: stages.grade(
                            sandbox, [(r.refinement_id, tasks[r.task_id], r.code)
                                      for r in chunk]))}

            # 3-4 per round: refine the failures; refinements that fail verification go back
            # with their own error next round (ids <attempt>>r<round>.<sample>, resumable)
            rounds = [stages.first_round_jobs(failed, tasks, grades, tc.template, tc.samples)]
            while True:
                refs = ask("refinements", rounds[-1], "refine")
                if len(rounds) == tc.rounds:
                    break
                rounds.append(stages.next_round_jobs(rounds[-1], refs, verify(list(refs.values()))))
            stand_round = stages.stand_jobs(train_tasks) if tc.stand else []
            stand_refs = ask("stand-answers", stand_round, "stand") if tc.stand else {}
        refinements, stand = list(refs.values()), list(stand_refs.values())
        verified = verify(refinements + stand)

        with timed(timings, "5-datasets"):
            datasets = stages.build_datasets(tasks, attempts, grades, stages.one_per_attempt(
                refinements + stand, verified), verified)
            for name, examples in datasets.items():
                run.rewrite(name, examples)

        def passed(rid: str) -> bool:
            return rid in verified and verified[rid].passed

        def tokens(recs: list[Refinement], jobs: list, stage: str) -> dict:
            ids = {r.refinement_id for r in recs}
            pt, ct = sum(r.prompt_tokens for r in recs), sum(r.completion_tokens for r in recs)
            return {"calls": sum(j.job_id in ids for j in jobs),  # requests answered
                    "samples": len(recs), "cached": sum(r.cached for r in recs),
                    "prompt_tokens": pt, "completion_tokens": ct,
                    "cost_usd": round(teacher.cost(pt, ct), 6),  # every answer used, at list price
                    "extraction_failed": sum(r.code is None for r in recs),
                    "verified": sum(passed(r.refinement_id) for r in recs),
                    "this_run": asdict(teacher.usage.get(stage, Usage()))}  # incl. failed by reason
        summary["teacher"] = {
            "model": model, "price_per_mtok": [teacher.price_in, teacher.price_out],
            "refine": {**tokens(refinements, [j for js in rounds for j in js], "refine"),
                       "verified_by_round": [sum(passed(i) for j in js for i in j.ids)
                                             for js in rounds]},
            "stand": tokens(stand, stand_round, "stand"),
            "calls_sent_this_run": teacher.calls, "spent_usd_this_run": round(teacher.spent_usd, 6)}
        summary["datasets"] = {k: len(v) for k, v in datasets.items()}
        summary["pass_before"] = before.pass_at
        if cfg.eval.rounds:
            summary["pass_before_per_round"] = list(before.rounds)

        if not cfg.skip_train:
            train_file = run.file(cfg.dataset)
            if not datasets[cfg.dataset]:
                raise RuntimeError(f"dataset {cfg.dataset!r} is empty: no verified examples to "
                                   "train on (see refinements.jsonl and verified.jsonl)")
            with timed(timings, "6-train"):
                adapter = train_subprocess(cfg, train_file, student_dir, run.path / "train")
            with timed(timings, "7b-eval-after"):
                with _student(student_pool, student_dir, cfg) as pool:
                    after = evaluate(pool, sandbox, eval_tasks, cfg.eval, cfg.student, run,
                                     "eval-after", adapter=str(adapter))
            summary["adapter"] = str(adapter)
            summary["pass_after"] = after.pass_at
            if cfg.eval.rounds:
                summary["pass_after_per_round"] = list(after.rounds)
    finally:
        sandbox.close()
    summary["eval"] = {"tasks": len(eval_tasks), "n": cfg.eval.n, "set": cfg.data.eval_tasks}
    summary["seconds_per_stage"] = timings
    (run.path / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def train_subprocess(cfg: RunConfig, data: Path, model: str, out: Path) -> Path:
    """The trainer runs as its own process (never sharing one with vLLM). A finished adapter
    (train-summary.json written last) is reused when a run is resumed."""
    if (out / "train-summary.json").exists() and (out / "adapter" / "adapter_config.json").exists():
        return out / "adapter"
    args = [sys.executable, "-m", "train.lora", "--data", str(data), "--model", model,
            "--out", str(out)]
    for k, v in asdict(cfg.train).items():
        args += [f"--{k}", ",".join(v) if isinstance(v, tuple) else str(v)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(args, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"trainer failed with exit code {done.returncode} (command: "
                           f"{' '.join(args)})")
    return out / "adapter"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m engine.distill", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(ap)
    args = ap.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except (ValueError, FileNotFoundError) as e:
        ap.error(str(e))
    summary = run_distill(cfg)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
