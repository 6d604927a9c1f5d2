"""The teacher client against a fault-injecting loopback server: nothing lost, nothing paid twice.

Every test uses short timeouts and backoffs; the whole file runs in well under a minute.
"""
from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from engine.config import TeacherConfig
from engine.teacher import Failure, Teacher, TeacherUnreachable, prices, retry_after_s
from engine.teacher.cache import CacheEntry, ResponseCache
from engine.teacher.limits import Slots, TokenBucket
from tests.faulty_server import Fault, FaultyServer, Kind, key_of

ROOT = Path(__file__).resolve().parents[2]
FAST = dict(timeout_s=1.0, backoff_s=0.02, backoff_max_s=0.1, max_retries=3, concurrency=8)


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def cache_lines(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def run(teacher: Teacher, requests, **kw):
    return asyncio.run(teacher.complete_many(requests, **kw))


def test_every_fault_is_retried_and_each_request_answered_exactly_once(tmp_path):
    scripts = ["", "500", "500,503", "drop", "hang", "badjson", "empty", "502,drop,badjson",
               "429", "", "", ""]
    requests = [ask(f"[faults {s}] request {i}") for i, s in enumerate(scripts)]
    doomed = [ask("[faults 500,500,500,500,500] never"), ask("[faults 400] bad request")]
    cache = tmp_path / "cache.jsonl"
    with FaultyServer(hang_s=2.0) as server:
        teacher = Teacher(TeacherConfig(**FAST), server.url, "m", cache, identity="loopback")
        replies = run(teacher, requests + doomed)
    answered, failed = replies[:len(requests)], replies[len(requests):]
    assert all(r.texts and r.failure is None for r in answered)
    assert [r.failure for r in failed] == [Failure.RETRIES, Failure.REJECTED]  # none lost
    # one success per distinct request on the server, one cache line per answered request
    assert all(server.successes[key_of(m)] == 1 for m in requests)
    assert sum(server.successes.values()) == len(requests)
    lines = cache_lines(cache)
    assert len(lines) == len({rec["key"] for rec in lines}) == len(requests)
    assert teacher.calls == len(server.requests)
    assert len([s for s in server.requests if "bad request" in s.key]) == 1  # 4xx: no retry
    usage = teacher.usage["teacher"]
    assert (usage.requests, usage.answered, usage.cached) == (14, 12, 0)
    assert usage.failed == {"retries": 1, "rejected": 1}
    # a re-run on the same cache sends none of the answered (the failed ones are asked again)
    with FaultyServer() as healthy:
        again = Teacher(TeacherConfig(**FAST), healthy.url, "m", cache, identity="loopback")
        replies2 = run(again, requests)
    assert again.calls == 0 and not healthy.requests
    assert [r.texts for r in replies2] == [r.texts for r in answered]


def test_the_same_request_twice_in_a_batch_is_asked_once(tmp_path):
    with FaultyServer() as server:
        teacher = Teacher(TeacherConfig(**FAST), server.url, "m", tmp_path / "c.jsonl")
        replies = run(teacher, [ask("twin"), ask("other"), ask("twin")])
    assert len(server.requests) == 2 and teacher.calls == 2
    assert replies[0].texts == replies[2].texts and (replies[0].cached, replies[2].cached) == (
        False, True)
    assert (teacher.usage["teacher"].answered, teacher.usage["teacher"].cached) == (2, 1)


def test_retry_after_is_honoured(tmp_path):
    with FaultyServer() as server:
        teacher = Teacher(TeacherConfig(**FAST), server.url, "m", tmp_path / "c.jsonl")
        t0 = time.monotonic()
        [reply] = run(teacher, [ask("[faults 429@0.6] slow down")])
        elapsed = time.monotonic() - t0
    assert reply.texts and elapsed >= 0.6
    first, second = server.requests
    assert (first.fault, second.fault) == (Kind.STATUS, Kind.OK)
    assert second.t - first.t >= 0.6  # the backoff alone (<= 0.1 s) would have been sooner


def test_circuit_trips_naming_the_url_and_keeps_what_was_answered(tmp_path):
    cache = tmp_path / "c.jsonl"
    cfg = TeacherConfig(**{**FAST, "concurrency": 1, "max_retries": 1, "circuit_failures": 3})
    requests = [ask(f"request {i}") for i in range(40)]
    down = lambda seen: Fault(Kind.STATUS, 500) if seen.index >= 5 else None  # noqa: E731
    with FaultyServer(plan=down) as server:
        teacher = Teacher(cfg, server.url, "m", cache, identity="loopback")
        with pytest.raises(TeacherUnreachable, match=re.escape(server.url)) as err:
            run(teacher, requests)
        sent = len(server.requests)
        time.sleep(0.3)
        assert len(server.requests) == sent  # nothing is sent once the circuit is open
    assert "3 requests in a row failed" in str(err.value)
    assert len({s.key for s in server.requests}) < 40  # the rest were never sent
    assert len(cache_lines(cache)) == 5
    with FaultyServer() as healthy:  # the endpoint is back: the 5 answered are not asked again
        again = Teacher(TeacherConfig(**FAST), healthy.url, "m", cache, identity="loopback")
        replies = run(again, requests)
    assert again.calls == 35 and all(r.texts for r in replies)
    assert sum(r.cached for r in replies) == 5


def test_circuit_trips_when_every_try_fails_for_the_window(tmp_path):
    cfg = TeacherConfig(**{**FAST, "max_retries": 1000, "circuit_failures": 0,
                           "circuit_window_s": 0.5})
    with FaultyServer(plan=lambda seen: Fault(Kind.STATUS, 503)) as server:
        teacher = Teacher(cfg, server.url, "m", tmp_path / "c.jsonl")
        t0 = time.monotonic()
        with pytest.raises(TeacherUnreachable, match=re.escape(server.url)):
            run(teacher, [ask(f"r{i}") for i in range(4)])
    assert 0.5 <= time.monotonic() - t0 < 5


def test_budget_cap_stops_new_calls_and_reports_the_rest(tmp_path):
    # every answer bills 1000 + 1000 tokens at $1 per 1M each: $0.002 a call, budget $0.01
    cfg = TeacherConfig(**{**FAST, "concurrency": 1, "max_tokens": 1000, "budget_usd": 0.01,
                           "price_in_per_mtok": 1.0, "price_out_per_mtok": 1.0})
    with FaultyServer(usage=(1000, 1000)) as server:
        teacher = Teacher(cfg, server.url, "m", tmp_path / "c.jsonl")
        replies = run(teacher, [ask(f"r{i}") for i in range(10)], stage="refine")
    answered = [r for r in replies if r.texts]
    assert len(answered) == sum(server.successes.values()) == 5
    assert [r.failure for r in replies if not r.texts] == [Failure.BUDGET] * 5
    assert all("budget" in r.error for r in replies if not r.texts)
    usage = teacher.usage["refine"]
    assert usage.failed == {"budget": 5} and usage.answered == 5
    assert usage.cost_usd == pytest.approx(0.01) and teacher.spent_usd <= 0.01 + 1e-12
    assert (usage.prompt_tokens, usage.completion_tokens) == (5000, 5000)
    assert all(r.cost_usd == pytest.approx(0.002) for r in answered)


CHILD = """
import asyncio, sys
from pathlib import Path
from engine.config import TeacherConfig
from engine.teacher import Teacher
teacher = Teacher(TeacherConfig(concurrency=4, timeout_s=10), sys.argv[1], "m", Path(sys.argv[2]))
asyncio.run(teacher.complete_many([[{"role": "user", "content": f"task {i}"}] for i in range(30)]))
"""


def test_resume_after_sigkill_repeats_no_paid_call(tmp_path):
    cache = tmp_path / "cache.jsonl"
    requests = [ask(f"task {i}") for i in range(30)]
    with FaultyServer(latency_s=0.15) as server:
        child = subprocess.Popen([sys.executable, "-c", CHILD, server.url, str(cache)], cwd=ROOT,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + 30
        while len(cache_lines_safe(cache)) < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait()
        at_kill = dict(server.successes)
        teacher = Teacher(TeacherConfig(concurrency=4, timeout_s=10), server.url, "m", cache)
        cached = {k for k in teacher.cache.entries}
        assert 8 <= len(cached) < 30, "the child was killed mid-way"
        replies = run(teacher, requests)
    assert all(r.texts for r in replies)  # every request answered
    for m, r in zip(requests, replies):
        if r.key in cached:  # answered before the kill: never asked again
            assert r.cached and server.successes[key_of(m)] == at_kill[key_of(m)] == 1
    assert teacher.calls == 30 - len(cached)


def cache_lines_safe(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines() if path.exists() else []


WRITER = """
import sys
from pathlib import Path
from engine.teacher.cache import CacheEntry, ResponseCache
cache = ResponseCache(Path(sys.argv[1]))
for i in range(300):
    cache.put(CacheEntry(f"{sys.argv[2]}-{i}", ("x" * 2000,), 1, 1))
"""


def test_two_processes_appending_at_once_do_not_corrupt_the_cache(tmp_path):
    path = tmp_path / "shared.jsonl"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), name], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}) for name in "ab"]
    assert [p.wait() for p in procs] == [0, 0]
    lines = path.read_bytes().splitlines()
    assert len(lines) == 600 and all(orjson.loads(line)["texts"] for line in lines)
    assert len(ResponseCache(path).entries) == 600


