"""Verified personalised examples per hour: streaming vs staged execution, in one run.

    python benchmarks/bench_pipeline.py                        # 0.5B student, 48 tasks
    python benchmarks/bench_pipeline.py --student /path/tiny --tasks 24 --latency 1,3

Both modes run the same distillation (datasets built, no fine-tune: `skip_train`) on the same
training tasks (the built-in train split) and held-out set (`builtin-heldout`), with the real
student in vLLM, the real sandbox, and a teacher endpoint that answers after a random 1-3 s
(seeded per request) from the task's reference, wrong on purpose for a third of the tasks
(tests/tiny.py's scripted teacher): a remote API, rate-limited to `--concurrency` requests in
flight. Each mode gets its own run directory and teacher cache, so neither reuses the other's
work; the staged mode runs first. Prints per mode: wall seconds to the datasets, verified PersD
examples, examples per hour, the seconds of each stage (busy time: the streamed stages overlap,
so they can sum to more than the wall time), and the ratio streaming / staged.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.config import DataConfig, EvalConfig, RunConfig, StudentConfig, TeacherConfig  # noqa: E402
from tests.tiny import ScriptedTeacher  # noqa: E402


class SlowTeacher(ScriptedTeacher):
    """The scripted teacher, answering each request after lo-hi seconds (seeded by its text)."""

    def __init__(self, tasks, lo: float, hi: float):
        super().__init__(tasks)
        self.lo, self.hi = lo, hi

    def answer(self, user: str) -> str:
        seed = int.from_bytes(hashlib.sha256(user.encode()).digest()[:8], "big")
        time.sleep(random.Random(seed).uniform(self.lo, self.hi))
        return super().answer(user)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--tasks", type=int, default=48, help="training tasks")
    ap.add_argument("--eval", type=int, default=32, help="held-out tasks evaluated before")
    ap.add_argument("--latency", default="1,3", help="teacher latency range, seconds")
    ap.add_argument("--concurrency", type=int, default=8, help="teacher requests in flight")
    ap.add_argument("--samples", type=int, default=2, help="student attempts per task")
    ap.add_argument("--chunk", type=int, default=8, help="streaming: tasks per chunk")
    ap.add_argument("--out", default="", help="keep the run directories here")
    args = ap.parse_args()

    from engine.distill import run_distill
    from engine.tasks import load_tasks

    lo, hi = (float(x) for x in args.latency.split(","))
    tasks = load_tasks("builtin", args.tasks)
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-pipeline-"))
    results = {}
    for mode in ("staged", "streaming"):
        with SlowTeacher(tasks, lo, hi) as teacher:
            cfg = RunConfig(
                run_dir=str(out / mode), skip_train=True, execution=mode,
                stream_chunk=args.chunk, stream_teacher_chunks=8,
                student=StudentConfig(model=args.student, samples=args.samples,
                                      temperature=0.8, max_tokens=384, kv_cache_gb=1),
                teacher=TeacherConfig(base_url=teacher.url, model="scripted",
                                      concurrency=args.concurrency, samples=1, temperature=0.0,
                                      template="refine-feedback", rounds=2),
                data=DataConfig(train_tasks="builtin", train_limit=args.tasks,
                                eval_tasks="builtin-heldout", eval_limit=args.eval),
                eval=EvalConfig(n=1, k=(1,), temperature=0.0, max_tokens=384))
            t0 = time.monotonic()
            summary = run_distill(cfg)
            wall = time.monotonic() - t0
        examples = summary.datasets["persd"]
        results[mode] = {"wall_s": round(wall, 1), "persd_examples": examples,
                         "examples_per_hour": round(examples / wall * 3600, 1),
                         "failed_attempts": summary.attempts.failed,
                         "teacher_requests": summary.teacher.refine.calls
                         + summary.teacher.stand.calls,
                         "seconds_per_stage": summary.seconds_per_stage}
        print(f"[bench] {mode}: {json.dumps(results[mode])}", file=sys.stderr, flush=True)
    a, b = results["staged"], results["streaming"]
    print("| mode | wall s | PersD examples | examples / hour | failed attempts | teacher "
          "requests |\n|---|---:|---:|---:|---:|---:|")
    for mode, r in results.items():
        print(f"| {mode} | {r['wall_s']} | {r['persd_examples']} | {r['examples_per_hour']} | "
              f"{r['failed_attempts']} | {r['teacher_requests']} |")
    print("\nseconds per stage (busy time; streamed stages overlap):")
    for mode, r in results.items():
        print(f"  {mode}: " + ", ".join(f"{k} {v}" for k, v in r["seconds_per_stage"].items()))
    ratio = b["examples_per_hour"] / a["examples_per_hour"] if a["examples_per_hour"] else 0
    print(f"\nstreaming / staged, verified examples per hour: {ratio:.2f}x (target >= 2x); "
          f"student {args.student}, {args.tasks} tasks x {args.samples} samples, held-out "
          f"{args.eval}, teacher latency {lo:g}-{hi:g} s at {args.concurrency} in flight")
    (out / "bench_pipeline.json").write_text(json.dumps({"args": vars(args), **results,
                                                         "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
