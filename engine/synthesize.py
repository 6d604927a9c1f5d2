"""Add checked unit tests to tasks that have none (engine/tasks/synthesize.py says how).

    python -m engine.synthesize --tasks my_tasks.jsonl --out runs/synth
    python -m engine.synthesize --tasks hf:./alpaca --columns instruction=question,reference=answer
    python -m engine.synthesize --tasks builtin-all --strip_tests --teacher.base_url URL --teacher.model M

The tasks come in any task format (a plain line needs `task_id`, `entry_point`, and `prompt` or
`signature` + `instruction`; a `reference` is used when present). It writes, into `--out`:
tasks.jsonl (the kept tasks with their tests, in the plain format, ready for
`--data.train_tasks`), synthesis.jsonl (per task: calls proposed, dropped and why, kill rate,
flags, status) and summary.json (counts and the teacher's tokens and cost). A rerun into the same
directory resumes: teacher replies come from the cache and sandbox runs from the run store.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from common.errors import PersdError
from engine.config import SynthesizeConfig, add_config_args, config_from_args
from engine.run.store import RunStore


def synthesize(cfg: SynthesizeConfig) -> dict:
    """The run: load, synthesise, write; returns the summary."""
    from engine.tasks.synthesize import synthesize_into
    from sandbox.pool import SandboxPool

    tasks = input_tasks(cfg)
    out = Path(cfg.out)
    with RunStore(out) as run, SandboxPool(cfg.sandbox) as sandbox:
        return synthesize_into(cfg, run, sandbox, tasks, out, this_run=True)[1]


def input_tasks(cfg: SynthesizeConfig) -> list:
    """The tasks as synthesis sees them: loaded, less what `strip_tests` / `strip_references`
    take away to measure synthesis against the tasks' own tests."""
    from engine.tasks import load_tasks

    tasks = load_tasks(cfg.tasks, cfg.limit, verify_seen=False, columns=cfg.columns,
                       require_tests=False)
    if cfg.strip_tests:
        tasks = [dataclasses.replace(t, tests=(), seen_tests=()) for t in tasks]
    if cfg.strip_references:
        tasks = [dataclasses.replace(t, reference=None) for t in tasks]
    return tasks


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m engine.synthesize", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(ap, SynthesizeConfig)
    ap.add_argument("--debug", action="store_true", help="tracebacks for user errors too")
    args = ap.parse_args(argv)
    try:
        cfg = config_from_args(args, SynthesizeConfig)
        if not cfg.tasks:
            ap.error("--tasks is required")
        summary = synthesize(cfg)
    except PersdError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
