"""Peak memory of a run against the size of its pool: the windowed pass (`data.window`) against
the pool in one piece, in one run of this script.

    python benchmarks/bench_memory.py --tasks 2000,20000 --window 1024,0

For each pool size, a pool of synthetic tasks (plain format, three tests each, a one-line
reference) is written to a file, and `python -m engine.distill` runs on it as its own process (no
fine-tune: `skip_train`): the tiny student of the test suite in vLLM (a Ray actor), the real
sandbox, and a teacher endpoint in this process that answers from the references (wrong on purpose
for a third of the tasks, as tests/tiny.py's scripted teacher; indexed by entry point, so it
answers in constant time), one refine round and no StanD answers (the teacher's requests are what
takes the time on 2 cores, about 25 a second; memory is the point here). The driver's peak RSS is
its kernel high-water mark (VmHWM), read as it exits; the student actor's is read from its /proc
entry while it runs. Prints one row per (window, pool size): wall seconds, driver peak RSS,
student actor peak RSS, attempts, examples; then the growth from the smallest pool to the largest.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.tiny import ScriptedTeacher, wrong_on_purpose  # noqa: E402

# the distill process, reporting its own peak RSS (VmHWM) when it exits
DRIVER = """
import atexit, runpy, sys
def report():
    status = open('/proc/self/status').read()
    hwm = [l for l in status.splitlines() if l.startswith('VmHWM')][0].split()[1]
    sys.stderr.write(f'\\n[peak-rss-kb] {hwm}\\n'); sys.stderr.flush()
