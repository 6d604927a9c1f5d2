"""Teacher-client throughput and latency against a loopback endpoint with injected latency and 429s:
our async client vs one-at-a-time calls like the paper's reference code, side by side.

    .venv/bin/python benchmarks/bench_teacher.py   # 1280 requests at 64 in flight, 20 sequential

The server (tests/faulty_server.py) answers every request after `--latency` seconds, and a random
`--p429` of requests (seeded) with 429 and `Retry-After: 1` instead. The ideal rate at C in flight
is C / latency (128 req/s at 64 and 0.5 s); the target is 80% of it with zero lost requests. The
sequential side (sync `openai.OpenAI`, a fixed 1 s sleep after any error, as in the paper's code)
runs a short list only: it is ~60x slower. Latency is per request, from its first send to the
answer in the cache, retries included. Lost = not answered, or answered by the server twice.
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.config import TeacherConfig  # noqa: E402
from engine.teacher import Teacher  # noqa: E402
from tests.faulty_server import Fault, FaultyServer, Kind, key_of  # noqa: E402


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


class TimedTeacher(Teacher):
    """Records each request's latency: its first send to its answer in the cache (retries and
    backoff included, the wait for a first slot not: that is queueing, not latency)."""

    latencies: list[float]
    first_send: dict[int, float]

    async def _send(self, messages, n, usage, extra=None):
        self.first_send.setdefault(id(messages), time.monotonic())
        return await super()._send(messages, n, usage, extra)

    async def _answer(self, messages, *args, **kwargs):
        reply = await super()._answer(messages, *args, **kwargs)
        self.latencies.append(time.monotonic() - self.first_send[id(messages)])
        return reply


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def ours(url: str, requests: list, concurrency: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TeacherConfig(concurrency=concurrency, timeout_s=30.0, max_retries=5)
        teacher = TimedTeacher(cfg, url, "bench", Path(tmp) / "cache.jsonl")
        teacher.latencies, teacher.first_send = [], {}
        t0 = time.monotonic()
        replies = asyncio.run(teacher.complete_many(requests))
        wall = time.monotonic() - t0
    return {"answered": sum(bool(r.texts) for r in replies), "wall": wall,
            "latencies": teacher.latencies, "calls": teacher.calls}


def sequential(url: str, requests: list) -> dict:
    """One request at a time; on any error sleep a fixed second and try again (the paper's way)."""
    import openai

    client = openai.OpenAI(base_url=url, api_key="EMPTY", timeout=30.0, max_retries=0)
    latencies, answered, calls = [], 0, 0
    t0 = time.monotonic()
    for messages in requests:
        start = time.monotonic()
        while True:
            calls += 1
            try:
                resp = client.chat.completions.create(model="bench", messages=messages,
                                                      max_tokens=768)
                answered += bool(resp.choices)
                break
            except openai.APIError:
                time.sleep(1.0)
        latencies.append(time.monotonic() - start)
    return {"answered": answered, "wall": time.monotonic() - t0, "latencies": latencies,
            "calls": calls}


class Random429:
    """A `plan` for FaultyServer: answer a seeded random share of requests 429, Retry-After 1 s."""

    def __init__(self, p: float, seed: int):
        self.p, self.rng = p, random.Random(seed)

    def __call__(self, seen):  # called under the server's lock
        hit = self.rng.random() < self.p  # a gateway rejects at once: no latency for a 429
        return Fault(Kind.STATUS, 429, retry_after=1.0, delay_s=0.0) if hit else None


def serve(conn, latency_s: float, p429: float, seed: int, kind: str = "asyncio") -> None:
    """The endpoint in its own process, as a remote one would be: it sends its URL, serves until
    told to stop, then sends back what it saw (successes per request, faults served). `kind`:
    asyncio (benchmarks/fast_endpoint.py: measures the client) or threads (tests/faulty_server.py,
    a thread per connection: the server itself limits the rate at 256 in flight)."""
    if kind == "asyncio":
        from benchmarks.fast_endpoint import FastEndpoint

        with FastEndpoint(latency_s, p429, seed) as server:
            conn.send(server.url)
            conn.recv()
            conn.send((dict(server.successes), list(server.served)))
        return
    with FaultyServer(latency_s=latency_s, plan=Random429(p429, seed)) as server:
        conn.send(server.url)
        conn.recv()
        conn.send((dict(server.successes), [(s.key, s.fault.value) for s in server.requests]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1280, help="requests for our client")
    ap.add_argument("--concurrency", type=int, default=64, help="our requests in flight")
    ap.add_argument("--sequential", type=int, default=20, help="requests for the sequential side")
    ap.add_argument("--latency", type=float, default=0.5, help="server latency per request, s")
    ap.add_argument("--p429", type=float, default=0.05, help="share of requests answered 429")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--server", choices=("asyncio", "threads"), default="asyncio",
                    help="the loopback endpoint: asyncio (fast enough to measure the client at "
                    "256 in flight) or threads (tests/faulty_server.py)")
    args = ap.parse_args()
    import openai  # noqa: F401 - imported before the clocks start, for both sides

    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.Process(target=serve, args=(child, args.latency, args.p429, args.seed,
                                                       args.server), daemon=True)
    proc.start()
    url = parent.recv()
    sides = [("ours (async)", args.concurrency, [ask(f"ours {i}") for i in range(args.requests)],
              lambda r: ours(url, r, args.concurrency)),
             ("sequential, fixed sleep", 1, [ask(f"seq {i}") for i in range(args.sequential)],
              lambda r: sequential(url, r))]
    results = [(name, inflight, reqs, fn(reqs)) for name, inflight, reqs, fn in sides]
    parent.send("stop")
    successes, seen = parent.recv()
    proc.join()

    rows = []
    for name, inflight, reqs, res in results:
        keys = {key_of(m) for m in reqs}
        twice = sum(successes.get(k, 0) > 1 for k in keys)
        rows.append({"client": name, "requests": len(reqs), "in_flight": inflight,
                     "req_s": len(reqs) / res["wall"], "p50": pct(res["latencies"], 0.5),
                     "p99": pct(res["latencies"], 0.99),
                     "429s": sum(k in keys and f == Kind.STATUS.value for k, f in seen),
                     "lost": len(reqs) - res["answered"] + twice, "wall": res["wall"]})
    print("| client | requests | in flight | req/s | p50 latency s | p99 latency s | 429s served "
          "| lost | wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['client']} | {r['requests']} | {r['in_flight']} | {r['req_s']:.1f} | "
              f"{r['p50']:.3f} | {r['p99']:.3f} | {r['429s']} | {r['lost']} | {r['wall']:.1f} |")
    ideal = args.concurrency / args.latency
    ours_row, seq_row = rows
    print(f"\nideal at {args.concurrency} in flight: {ideal:.0f} req/s; ours reaches "
          f"{ours_row['req_s'] / ideal:.0%} of it (target >= 80%); "
          f"{ours_row['req_s'] / seq_row['req_s']:.0f}x the sequential client")
    ok = ours_row["req_s"] >= 0.8 * ideal and ours_row["lost"] == 0 and seq_row["lost"] == 0
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