def test_a_torn_last_line_is_ignored_and_cannot_swallow_the_next(tmp_path):
    path = tmp_path / "c.jsonl"
    cache = ResponseCache(path)
    cache.put(CacheEntry("a", ("1",), 1, 1))
    with open(path, "ab") as f:
        f.write(b'{"key": "b", "texts": ["tor')  # a kill mid-write
    assert set(ResponseCache(path).entries) == {"a"}
    ResponseCache(path).put(CacheEntry("c", ("3",), 1, 1))
    assert set(ResponseCache(path).entries) == {"a", "c"}


def test_fewer_choices_than_n_falls_back_to_separate_requests(tmp_path):
    cache = tmp_path / "c.jsonl"
    with FaultyServer() as server:
        teacher = Teacher(TeacherConfig(**FAST), server.url, "m", cache)
        [reply] = run(teacher, [ask("[faults fewer] three please")], n=3)
        assert len(reply.texts) == 3
        assert [s.n for s in server.requests] == [3, 1, 1]
        again = Teacher(TeacherConfig(**FAST), server.url, "m", cache)
        [reply2] = run(again, [ask("[faults fewer] three please")], n=3)
    assert again.calls == 0 and reply2.cached and reply2.texts == reply.texts


def test_completions_api_and_cache_key_shape(tmp_path):
    with FaultyServer() as server:
        chat = Teacher(TeacherConfig(**FAST), server.url, "m", tmp_path / "a.jsonl")
        comp = Teacher(TeacherConfig(**{**FAST, "api": "completions"}), server.url, "m",
                       tmp_path / "b.jsonl")
        [reply] = run(comp, [ask("complete me")])
    assert reply.texts == ("reply 0 to: complete me\n\n",)
    assert server.requests[0].key == '"complete me\\n\\n"'  # a prompt, not messages
    m = ask("same")
    assert len({chat.cache_key(m, 1), chat.cache_key(m, 2), comp.cache_key(m, 1)}) == 3


