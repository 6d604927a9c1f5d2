"""Nothing outlives the run: a watchdog that kills what the driver started once the driver dies.

A SIGKILLed driver runs no cleanup, and its children are re-parented away from it, so neither
`atexit` nor a process group catches everything (Ray starts its GCS, raylet, dashboard and
runtime-env agents in sessions of their own; vLLM's server forks an engine core). Instead the
driver puts a fresh token into its environment before it starts anything; every process started
after that inherits it (Ray's services and workers, the teacher server and its engine core, the
trainer). This watchdog, a separate process in its own session, waits on a pidfd of the driver and,
when it exits for any reason, SIGKILLs every process whose environment holds the token, until
none is left. Sandbox workers run with a cleared environment; bubblewrap's --die-with-parent
ends them.

    python -m engine.reaper DRIVER_PID TOKEN     (started by `Reaper.start`, not by hand)
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


def reap(token: str) -> int:
    """SIGKILL every holder until two scans in a row find none; returns how many were killed."""
    me, killed, quiet = {os.getpid()}, set(), 0
    deadline = time.monotonic() + 30
    while quiet < 3 and time.monotonic() < deadline:
        pids = holders(token, me)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        quiet = 0 if pids else quiet + 1
        time.sleep(0.1 if pids else 0.5)  # a process forked by a dying parent shows up late
    return len(killed)


def wait_for_exit(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except (OSError, AttributeError):  # old kernel: poll
        while Path(f"/proc/{pid}").exists() and _state(pid) != "Z":
            time.sleep(0.5)
        return
    select.select([fd], [], [])
    os.close(fd)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


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
            [sys.executable, "-m", "engine.reaper", str(os.getpid()), self.token], env=env,
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
    wait_for_exit(pid)
    n = reap(token)
    if n:
        print(f"[reaper] driver {pid} is gone: killed {n} process(es) it had started",
              file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