atexit.register(report)
sys.argv = ['engine.distill'] + sys.argv[1:]
runpy.run_module('engine.distill', run_name='__main__')
"""


def write_pool(path: Path, n: int) -> None:
    """n tasks `f_<i>(x)`: return x * a + b, with a and b from i (three tests each)."""
    with open(path, "w") as f:
        for i in range(n):
            a, b = i % 7 + 2, i % 11
            ep = f"f_{i}"
            f.write(json.dumps({
                "task_id": f"syn/{i}", "entry_point": ep,
                "instruction": f"Return x multiplied by {a}, plus {b}.",
                "signature": f"def {ep}(x: int) -> int:",
                "reference": f"def {ep}(x: int) -> int:\n    return x * {a} + {b}\n",
                "tests": [{"call": f"{ep}({x})", "expected": str(x * a + b)} for x in (0, 1, 5)],
            }) + "\n")


class IndexedTeacher(ScriptedTeacher):
    """The scripted teacher, finding the task by the entry point the request names."""

    def __init__(self, pool: Path):
        super().__init__([])
        self.refs = {}
        with open(pool) as f:
            for line in f:
                d = json.loads(line)
                self.refs[d["entry_point"]] = (d["task_id"], d["reference"])

    def answer(self, user: str) -> str:
        self.requests.clear()          # only their count matters here; keep this process small
        for ep in re.findall(r"\b(f_\d+)\b", user):
            if ep in self.refs:
                task_id, ref = self.refs[ep]
                code = (f"def {ep}(*args, **kwargs):\n    return None\n"
                        if wrong_on_purpose(task_id) else ref)
                return f"Here is the corrected code:\n```python\n{code}```\n"
        return "I cannot tell which task this is."


def actor_rss_kb() -> int:
    """The largest VmHWM of the Ray StudentEngine actor processes alive now (0 if none)."""
    best = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"StudentEngine" not in cmd:
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM"):
                    best = max(best, int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return best


def one_run(work: Path, model: Path, n: int, window: int, concurrency: int) -> dict:
    pool = work / f"pool-{n}.jsonl"
    if not pool.exists():
        write_pool(pool, n)
    run_dir = work / f"run-{n}-w{window}"
    with IndexedTeacher(pool) as teacher:
        cmd = [sys.executable, "-c", DRIVER, "--run_dir", str(run_dir), "--skip_train", "true",
               "--dataset", "persd-combined",
               "--student.model", str(model), "--student.dtype", "float32",
               "--student.max_tokens", "32", "--student.kv_cache_gb", "1",
               "--student.max_model_len", "1024", "--student.engine_process", "inline",
               "--teacher.base_url", teacher.url, "--teacher.model", "scripted",
               "--teacher.samples", "1", "--teacher.temperature", "0",
               "--teacher.template", "refine-feedback", "--teacher.concurrency", str(concurrency),
               "--teacher.rounds", "1", "--teacher.stand", "false",
               "--data.train_tasks", str(pool), "--data.train_limit", "0",
               "--data.window", str(window), "--data.eval_tasks", str(pool),
               "--data.eval_limit", "4", "--eval.max_tokens", "32"]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "VLLM_HOST_IP": "127.0.0.1",
               "HF_HUB_OFFLINE": "1"}
        peak_actor = [0]
        done = threading.Event()

        def watch():
            while not done.wait(1.0):
                peak_actor[0] = max(peak_actor[0], actor_rss_kb())
        threading.Thread(target=watch, daemon=True).start()
        t0 = time.monotonic()
        with open(work / f"log-{n}-w{window}.txt", "w") as log:
            proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        wall = time.monotonic() - t0
        done.set()
    text = (work / f"log-{n}-w{window}.txt").read_text()
    if proc.returncode != 0:
        raise SystemExit(f"distill failed (exit {proc.returncode}); its log:\n{text[-3000:]}")
    peak = int(re.findall(r"\[peak-rss-kb\] (\d+)", text)[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"tasks": n, "window": window, "wall_s": round(wall, 1), "driver_peak_mb": peak // 1024,
            "actor_peak_mb": peak_actor[0] // 1024,
            "attempts": summary["attempts"]["samples"],
            "examples": summary["datasets"]["persd-combined"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="2000,20000", help="pool sizes, comma-separated")
    ap.add_argument("--window", default="1024,0",
                    help="data.window values to compare (0 = the pool in one piece)")
    ap.add_argument("--concurrency", type=int, default=64, help="teacher requests in flight")
    ap.add_argument("--out", default="", help="keep pools, runs and logs here")
    args = ap.parse_args()
    sizes = [int(x) for x in args.tasks.split(",")]
    windows = [int(x) for x in args.window.split(",")]

    from engine.tasks import load_tasks
    from tests.tiny import build_tiny_model

    work = Path(args.out or tempfile.mkdtemp(prefix="bench-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    model = work / "tiny"
    if not (model / "config.json").exists():
        corpus = [t.prompt + (t.reference or "") for t in load_tasks("builtin-all")] * 3
        build_tiny_model(model, corpus)
    print(f"load before: {os.getloadavg()[0]:.2f}; work in {work}", flush=True)
    rows = []
    for w in windows:
        for n in sizes:
            r = one_run(work, model, n, w, args.concurrency)
            rows.append(r)
            print(json.dumps(r), flush=True)
    print(f"\nload after: {os.getloadavg()[0]:.2f}\n")
    print("| window | tasks | wall s | driver peak RSS MB | student actor peak RSS MB | attempts "
          "| PersD-combined examples |\n|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['window'] or 'whole pool'} | {r['tasks']:,} | {r['wall_s']} | "
              f"{r['driver_peak_mb']} | {r['actor_peak_mb']} | {r['attempts']:,} | "
              f"{r['examples']:,} |")
    for w in windows:
        mine = [r for r in rows if r["window"] == w]
        if len(mine) > 1:
            lo, hi = mine[0], mine[-1]
            print(f"window {w or 'whole pool'}: {hi['tasks'] / lo['tasks']:.0f}x the tasks -> "
                  f"driver peak x{hi['driver_peak_mb'] / lo['driver_peak_mb']:.2f} "
                  f"(+{hi['driver_peak_mb'] - lo['driver_peak_mb']} MB)")


if __name__ == "__main__":
    main()
