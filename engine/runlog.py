"""The run directory: append-only JSONL per stage, keyed by stable ids, and per-stage progress.

A stage appends each finished record as soon as it exists (flushed), so a crash or kill loses at
most the batch in flight; on restart a stage reads what is there and does only the missing ids.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

from engine.records import from_json, to_json

T = TypeVar("T")
R = TypeVar("R")


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def file(self, name: str) -> Path:
        return self.path / f"{name}.jsonl"

    def read(self, name: str, cls: type[T]) -> list[T]:
        path = self.file(name)
        if not path.exists():
            return []
        out = []
        with open(path, "rb") as f:
            for line in f:
                if line.endswith(b"\n"):  # a torn last line (killed mid-write) is redone
                    out.append(from_json(cls, line))
        return out

    def append(self, name: str, records: Iterable[object]) -> None:
        with open(self.file(name), "ab") as f:
            for r in records:
                f.write(to_json(r) + b"\n")
            f.flush()

    def rewrite(self, name: str, records: Iterable[object]) -> None:
        """Atomically replace a derived file (datasets are rebuilt whole from stage records)."""
        tmp = self.file(name).with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for r in records:
                f.write(to_json(r) + b"\n")
        tmp.replace(self.file(name))

    def stage(self, name: str, cls: type[R], items: Sequence[T], key: Callable[[T], str],
              rkey: Callable[[R], str], compute: Callable[[list[T]], list[R]],
              batch: int = 64) -> list[R]:
        """Run `compute` on the items whose key has no record yet, `batch` at a time, appending
        results as each batch finishes. Returns every record of the stage (old and new)."""
        done = {rkey(r): r for r in self.read(name, cls)}
        todo = [it for it in items if key(it) not in done]
        progress = Progress(name, len(items), already=len(items) - len(todo))
        for i in range(0, len(todo), batch):
            chunk = todo[i:i + batch]
            results = compute(chunk)
            self.append(name, results)
            for r in results:
                done[rkey(r)] = r
            progress.update(len(chunk))
        progress.finish()
        return list(done.values())


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