def test_requests_per_minute_are_paced_on_the_client(tmp_path):
    cfg = TeacherConfig(**{**FAST, "rpm": 600.0})  # 10 a second, bursts of 10
    sent: list[float] = []
    with FaultyServer() as server:
        teacher = Teacher(cfg, server.url, "m", tmp_path / "c.jsonl")
        send = teacher._send

        async def timed_send(*args):
            sent.append(time.monotonic())  # when the HTTP request leaves (server clocks jitter)
            return await send(*args)

        teacher._send = timed_send
        run(teacher, [ask(f"r{i}") for i in range(20)])
    t = sorted(sent)
    # a token bucket: any k consecutive sends span at least (k - burst of 10) / 10 per second;
    # without the limit all 20 leave within a few hundredths of a second
    assert all(j - i + 1 <= 10 + 10 * (t[j] - t[i]) + 0.5 for i in range(20) for j in range(i, 20))
    assert t[-1] - t[0] >= 0.7


def test_token_bucket_settles_estimates():
    async def go() -> float:
        bucket = TokenBucket(6000)  # 100 tokens a second, bursts of 100
        t0 = time.monotonic()
        await bucket.take(100)      # the burst: no wait
        bucket.settle(-50)          # used 50 fewer than estimated
        await bucket.take(100)      # 50 in the bucket: waits ~0.5 s for the rest
        return time.monotonic() - t0

    assert 0.4 <= asyncio.run(go()) < 1.0


