"""Per-stage progress lines (the run store itself is engine/store.py)."""
from __future__ import annotations

import sys
import time


class Progress:
    """One line per update on stderr: stage, count/total, rate, ETA."""

    def __init__(self, stage: str, total: int, already: int = 0, unit: str = "items"):
        self.stage, self.total, self.unit = stage, total, unit
        self.done = already
        self.start_done = already
        self.t0 = time.monotonic()
        if already:
            self._print(f"resuming: {already} already done")

    def _print(self, extra: str = "") -> None:
        print(f"[{self.stage}] {self.done}/{self.total} {self.unit} {extra}", file=sys.stderr,
              flush=True)

    def update(self, n: int = 1) -> None:
        self.done += n
        dt = time.monotonic() - self.t0
        rate = (self.done - self.start_done) / dt if dt > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        self._print(f"{rate:.2f}/s ETA {eta:.0f}s")

    def finish(self) -> float:
        return time.monotonic() - self.t0
