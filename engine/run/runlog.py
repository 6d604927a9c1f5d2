"""Live progress of every long loop, and a structured log of stage events.

On a terminal each loop is a tqdm bar (count, rate, ETA), redrawn per finished item and at least
every second while a batch is in flight. Elsewhere (CI, `ray job` logs, a file) it is a plain
line at start and end and at most every `interval` seconds between, plus a "still working" line
when a batch runs longer than that without finishing an item, so a log never goes quiet for
minutes. Every start, update and end is also one JSON line in the run directory's
`events.jsonl` when a run has set it (`set_event_log`), for tools that follow a run.

    progress = Progress("grades", total=200)
    progress.update(10)
    progress.finish()
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

INTERVAL_S = float(os.environ.get("PERSD_PROGRESS_INTERVAL_S", "30"))
_events: Path | None = None
_lock = threading.Lock()


def set_event_log(path: Path | None) -> None:
    """Send every progress event to `path` (JSONL, appended), or nowhere (None)."""
    global _events
    _events = path


def event(stage: str, kind: str, **fields) -> None:
    if _events is None:
        return
    line = json.dumps({"t": round(time.time(), 3), "stage": stage, "event": kind, **fields})
    with _lock, open(_events, "a") as fh:
        fh.write(line + "\n")


def _sized(stream: TextIO) -> bool:
    try:
        return os.get_terminal_size(stream.fileno()).lines > 0
    except (AttributeError, OSError, ValueError):   # no descriptor: tqdm decides
        return True


class Progress:
    """Progress of one loop of `total` items (`already` of them done before it started)."""

    def __init__(self, stage: str, total: int, already: int = 0, unit: str = "items",
                 stream: TextIO | None = None, interval_s: float = INTERVAL_S):
        self.stage, self.total, self.unit = stage, total, unit
        self.stream = stream or sys.stderr
        self.done = self.start_done = already
        self.interval_s = interval_s
        self.t0 = self.last_line = self.last_item = time.monotonic()
        self.bar = None
        if self.stream.isatty():
            from tqdm import tqdm

            # a terminal that reports no size (a pty nobody sized: `script`, some `docker
            # exec -t`) gets no bar at all from tqdm (0 rows hides it): assume 100 x 40 there
            sized = _sized(self.stream)
            self.bar = tqdm(total=total, initial=already, desc=stage, unit=unit.rstrip("s"),
                            file=self.stream, dynamic_ncols=sized, ncols=None if sized else 100,
                            nrows=None if sized else 40, mininterval=0.5)
        else:
            self._line("resuming: " + f"{already} already done" if already else "started")
        event(stage, "start", total=total, already=already)
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, daemon=True)
        self._beat.start()

    def _rate(self) -> float:
        dt = time.monotonic() - self.t0
        return (self.done - self.start_done) / dt if dt > 0 else 0.0

    def _line(self, extra: str) -> None:
        print(f"[{self.stage}] {self.done}/{self.total} {self.unit} {extra}", file=self.stream,
              flush=True)
        self.last_line = time.monotonic()

    def _heartbeat(self) -> None:
        period = 1.0 if self.bar is not None else min(self.interval_s, 5.0)
        while not self._stop.wait(period):
            now = time.monotonic()
            if self.bar is not None:
                self.bar.refresh()        # the elapsed time moves while a batch is in flight
            elif now - self.last_line >= self.interval_s and self.done < self.total:
                self._line(f"still working: {now - self.last_item:.0f} s since the last one "
                           f"finished, {now - self.t0:.0f} s in")

    def update(self, n: int = 1) -> None:
        self.done += n
        self.last_item = time.monotonic()
        rate = self._rate()
        event(self.stage, "update", done=self.done, total=self.total, rate=round(rate, 3))
        if self.bar is not None:
            self.bar.update(n)
        elif self.last_item - self.last_line >= self.interval_s or self.done >= self.total:
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            self._line(f"{rate:.2f}/s ETA {eta:.0f}s")

    def finish(self) -> float:
        if self._stop.is_set():
            return time.monotonic() - self.t0
        self._stop.set()
        self._beat.join()
        seconds = time.monotonic() - self.t0
        if self.bar is not None:
            self.bar.close()
        elif self.done < self.total or self.last_line < self.last_item:
            self._line(f"done in {seconds:.0f}s")
        event(self.stage, "end", done=self.done, total=self.total, seconds=round(seconds, 3))
        return seconds