def test_slots_let_retries_in_before_new_requests():
    async def go() -> list[str]:
        slots, order = Slots(1), []

        async def use(name: str, retry: bool) -> None:
            async with slots.hold(retry=retry):
                order.append(name)
                await asyncio.sleep(0.01)

        first = asyncio.ensure_future(use("holder", False))
        await asyncio.sleep(0)
        waiters = [asyncio.ensure_future(use(n, n.startswith("retry"))) for n in
                   ("new1", "new2", "retry1")]
        cancelled = asyncio.ensure_future(use("new-cancelled", False))
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.gather(first, *waiters)
        async with slots.hold(retry=False):  # nothing leaked: the slot is free again
            order.append("after")
        return order

    assert asyncio.run(go()) == ["holder", "retry1", "new1", "new2", "after"]


def test_prices_and_retry_after_parsing():
    cfg = TeacherConfig()
    assert prices("gpt-4o-mini-2024-07-18", cfg) == (0.15, 0.60)
    assert prices("gpt-4o", cfg) == (2.50, 10.00)
    assert prices("openai/gpt-4.1-mini", cfg) == (0.40, 1.60)
    assert prices("qwen2.5-coder-1.5b-instruct", cfg) == (0.0, 0.0)
    assert prices("gpt-4o", TeacherConfig(price_in_per_mtok=1.0)) == (1.0, 10.00)

    class E(Exception):
        def __init__(self, headers):
            self.response = type("R", (), {"headers": headers})()

    assert retry_after_s(E({"retry-after": "2"})) == 2.0
    assert retry_after_s(E({"retry-after-ms": "1500", "retry-after": "9"})) == 1.5
    assert 0 < retry_after_s(E({"retry-after": time.strftime(
        "%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))})) <= 31
    assert retry_after_s(ValueError()) is None


@pytest.mark.parametrize("field,value", [("api", "grpc"), ("samples", 0), ("rounds", 0),
                                         ("budget_usd", -1.0), ("template", "answer")])
def test_teacher_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"teacher.{field}"):
        TeacherConfig(**{field: value})


def test_teacher_config_help_renders():
    """argparse %-formats help strings: a bare '%' in a field's help breaks `--help`."""
    import argparse

    from engine.config import add_config_args

    parser = argparse.ArgumentParser()
    add_config_args(parser, TeacherConfig)
    assert "--budget_usd" in parser.format_help()


def test_the_engines_own_server_gets_the_long_timeout(tmp_path):
    """A loaded local server answers slowly but surely: a reply slower than timeout_s is waited
    for (server_timeout_s) when the engine started the server, and times out against a remote
    endpoint. (At 300 s every request of a loaded 2-core round timed out and the run stopped.)"""
    from engine.teacher.endpoint import Endpoint

    cfg = TeacherConfig(**{**FAST, "max_retries": 0, "timeout_s": 0.3, "server_timeout_s": 10.0})
    with FaultyServer() as server:
        local = Endpoint(server.url, "m", "local:weights", local=True).teacher(
            cfg, tmp_path / "a.jsonl")
        [reply] = run(local, [ask("[faults ok@0.8] slow but sure")])
        assert reply.texts and local.timeout_s == 10.0
        remote = Endpoint(server.url, "m", server.url, local=False).teacher(
            cfg, tmp_path / "b.jsonl")
        [reply] = run(remote, [ask("[faults ok@0.8] slow, and remote")])
        assert not reply.texts and reply.failure is Failure.RETRIES   # it timed out


def test_the_cache_holds_an_index_not_the_answers(tmp_path):
    """Memory stays bounded by the number of answers: the cache keeps where each line is and
    reads an answer when asked, after a restart, a torn line and another writer's appends alike."""
    path = tmp_path / "c.jsonl"
    cache = ResponseCache(path)
    for i in range(2000):
        cache.put(CacheEntry(f"k{i}", ("x" * 1000 + str(i),), i, 1))
    assert all(isinstance(v, tuple) and len(v) == 2 for v in cache.entries.values())
    assert not cache._pending
    with open(path, "ab") as f:
        f.write(b'{"key": "torn", "texts": ["')           # a kill mid-write
    other = ResponseCache(path)                             # another process appends after it
    other.put(CacheEntry("k5", ("newer",)))
    again = ResponseCache(path)
    assert again.get("k1999").texts == ("x" * 1000 + "1999",) and again.get("torn") is None
    assert again.get("k5").texts == ("newer",)              # later lines win
    cache.refresh()
    assert cache.get("k5").texts == ("newer",) and cache.get("k7").prompt_tokens == 7
