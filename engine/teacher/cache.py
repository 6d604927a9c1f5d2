"""The teacher's durable response cache: what makes a resumed or concurrent run pay nothing twice."""
from __future__ import annotations

import asyncio
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

import orjson


@dataclass(frozen=True)
class CacheEntry:
    """One paid answer: the request's key and its texts so far (n choices, or fewer while the
    n-fallback asks for the rest), with the tokens billed for them. One JSON line on disk."""

    key: str
    texts: tuple[str, ...]
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @classmethod
    def from_json(cls, line: bytes) -> "CacheEntry":
        d = orjson.loads(line)
        return cls(d["key"], tuple(d["texts"]), d.get("prompt_tokens", 0),
                   d.get("completion_tokens", 0))


class ResponseCache:
    """Append-only JSONL of answers, one line each, keyed by a hash of the request; later lines win
    (a request answered in parts by the n-fallback is rewritten with more texts).

    Lines are written whole under an exclusive flock, so processes sharing the file never
    interleave. A torn last line (a kill mid-write) is skipped on load and sealed with a newline
    before the next append, so it cannot swallow the next record. `refresh()` (at the start of
    every batch) reads what other processes appended since, so two runs sharing a cache do not
    pay twice for what either had answered by then.
    Memory stays bounded by the number of answers, not their size: only an index (key -> where
    its line is) is held; an answer is read from the file when asked for.
    Not protected against: a filesystem without flock (some network mounts).
    """

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, tuple[int, int]] = {}  # key -> (offset, length) of its last line
        self._pending: dict[str, CacheEntry] = {}      # put, not yet on disk
        self._offset = 0  # bytes of whole lines already read
        self._queue: list[tuple[dict, asyncio.Future]] = []  # answers waiting for the next write
        self._writing = False
        path.parent.mkdir(parents=True, exist_ok=True)
        self.refresh()

    def refresh(self) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size <= self._offset:
            return
        with open(self.path, "rb") as f:   # line by line: a cache of any size, bounded memory
            f.seek(self._offset)
            pos = self._offset
            for line in f:
                if not line.endswith(b"\n"):
                    break        # a torn tail is read once another append seals it
                start, pos = pos, pos + len(line)
                try:
                    rec = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue  # torn by a kill mid-write (or empty): that answer is asked again
                if isinstance(rec, dict) and "key" in rec:
                    self.entries[rec["key"]] = (start, len(line) - 1)
        self._offset = pos

    def get(self, key: str) -> CacheEntry | None:
        if key in self._pending:
            return self._pending[key]
        where = self.entries.get(key)
        if where is None:
            return None
        fd = os.open(self.path, os.O_RDONLY)
        try:
            return CacheEntry.from_json(os.pread(fd, where[1], where[0]))
        finally:
            os.close(fd)

    def put(self, rec: CacheEntry) -> None:
        """Durable when it returns (fsynced)."""
        self._pending[rec.key] = rec
        self._append([rec])

    async def put_async(self, rec: CacheEntry) -> None:
        """Durable when it returns. Answers landing while a write runs share the next write and
        fsync (group commit) off the event loop, so at 100+ answers a second the disk and the
        thread hand-offs do not slow the loop that is sending requests."""
        self._pending[rec.key] = rec
        done = asyncio.get_running_loop().create_future()
        self._queue.append((rec, done))
        if not self._writing:
            self._writing = True
            asyncio.ensure_future(self._drain())
        await done

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    await asyncio.to_thread(self._append, [rec for rec, _ in batch])
                except Exception as e:  # noqa: BLE001 - every waiter gets the disk's error
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(e)
                else:
                    for _, done in batch:
                        if not done.done():
                            done.set_result(None)
        finally:
            self._writing = False

    def _append(self, recs: list[CacheEntry]) -> None:
        lines = [orjson.dumps(rec) for rec in recs]
        data = b"".join(line + b"\n" for line in lines)
        with open(self.path, "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                start = f.seek(0, os.SEEK_END)
                if start > 0:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        data = b"\n" + data  # seal a line torn by a killed writer
                        start += 1
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        for rec, line in zip(recs, lines):   # on disk: indexed, no longer held
            self.entries[rec.key] = (start, len(line))
            start += len(line) + 1
            if self._pending.get(rec.key) is rec:
                del self._pending[rec.key]
