"""Shared by the kill test and the kill soak: run `python -m engine.distill` as a real process,
SIGKILL it at a named point (engine/run/faults.py) or after a delay, and check what it leaves."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

from engine.config import RunConfig
from engine.records import Example

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("persd", "persd-refine", "persd-combined", "stand", "stand-matched", "inpd")


def cli_flags(cfg: RunConfig) -> list[str]:
    """The CLI flags that rebuild `cfg` (every field, so the driver's defaults cannot drift)."""
    out = []

    def walk(obj, prefix):
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if dataclasses.is_dataclass(v):
                walk(v, f"{prefix}{f.name}.")
            else:
                out.extend([f"--{prefix}{f.name}",
                            ",".join(map(str, v)) if isinstance(v, tuple) else str(v)])
    walk(cfg, "")
    return out


def describe(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:2]
        except OSError:
            cmd, state = "(gone)", []
        out.append(f"{pid} {state} {cmd}")
    return out


def holders(mark: str) -> list[int]:
    """Live processes whose environment holds PERSD_TEST_MARK=mark (zombies excluded)."""
    needle = f"PERSD_TEST_MARK={mark}".encode()
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if needle in (d / "environ").read_bytes().split(b"\0"):
                state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    out.append(int(d.name))
        except (OSError, IndexError):
            pass
    return out


@dataclasses.dataclass
class Outcome:
    returncode: int
    seconds: float
    orphans: list[str]          # processes it started that were alive 60 s after it died
    log: Path


def run_driver(cfg: RunConfig, log: Path, kill_at: str = "", kill_after_s: float = 0.0,
               fault_log: Path | None = None) -> Outcome:
    """One driver process; killed at `kill_at` (a fault point) or after `kill_after_s`."""
    mark = uuid.uuid4().hex
    env = {**os.environ, "PERSD_TEST_MARK": mark, "PYTHONPATH": str(ROOT)}
    env.pop("PERSD_KILL_AT", None)
    if kill_at:
        env["PERSD_KILL_AT"] = kill_at
    if fault_log:
        env["PERSD_FAULT_LOG"] = str(fault_log)
    t0 = time.monotonic()
    with open(log, "ab") as f:
        f.write(f"\n=== kill_at={kill_at!r} kill_after_s={kill_after_s}\n".encode())
        f.flush()
        proc = subprocess.Popen([sys.executable, "-m", "engine.distill", *cli_flags(cfg)],
                                cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=kill_after_s or 900)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    seconds = time.monotonic() - t0
    deadline = time.monotonic() + 60
    while holders(mark) and time.monotonic() < deadline:
        time.sleep(0.5)
    return Outcome(proc.returncode, seconds, describe(holders(mark)), log)


def datasets(run_dir: Path) -> dict[str, set[bytes]]:
    """Each dataset view as a set of lines: content, order-independent."""
    return {name: set((run_dir / f"{name}.jsonl").read_bytes().splitlines())
            for name in DATASETS}


def stable_summary(summary: dict) -> dict:
    """The parts of summary.json that an interrupted run must reproduce exactly (not timings,
    not what this particular process sent or reused)."""
    keep = {k: summary.get(k) for k in ("attempts", "datasets", "pass_before", "pass_after",
                                        "adapter_id", "eval", "student")}
    for stage in ("refine", "stand"):
        t = dict(summary["teacher"][stage])
        for k in ("this_run", "cached"):
            t.pop(k, None)
        keep[stage] = t
    return keep


def duplicate_requests(requests: list[dict]) -> int:
    """Teacher requests answered more than once: the same body (messages, sampling, seed, n)."""
    keys = Counter(hashlib.sha256(json.dumps(r, sort_keys=True).encode()).hexdigest()
                   for r in requests)
    return sum(c - 1 for c in keys.values())


def example_ids(run_dir: Path, name: str) -> list[str]:
    from engine.run.store import read_view

    return [e.example_id for e in read_view(run_dir, name, Example)]
