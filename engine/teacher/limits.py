"""Client-side pacing for the teacher: per-minute token buckets and in-flight slots."""
from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time


class TokenBucket:
    """`per_minute` units a minute (0 = unlimited), in bursts of at most one second's worth:
    providers enforce per-minute limits over shorter windows too.

    `take` reserves at once and sleeps until the reservation is covered, so waiters are served in
    order without a lock. `settle` corrects an estimate once the real amount is known; the level
    may go negative, and later takers wait for it.
    """

    def __init__(self, per_minute: float):
        self.rate = per_minute / 60.0             # units per second
        self.capacity = max(1.0, self.rate)       # one second's worth
        self.level = self.capacity
        self.t = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
        self.t = now

    async def take(self, amount: float) -> None:
        if self.rate <= 0:
            return
        self._refill()
        self.level -= amount
        if self.level < 0:
            await asyncio.sleep(-self.level / self.rate)

    def settle(self, delta: float) -> None:
        """`delta` more units were used than taken (negative: fewer)."""
        if self.rate > 0:
            self._refill()
            self.level = min(self.capacity, self.level - delta)


class Slots:
    """At most `size` holders; retries are let in before new requests. A request that waited out
    its backoff should not queue again behind the whole batch (its latency would become the
    batch's), and a slot is held only while a try is in flight."""

    def __init__(self, size: int):
        self.free = size
        self._waiters: list[tuple[int, int, asyncio.Future]] = []  # heap: (new?, order, future)
        self._order = itertools.count()

    @contextlib.asynccontextmanager
    async def hold(self, retry: bool):
        if self.free > 0 and not self._waiters:
            self.free -= 1
        else:
            fut = asyncio.get_running_loop().create_future()
            entry = (0 if retry else 1, next(self._order), fut)
            heapq.heappush(self._waiters, entry)
            try:
                await fut
            except asyncio.CancelledError:
                if entry in self._waiters:
                    self._waiters.remove(entry)
                    heapq.heapify(self._waiters)
                elif not fut.cancelled():  # handed the slot while being cancelled: pass it on
                    self._release()
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiters:
            fut = heapq.heappop(self._waiters)[2]
            if not fut.done():
                fut.set_result(None)  # the slot passes straight to the next waiter
                return
        self.free += 1
