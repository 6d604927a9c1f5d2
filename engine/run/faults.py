"""Deterministic kill points for crash tests: the real pipeline, SIGKILLed where a test says.

    PERSD_KILL_AT="mid-commit:grades#1"   SIGKILL this process the 1st time that point is reached
    PERSD_FAULT_LOG=/tmp/points.txt       append every point reached (a soak picks from these)

Points: `start:<stage>`, `mid-commit:<stage>` (inside an open transaction), `after-commit:<stage>`,
`mid-export:<view>` (half a JSONL view written), `teacher-answer` (a reply durable in the cache),
`train-step` (the trainer subprocess has logged a step). Unset in normal runs: `point` is then one
dictionary lookup.
"""
from __future__ import annotations

import os
import signal

_hits: dict[str, int] = {}


def point(name: str) -> None:
    log = os.environ.get("PERSD_FAULT_LOG")
    target = os.environ.get("PERSD_KILL_AT")
    if not log and not target:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if log:
        with open(log, "a") as f:
            f.write(f"{name}#{_hits[name]}\n")
    if target and target == f"{name}#{_hits[name]}":
        os.kill(os.getpid(), signal.SIGKILL)
