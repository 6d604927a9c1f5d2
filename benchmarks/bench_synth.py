"""Synthesised tests against hand-written ones, on the built-in set.

    python benchmarks/bench_synth.py --attempts runs/quality/run --out runs/bench-synth
    python benchmarks/bench_synth.py --attempts RUN --base_url URL --model M --cross_check
    python benchmarks/bench_synth.py --attempts RUN --no_reference --out runs/bench-synth-noref

The built-in tasks (`builtin-all`, 220, each with a reference and hand-written tests) are
stripped of their tests and go through `python -m engine.synthesize` (the local
Qwen2.5-Coder-1.5B teacher unless `--base_url`). Then, on the tasks that kept a test set:

- the kill rate of the synthesised tests and of the hand-written tests on the same mutants of
  the reference (engine/tasks/mutants.py);
- the agreement of verdicts: every student attempt found in `--attempts` (a run directory's
  `attempts*.jsonl` views) graded by the hand-written tests and by the synthesised ones, as a
  confusion table, with a 95% Wilson interval on the agreement;
- with `--no_reference` (references stripped too, so the teacher's sampled solutions must
  agree): how many of the agreed solutions that became references pass the hand-written tests.

Writes `<out>/bench_synth.json` and prints the table. Resumable: the synthesis has its own run
store and teacher cache under `<out>/synth`.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.config import SynthConfig, SynthesizeConfig, TeacherConfig  # noqa: E402
from engine.records import Attempt, Program  # noqa: E402
from engine.run.store import read_view  # noqa: E402


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if not n:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (round(c - h, 4), round(c + h, 4))


def attempts_of(run: Path) -> list[Attempt]:
    out = []
    for view in sorted(run.glob("attempts*.jsonl")):
        out += read_view(run, view.stem, Attempt)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attempts", required=True, help="run directory with attempts*.jsonl")
    ap.add_argument("--out", default="runs/bench-synth")
    ap.add_argument("--tasks", default="builtin-all")
    ap.add_argument("--limit", type=int, default=0, help="the first N tasks (0 = all)")
    ap.add_argument("--agree", type=float, default=SynthConfig().agree,
                    help="with --no_reference: share of the votes that must agree (synth.agree)")
    ap.add_argument("--base_url", default="")
    ap.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--cross_check", action="store_true")
    ap.add_argument("--no_reference", action="store_true",
                    help="strip the references too: the teacher's solutions must agree")
    ap.add_argument("--mutants", type=int, default=20)
    ap.add_argument("--kv_cache_gb", type=int, default=4,
                    help="KV cache of the local teacher server (GiB)")
    args = ap.parse_args()

    from engine.prompts import program_code
    from engine.synthesize import synthesize
    from engine.tasks import load_file, load_tasks
    from engine.tasks.mutants import kill_rate
    from sandbox.config import SandboxConfig
    from sandbox.pool import SandboxPool

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    cfg = SynthesizeConfig(tasks=args.tasks, limit=args.limit, strip_tests=True,
                           out=str(out / "synth"),
                           strip_references=args.no_reference,
                           synth=SynthConfig(cross_check=args.cross_check, mutants=args.mutants,
                                             agree=args.agree),
                           teacher=TeacherConfig(base_url=args.base_url, model=args.model,
                                                 concurrency=args.concurrency,
                                                 server_kv_cache_gb=args.kv_cache_gb))
    summary = synthesize(cfg)
    seconds = round(time.monotonic() - t0, 1)
    original = {t.task_id: t for t in load_tasks(args.tasks, args.limit, verify_seen=False)}
    kept = {t.task_id: t for t in load_file(out / "synth" / "tasks.jsonl")}
    reports = {r["task_id"]: r for r in map(json.loads, (out / "synth" / "synthesis.jsonl").open())}
    attempts = [a for a in attempts_of(Path(args.attempts)) if a.task_id in kept and a.code]

    with SandboxPool(SandboxConfig()) as sandbox:
        hand = {k.task_id: k for k in kill_rate([original[t] for t in kept], sandbox,
                                                args.mutants)}
        progs = []
        for a in attempts:
            for side, task in (("hand", original[a.task_id]), ("synth", kept[a.task_id])):
                progs.append(Program(f"{a.attempt_id}|{side}", program_code(task, a.code),
                                     task.tests, task.setup, 10.0))
        grades = {g.program_id: g.passed for g in sandbox.grade(progs)} if progs else {}
        # without a reference, the agreed teacher solution became the task's reference: does
        # it pass the hand-written tests?
        majority = [t for t in kept if reports[t]["reference"] == "teacher-majority"]
        majority_ok = sum(g.passed for g in sandbox.grade([
            Program(f"{t}|majority", program_code(original[t], kept[t].reference or ""),
                    original[t].tests, original[t].setup, 10.0) for t in majority]))

    both = [(grades[f"{a.attempt_id}|hand"], grades[f"{a.attempt_id}|synth"]) for a in attempts]
    table = {"hand pass, synth pass": sum(h and s for h, s in both),
             "hand fail, synth fail": sum(not h and not s for h, s in both),
             "hand pass, synth fail": sum(h and not s for h, s in both),
             "hand fail, synth pass": sum(not h and s for h, s in both)}
    agree = table["hand pass, synth pass"] + table["hand fail, synth fail"]
    paired = [(reports[t]["kill_rate"], hand[t].rate) for t in kept
              if reports[t]["kill_rate"] is not None and hand[t].rate is not None]
    result = {
        "tasks": summary["tasks"], "kept": summary["kept"], "status": summary["status"],
        "tests_kept": summary["tests_kept"], "calls_dropped": summary["calls_dropped"],
        "by_reference": summary["by_reference"],
        "kill_rate": {"tasks": len(paired),
                      "synthesised": round(sum(s for s, _ in paired) / len(paired), 4)
                      if paired else None,
                      "hand_written": round(sum(h for _, h in paired) / len(paired), 4)
                      if paired else None},
        "verdicts": {"attempts": len(both), **table,
                     "agreement": round(agree / len(both), 4) if both else None,
                     "agreement_ci95": wilson(agree, len(both))},
        "majority_references": {"tasks": len(majority), "pass_hand_written": majority_ok},
        "teacher": summary["teacher"], "synthesis_seconds": seconds,
        "command": " ".join(sys.argv)}
    (out / "bench_synth.json").write_text(json.dumps(result, indent=2))
    v = result["verdicts"]
    print(f"tasks {result['tasks']}, kept {result['kept']} ({result['status']}), "
          f"tests {result['tests_kept']}, synthesis {seconds} s")
    print(f"kill rate on {len(paired)} tasks: synthesised {result['kill_rate']['synthesised']}, "
          f"hand-written {result['kill_rate']['hand_written']}")
    print("| | synth pass | synth fail |\n|---|---:|---:|")
    print(f"| hand pass | {table['hand pass, synth pass']} | {table['hand pass, synth fail']} |")
    print(f"| hand fail | {table['hand fail, synth pass']} | {table['hand fail, synth fail']} |")
    print(f"agreement {v['agreement']} on {v['attempts']} attempts (95% {v['agreement_ci95']})")
    if majority:
        print(f"teacher-majority references passing the hand-written tests: {majority_ok} of "
              f"{len(majority)}")


if __name__ == "__main__":
    main()
