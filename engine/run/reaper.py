"""Nothing outlives the run: a watchdog that kills what the driver started once the driver dies.

A SIGKILLed driver runs no cleanup, and its children are re-parented away from it, so neither
`atexit` nor a process group catches everything: Ray starts its GCS, raylet, dashboard and
runtime-env agents in sessions of their own (the agents are the raylet's children and can
outlive it), vLLM's server forks an engine core. So the watchdog, a separate process in its own
session, casts two nets:
- while the driver lives it records the driver's descendants (pid and start time) once a
  second, so a process re-parented at the driver's death is still known;
- the driver puts a fresh token into its environment before it starts anything, and every
  process started after that inherits it.
When the driver exits for any reason (the watchdog waits on a pidfd), it SIGKILLs every
recorded descendant still alive, every holder of the token, and all their descendants, until
three scans in a row find none. Sandbox workers are bubblewrap jails (--die-with-parent).

    python -m engine.run.reaper DRIVER_PID TOKEN     (started by `Reaper.start`, not by hand)
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

ENV = "PERSD_RUN_TOKEN"


def holders(token: str, skip: set[int]) -> list[int]:
    """Pids whose initial environment holds ENV=token (read from /proc, so a process that
    changed os.environ in Python, like the driver itself, is judged by what it was started with)."""
    needle = f"{ENV}={token}".encode()
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) in skip:
            continue
        try:
            env = (d / "environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            out.append(int(d.name))
    return out


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live, non-zombie process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else (int(fields[1]), int(fields[19]))


def processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time) of every live process."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (st := _stat(int(d.name))) is not None:
            out[int(d.name)] = st
    return out


def descendants(roots: set[int], table: dict[int, tuple[int, int]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = set(), list(roots)
    while todo:
        for c in children.get(todo.pop(), ()):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def reap(token: str, known: dict[int, int] | None = None) -> int:
    """SIGKILL the token's holders, the `known` processes (pid -> start time, so a reused pid
    is spared) and all their descendants, until three scans in a row find none."""
    me, killed, quiet = {os.getpid()}, set(), 0
    known = known or {}
    deadline = time.monotonic() + 30
    while quiet < 3 and time.monotonic() < deadline:
        table = processes()
        targets = {p for p, st in known.items() if p in table and table[p][1] == st}
        targets |= set(holders(token, me))
        targets = (targets | descendants(targets, table)) - me
        for pid in targets:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        quiet = 0 if targets else quiet + 1
        # a process forked by a dying parent shows up late: after a kill, wait longer for it
        time.sleep(0.1 if targets or not killed else 0.5)
    return len(killed)


def watch(pid: int, every_s: float = 1.0) -> dict[int, int]:
    """Wait for `pid` to exit, recording its descendants meanwhile: pid -> start time."""
    known: dict[int, int] = {}
    try:
        fd = os.pidfd_open(pid)
    except (OSError, AttributeError):  # no pidfd (old kernel): poll
        fd = None
    while True:
        if fd is not None and select.select([fd], [], [], every_s)[0]:
            os.close(fd)
            return known
        if fd is None:
            time.sleep(every_s)
            if _stat(pid) is None:
                return known
        table = processes()
        known = {p: st for p, st in known.items() if p in table and table[p][1] == st}
        known.update({p: table[p][1] for p in descendants({pid}, table)})


class Reaper:
    """Start the watchdog for this process and mark the environment; `stop()` restores it."""

    def __init__(self) -> None:
        self.token = uuid.uuid4().hex
        self.proc: subprocess.Popen | None = None
        self._saved: str | None = None

    def start(self) -> "Reaper":
        self._saved = os.environ.get(ENV)
        env = {k: v for k, v in os.environ.items() if k != ENV}  # the watchdog holds no token
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine.run.reaper", str(os.getpid()), self.token], env=env,
            stdin=subprocess.DEVNULL, start_new_session=True)  # a Ctrl-C does not reach it
        os.environ[ENV] = self.token
        return self

    def stop(self) -> None:
        """Kill what is left now (the driver lives on, e.g. a test or a notebook), and unmark."""
        if self._saved is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = self._saved
        reap(self.token)
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "Reaper":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> None:
    pid, token = int(sys.argv[1]), sys.argv[2]
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    known = watch(pid)
    n = reap(token, known)
    if n:
        print(f"[reaper] driver {pid} is gone: killed {n} process(es) it had started",
              file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
