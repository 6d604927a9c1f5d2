"""Kill soak: SIGKILL the real driver at many random points, resume each time, and check that
every cycle ends with exactly what an uninterrupted run produced.

    python benchmarks/soak_kill.py --kills 50 --out /tmp/soak      # ~30-60 min on 2 cores

Tiny local student in vLLM, the scripted teacher over HTTP (in this process), real sandbox, real
trainer. A reference run records every fault point it reaches (engine/run/faults.py). Each kill is
either at a random one of those points (mid-transaction, mid-export, a teacher reply just made
durable, a training step) or after a random delay (anywhere, mid-request included). A cycle
resumes its run directory until a driver finishes, then compares; the next cycle starts afresh.
Prints one line per kill and a summary, and writes `<out>/soak.json`.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.config import DataConfig, EvalConfig, RunConfig, StudentConfig, TeacherConfig  # noqa: E402
from engine.tasks import BUILTIN_PATH, load_file, load_tasks  # noqa: E402
from tests.killing import datasets, duplicate_requests, run_driver, stable_summary  # noqa: E402
from tests.tiny import SCRIPTED_TEACHER, ScriptedTeacher, build_tiny_model  # noqa: E402
from train.config import TrainConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--tasks", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--concurrency", type=int, default=4, help="teacher requests in flight")
    ap.add_argument("--max-delay", type=float, default=60.0,
                    help="kills by time fall in 3 s..this (a resumed driver starts where the "
                         "last one stopped, so short delays still reach every stage)")
    ap.add_argument("--out", default="/tmp/persd-soak")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = out / "tiny"
    if not (model / "config.json").exists():
        corpus = [t.prompt + (t.reference or "") for t in load_tasks("builtin-all")] * 3
        build_tiny_model(model, corpus)
    task_file = out / "tasks.jsonl"
    task_file.write_bytes(b"\n".join(BUILTIN_PATH.read_bytes().splitlines()[:args.tasks]) + b"\n")
    tasks = load_file(task_file)
    student = StudentConfig(model=str(model), dtype="float32", kv_cache_gb=1, cpu_threads="all",
                            max_tokens=48, enforce_eager=True, samples=2, temperature=0.8)

    def cfg(run_dir: Path, url: str) -> RunConfig:
        return RunConfig(
            run_dir=str(run_dir), student=student,
            teacher=TeacherConfig(base_url=url, model="scripted", concurrency=args.concurrency,
                                  **SCRIPTED_TEACHER),
            data=DataConfig(train_tasks=str(task_file), train_limit=0,
                            eval_tasks=str(task_file), eval_limit=3),
            eval=EvalConfig(n=2, k=(1, 2), temperature=0.8, max_tokens=32),
            train=TrainConfig(epochs=2, lr=1e-3, batch_tokens=1024, save_every=2))

    log = out / "drivers.log"
    with ScriptedTeacher(tasks) as teacher:
        ref_dir, points_file = out / "reference", out / "points.txt"
        if not (ref_dir / "summary.json").exists():
            points_file.unlink(missing_ok=True)
            done = run_driver(cfg(ref_dir, teacher.url), log, fault_log=points_file)
            assert done.returncode == 0, f"reference run failed: see {log}"
            (out / "reference-seconds.txt").write_text(f"{done.seconds:.1f}")
        ref_seconds = float((out / "reference-seconds.txt").read_text())
        ref_seconds = min(ref_seconds, args.max_delay)  # kills by time: 3 s..this
        points = [p for p in points_file.read_text().split() if not p.startswith("start:")]
        reference = json.loads((ref_dir / "summary.json").read_text())
        ref_data = datasets(ref_dir)

    kills, cycles, rows = 0, [], []
    t0 = time.monotonic()
    while kills < args.kills:
        with ScriptedTeacher(tasks) as teacher:  # a fresh server counts this cycle's requests
            run_dir = out / f"cycle{len(cycles)}"
            c, cycle_kills = cfg(run_dir, teacher.url), 0
            while True:
                if rng.random() < 0.5:
                    how = {"kill_at": rng.choice(points)}
                else:
                    how = {"kill_after_s": rng.uniform(3.0, ref_seconds)}
                res = run_driver(c, log, **how)
                killed = res.returncode == -9
                rows.append({"cycle": len(cycles), **how, "killed": killed,
                             "seconds": round(res.seconds, 1), "orphans": res.orphans})
                print(json.dumps(rows[-1]), flush=True)
                if killed:
                    kills += 1
                    cycle_kills += 1
                    continue
                assert res.returncode == 0, f"driver failed: see {log}"
                break
            summary = json.loads((run_dir / "summary.json").read_text())
            cycles.append({
                "kills": cycle_kills,
                "summary_equal": stable_summary(summary) == stable_summary(reference),
                "datasets_equal": datasets(run_dir) == ref_data,
                "teacher_requests": len(teacher.requests),
                "answered_twice": duplicate_requests(teacher.requests)})
            print(json.dumps(cycles[-1]), flush=True)
    result = {"kills": kills, "cycles": cycles, "minutes": round((time.monotonic() - t0) / 60, 1),
              "orphans": sum(len(r["orphans"]) for r in rows),
              "all_equal": all(c["summary_equal"] and c["datasets_equal"] for c in cycles),
              "answered_twice": sum(c["answered_twice"] for c in cycles),
              "kills_at_points": sum(1 for r in rows if r["killed"] and "kill_at" in r),
              "kills_by_time": sum(1 for r in rows if r["killed"] and "kill_after_s" in r),
              "teacher_concurrency": args.concurrency}
    (out / "soak.json").write_text(json.dumps({"result": result, "rows": rows}, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
