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
from engine.records import Attempt, Grade, Refinement, to_json
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
                              pool, chunk, n=st.samples, temperature=st.temperature,
                              top_p=st.top_p, max_tokens=st.max_tokens, seed=st.seed,
                              prompt_format=st.prompt_format))
                attempts = {a.attempt_id: a for a in run.read("attempts", Attempt)}
            with timed(timings, "2-grade"):
                grades = {g.program_id: g for g in run.stage(
                    "grades", Grade, list(attempts.values()), key=lambda a: a.attempt_id,
                    rkey=lambda g: g.program_id, compute=lambda chunk: sandbox.grade(
                        stages.programs_for([(a.attempt_id, tasks[a.task_id], a.code)
                                             for a in chunk], timeout_s=cfg.sandbox.timeout_s)),
                    batch=256)}
            with timed(timings, "7a-eval-before"):
                before = evaluate(pool, sandbox, eval_tasks, cfg.eval, cfg.student, run,
                                  "eval-before")

        failed = [a for a in attempts.values() if not grades[a.attempt_id].passed]
        summary["attempts"] = {"tasks": len(train_tasks), "samples": len(attempts),
                               "passed": len(attempts) - len(failed), "failed": len(failed)}

        with teacher_endpoint(cfg, run) as (url, model, identity):
            teacher = Teacher(cfg.teacher, url, model, Path(run.path) / "teacher-cache.jsonl",
                              identity=identity)
            import asyncio
            asyncio.run(teacher.check_reachable())
            with timed(timings, "3-refine"):
                items = [(tasks[a.task_id], a, grades[a.attempt_id]) for a in failed]
                refinements = run.stage(
                    "refinements", Refinement, items, key=lambda it: it[1].attempt_id,
                    rkey=lambda r: r.attempt_id,
                    compute=lambda chunk: stages.refine(teacher, cfg.teacher.template, chunk),
                    batch=256)
                stand = []
                if cfg.teacher.stand:
                    stand = run.stage(
                        "stand-answers", Refinement, [(t, None, None) for t in train_tasks],
                        key=lambda it: it[0].task_id, rkey=lambda r: r.task_id,
                        compute=lambda chunk: stages.refine(teacher, cfg.teacher.template, chunk),
                        batch=256)

        with timed(timings, "4-verify"):
            all_refs = [r for r in refinements + stand if r.code is not None]
            verified = {g.program_id: g for g in run.stage(
                "verified", Grade, all_refs, key=lambda r: r.refinement_id,
                rkey=lambda g: g.program_id, compute=lambda chunk: sandbox.grade(
                    stages.programs_for([(r.refinement_id, tasks[r.task_id], r.code)
                                         for r in chunk], timeout_s=cfg.sandbox.timeout_s)),
                batch=256)}

        with timed(timings, "5-datasets"):
            datasets = stages.build_datasets(tasks, attempts, grades, refinements + stand, verified)
            for name, examples in datasets.items():
                run.rewrite(name, examples)

        def tokens(recs):
            return {"calls": len(recs), "cached": sum(r.cached for r in recs),
                    "prompt_tokens": sum(r.prompt_tokens for r in recs),
                    "completion_tokens": sum(r.completion_tokens for r in recs),
                    "extraction_failed": sum(r.code is None for r in recs),
                    "verified": sum(verified.get(r.refinement_id, None) is not None
                                    and verified[r.refinement_id].passed for r in recs)}
        summary["teacher"] = {"refine": tokens(refinements), "stand": tokens(stand),
                              "calls_sent_this_run": teacher.calls}
        summary["datasets"] = {k: len(v) for k, v in datasets.items()}
        summary["pass_before"] = before.pass_at

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
