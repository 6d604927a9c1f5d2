"""A loopback OpenAI-compatible endpoint on asyncio streams, for measuring the teacher client.

tests/faulty_server.py (a thread per connection, `http.server`) spends ~5 ms of CPU per request
under 256 connections, so at 256 in flight it, not the client, set the benchmark's rate. This one
parses HTTP/1.1 keep-alive requests itself on one event loop and waits out the latency with
`asyncio.sleep`: a few hundred microseconds per request. Same answers, same accounting
(`successes` per distinct request, every 429 served), same seeded 429 plan (`p429`, answered at
once with `Retry-After: 1`). Chat completions only.

    python benchmarks/bench_teacher.py --server asyncio --concurrency 256
"""
from __future__ import annotations

import asyncio
import collections
import json
import random
import threading
import time


class FastEndpoint:
    def __init__(self, latency_s: float, p429: float = 0.0, seed: int = 0) -> None:
        self.latency_s, self.p429, self.rng = latency_s, p429, random.Random(seed)
        self.successes: collections.Counter[str] = collections.Counter()
        self.served: list[tuple[str, str]] = []      # (key, "ok" | "status")
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FastEndpoint:
        self._thread.start()
        self._ready.wait()
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        server = self._loop.run_until_complete(
            asyncio.start_server(self._connection, "127.0.0.1", 0, backlog=1024))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path = lines[0].split(" ")[:2]
                length = 0
                for line in lines[1:]:
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                status, payload, extra = await self._answer(method, path, body)
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {len(payload)}\r\n{extra}\r\n".encode() + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _answer(self, method: str, path: str, body: bytes) -> tuple[int, bytes, str]:
        if method == "GET":
            return 200, json.dumps({"object": "list", "data": [
                {"id": "fast", "object": "model", "created": 0, "owned_by": "bench"}]}).encode(), ""
        req = json.loads(body)
        key = json.dumps(req["messages"], sort_keys=True)
        if self.rng.random() < self.p429:   # a gateway rejects at once
            self.served.append((key, "status"))
            return 429, b'{"error": {"message": "injected 429"}}', "Retry-After: 1\r\n"
        await asyncio.sleep(self.latency_s)
        n = int(req.get("n") or 1)
        text = req["messages"][-1]["content"]
        choices = [{"index": j, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": f"reply {j} to: {text}"}}
                   for j in range(n)]
        pt, ct = len(key) // 4, n * (len(text) + 12) // 4
        self.successes[key] += 1
        self.served.append((key, "ok"))
        return 200, json.dumps({"id": "x", "object": "chat.completion", "created": int(time.time()),
                                "model": req.get("model", "fast"), "choices": choices,
                                "usage": {"prompt_tokens": pt, "completion_tokens": ct,
                                          "total_tokens": pt + ct}}).encode(), ""
