"""The async teacher: any OpenAI-compatible endpoint, chat or completions API, that never loses a
paid call, stays under the provider's rate limits and counts every cent.

Why each part is here:
* every answer is appended to a JSONL cache (fsynced, under flock) before it is handed back, so a
  killed, resumed or concurrent run never pays twice for a request it already has;
* requests- and tokens-per-minute buckets keep the client under the provider's limits instead of
  finding them through 429s; a 429 that still comes is retried no sooner than its Retry-After;
* 5xx, timeouts, dropped connections and malformed replies are retried with jittered exponential
  backoff; when the endpoint stays down (`circuit_failures` requests in a row failed after all
  retries, or nothing but failures for `circuit_window_s`) new calls stop, the calls in flight
  finish, and `TeacherUnreachable` names the URL;
* each reply's usage is priced (built-in table or config) into a per-stage ledger, and a call that
  could cross `budget_usd` is not sent: its request comes back failed with reason `budget`.

A request either comes back answered or failed with a `Failure` reason; none is dropped.

    teacher = Teacher(TeacherConfig(), "http://127.0.0.1:8000/v1", "my-model", Path("cache.jsonl"))
    replies = asyncio.run(teacher.complete_many([[{"role": "user", "content": "hi"}]], n=2))
    replies[0].texts, teacher.usage["teacher"].cost_usd
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import enum
import hashlib
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import orjson

from common.errors import TeacherUnreachable  # noqa: F401 (raised here; callers catch it)
from engine.config import TeacherConfig
from engine.run import faults
from engine.teacher.cache import CacheEntry, ResponseCache
from engine.teacher.limits import Slots, TokenBucket

# USD per 1M (prompt, completion) tokens, list prices in 2025. A dated snapshot such as
# gpt-4o-mini-2024-07-18 takes its family's price (longest matching prefix); any other model (local
# servers, unknown names) costs 0 unless TeacherConfig.price_*_per_mtok say otherwise.
PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-3.5-turbo": (0.50, 1.50),
}


class Failure(str, enum.Enum):
    """Why a request came back without an answer (the run goes on; it is retried on resume)."""

    RETRIES = "retries"    # 429/5xx/timeout/connection/malformed reply on every try
    REJECTED = "rejected"  # a 4xx other than 408/409/429 (bad request, auth, too long): not retried
    BUDGET = "budget"      # not sent: it could have crossed budget_usd
    CIRCUIT = "circuit"    # not sent: the endpoint was declared down during this batch


@dataclass(frozen=True)
class TeacherReply:
    key: str                  # cache key of the request
    texts: tuple[str, ...]    # one per sample asked for; () when the request failed
    prompt_tokens: int        # billed for this request, all its samples (retries bill nothing)
    completion_tokens: int
    cached: bool              # answered from the cache: nothing spent now
    error: str = ""
    failure: Failure | None = None
    cost_usd: float = 0.0     # at the configured prices, whether paid now or by an earlier run

    @property
    def text(self) -> str | None:
        return self.texts[0] if self.texts else None


@dataclass
class Usage:
    """What one stage asked for and spent in this process (mutable counters, not a record)."""

    requests: int = 0
    cached: int = 0            # answered from the cache
    answered: int = 0          # answered by the endpoint now
    http_calls: int = 0        # HTTP requests sent, retries and n-fallbacks included
    prompt_tokens: int = 0     # billed now
    completion_tokens: int = 0
    cost_usd: float = 0.0      # spent now
    usage_estimated: int = 0   # replies without a usage block, priced at 4 characters a token
    failed: Counter[str] = field(default_factory=Counter)  # Failure value -> requests


def prices(model: str, cfg: TeacherConfig) -> tuple[float, float]:
    """(USD per 1M prompt tokens, per 1M completion tokens) for `model`, config overrides first."""
    name = model.rsplit("/", 1)[-1]  # "openai/gpt-4o-mini" on routers
    match = max((m for m in PRICES_PER_MTOK if name.startswith(m)), key=len, default=None)
    table = PRICES_PER_MTOK[match] if match else (0.0, 0.0)
    return (cfg.price_in_per_mtok if cfg.price_in_per_mtok >= 0 else table[0],
            cfg.price_out_per_mtok if cfg.price_out_per_mtok >= 0 else table[1])


def completion_prompt(messages: list[dict[str, str]]) -> str:
    """Chat turns as one text for the completions API: contents with blank lines between."""
    return "\n\n".join(m["content"] for m in messages) + "\n\n"


def estimate_tokens(messages: list[dict[str, str]]) -> int:
    """Prompt tokens before the call (4 characters a token, plus per-message overhead)."""
    return sum(len(m["content"]) for m in messages) // 4 + 4 * len(messages)


def parse_reply(body: bytes, chat: bool) -> tuple[list[str], dict]:
    """(texts of the choices, usage block) of a chat or completions reply; ValueError when the
    body is not such a reply (a malformed reply is retried like a 5xx)."""
    try:
        data = orjson.loads(body)
        choices = data.get("choices") or []
        texts = [((c.get("message") or {}).get("content") if chat else c.get("text")) or ""
                 for c in choices]
        usage = data.get("usage") or {}
        if not all(isinstance(t, str) for t in texts) or not isinstance(usage, dict):
            raise TypeError("unexpected field types")
    except (orjson.JSONDecodeError, AttributeError, TypeError) as e:
        raise ValueError(f"malformed reply: {e}: {body[:200]!r}") from None
    return texts, usage


class _Failed(Exception):
    def __init__(self, failure: Failure, error: str):
        super().__init__(error)
        self.failure, self.error = failure, error


def retry_after_s(e: Exception) -> float | None:
    """Seconds the server asked us to wait (`retry-after-ms`, `Retry-After` seconds or date)."""
    headers = getattr(getattr(e, "response", None), "headers", None)
    if not headers:
        return None
    if headers.get("retry-after-ms"):
        try:
            return float(headers["retry-after-ms"]) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class HTTPPool:
    """The teacher's HTTP connections: one aiohttp session (its C parser and connection pool
    cost a fraction of httpx's per request; py-spy on benchmarks/bench_teacher.py at 256 in
    flight: the openai SDK on httpx spent most of the event loop in request building and in
    httpx's pool scanning every connection per request, 41% of the ideal rate). Failures are
    raised as the openai SDK's exceptions, which the retry loop classifies: status errors carry
    the response headers (Retry-After), timeouts and connection errors their own types."""

    def __init__(self, base_url: str, key: str, timeout_s: float, connections: int) -> None:
        self.base_url, self.key, self.timeout_s = base_url.rstrip("/"), key, timeout_s
        self.connections = connections
        self.session = None

    async def __aenter__(self) -> "HTTPPool":
        import aiohttp

        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.connections, limit_per_host=0),
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"})
        return self

    async def __aexit__(self, *exc) -> None:
        await self.session.close()

    async def post(self, path: str, body: bytes) -> bytes:
        import aiohttp
        import httpx2
        import openai

        url = f"{self.base_url}/{path}"
        try:
            async with self.session.post(url, data=body) as resp:
                content = await resp.read()
                status = resp.status
                headers = dict(resp.headers) if status >= 400 else None
        except asyncio.TimeoutError:
            raise openai.APITimeoutError(request=httpx2.Request("POST", url)) from None
        except aiohttp.ClientError as e:
            raise openai.APIConnectionError(message=f"{type(e).__name__}: {e}",
                                            request=httpx2.Request("POST", url)) from None
        if status >= 400:   # the SDK's exception types are built only for a failure
            response = httpx2.Response(status, headers=headers, content=content,
                                       request=httpx2.Request("POST", url))
            raise openai.APIStatusError(f"Error code: {status} - {content[:300]!r}",
                                        response=response, body=None)
        return content


class Teacher:
    def __init__(self, cfg: TeacherConfig, base_url: str, model: str, cache_path: Path,
                 identity: str | None = None, timeout_s: float | None = None):
        """`identity` names the endpoint in cache keys (default: base_url); a local server on a
        random port passes a stable one so re-runs hit the cache. `timeout_s` replaces
        cfg.timeout_s (the engine's own local server gets cfg.server_timeout_s)."""
        self.cfg, self.base_url, self.model = cfg, base_url.rstrip("/"), model
        self.timeout_s = timeout_s or cfg.timeout_s
        self.identity = identity or self.base_url
        self.cache = ResponseCache(cache_path)
        self.price_in, self.price_out = prices(model, cfg)
        self.calls = 0            # HTTP requests sent by this process (retries included)
        self.spent_usd = 0.0      # by this process, every stage
        self.usage: dict[str, Usage] = {}
        self._rpm, self._tpm = TokenBucket(cfg.rpm), TokenBucket(cfg.tpm)
        self._reserved_usd = 0.0  # estimated cost of the calls in flight (for the budget)
        self._slots = Slots(cfg.concurrency)  # remade per complete_many (futures bind a loop)
        self.client = None        # bound to one event loop: made per session / check
        self._shared_loop: asyncio.AbstractEventLoop | None = None   # while shared()
        self._reset_circuit()

    def _new_client(self):
        from openai import AsyncOpenAI

        return AsyncOpenAI(base_url=self.base_url, api_key=self._key(), timeout=self.timeout_s,
                           max_retries=0)  # our own retry loop (Retry-After, counting, circuit)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.price_in + completion_tokens * self.price_out) / 1e6

    def _payload(self, messages: list[dict[str, str]], n: int, extra: dict | None = None) -> dict:
        """The request body; `extra` overrides sampling per request (a retry that must not
        repeat an earlier request: another temperature and seed)."""
        c = self.cfg
        sampling = {"model": self.model, "temperature": c.temperature, "top_p": c.top_p,
                    "max_tokens": c.max_tokens, "n": n, **(extra or {})}
        if c.api == "chat":
            return {"messages": messages, **sampling}
        return {"prompt": completion_prompt(messages), **sampling}

    def cache_key(self, messages: list[dict[str, str]], n: int = 1, extra: dict | None = None
                  ) -> str:
        """Hash of all that shapes the answer: endpoint, API kind, model, text, sampling, n."""
        blob = orjson.dumps({"endpoint": self.identity, "api": self.cfg.api,
                             **self._payload(messages, n, extra)}, option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(blob).hexdigest()

    def _key(self) -> str:
        return os.environ.get(self.cfg.api_key_env) or "EMPTY"  # local servers need none

    def _new_pool(self) -> HTTPPool:
        return HTTPPool(self.base_url, self._key(), self.timeout_s, self.cfg.concurrency)

    async def check_reachable(self) -> None:
        """Fail fast, naming the URL, when the endpoint does not answer `/models`."""
        last = ""
        async with self._new_client() as client:
            for attempt in range(self.cfg.connect_retries):
                try:
                    await client.with_options(timeout=10.0).models.list()
                    return
                except Exception as e:  # noqa: BLE001 - any failure means unreachable here
                    last = f"{type(e).__name__}: {e}"
                    if attempt + 1 < self.cfg.connect_retries:
                        await asyncio.sleep(min(self.cfg.backoff_s * 2 ** attempt,
                                                min(5.0, self.cfg.backoff_max_s)))
        raise TeacherUnreachable(f"teacher endpoint {self.base_url} is unreachable after "
                                 f"{self.cfg.connect_retries} tries ({last})")

    # ------------------------------------------------------------------------------- circuit

    def _reset_circuit(self) -> None:
        self._down = ""                 # why the endpoint was declared down; "" while it is up
        self._down_event: asyncio.Event | None = None
        self._failed_in_a_row = 0       # requests that failed after all retries, since a success
        self._failing_since: float | None = None  # first failed try since the last success

    def _trip(self, why: str) -> None:
        if not self._down:
            self._down = why
            if self._down_event:
                self._down_event.set()  # wakes requests sleeping in backoff

    def _try_failed(self, error: str) -> None:
        now = time.monotonic()
        self._failing_since = self._failing_since or now
        window = self.cfg.circuit_window_s
        if window and now - self._failing_since >= window:
            self._trip(f"every try failed for {now - self._failing_since:.0f} s (last: {error})")

    def _request_failed(self, error: str) -> None:
        self._failed_in_a_row += 1
        if self.cfg.circuit_failures and self._failed_in_a_row >= self.cfg.circuit_failures:
            self._trip(f"{self._failed_in_a_row} requests in a row failed after "
                       f"{self.cfg.max_retries} retries each (last: {error})")

    async def _backoff(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._down_event.wait(), seconds)
        except TimeoutError:
            pass

    # ------------------------------------------------------------------------------- calling

    async def _send(self, messages: list[dict[str, str]], n: int, usage: Usage,
                    extra: dict | None = None) -> tuple[list[str], int, int]:
        """One HTTP request: (texts, prompt tokens, completion tokens).

        Sent by HTTPPool (aiohttp) and parsed with orjson, not through the openai SDK: its
        per-call request building cost more CPU than the HTTP itself, and at 200+ calls a second
        the event loop is the bottleneck (benchmarks/bench_teacher.py). Failures arrive as the
        SDK's exceptions, which the retry loop in `_call` classifies."""
        chat = self.cfg.api == "chat"
        content = await self.client.post("chat/completions" if chat else "completions",
                                         orjson.dumps(self._payload(messages, n, extra)))
        texts, usage_block = parse_reply(content, chat)
        if not texts:
            raise ValueError("the reply has no choices")
        pt, ct = usage_block.get("prompt_tokens"), usage_block.get("completion_tokens")
        if not isinstance(pt, int) or not isinstance(ct, int):
            usage.usage_estimated += 1  # some servers send none: price what we can see
            return texts[:n], estimate_tokens(messages), sum(len(t) for t in texts) // 4
        return texts[:n], pt, ct

    async def _call(self, messages: list[dict[str, str]], n: int, usage: Usage,
                    extra: dict | None = None) -> tuple[list[str], int, int]:
        """One request (n samples) with limits, budget, retries and circuit; raises _Failed.

        A try holds one of the `concurrency` slots while it is in flight, not while it backs off,
        so a 429 does not idle a slot for its Retry-After."""
        import openai

        c = self.cfg
        est_prompt = estimate_tokens(messages)
        est_tokens = est_prompt + c.max_tokens * n
        est_cost = self.cost(est_prompt, c.max_tokens * n)
        for attempt in range(c.max_retries + 1):
            async with self._slots.hold(retry=attempt > 0):
                if self._down:
                    raise _Failed(Failure.CIRCUIT, f"not sent: {self.base_url} is down")
                await self._rpm.take(1)
                await self._tpm.take(est_tokens)
                if c.budget_usd and self.spent_usd + self._reserved_usd + est_cost > c.budget_usd:
                    self._tpm.settle(-est_tokens)
                    raise _Failed(Failure.BUDGET, f"not sent: budget_usd {c.budget_usd:g} reached "
                                  f"(spent {self.spent_usd:.4f}, in flight "
                                  f"{self._reserved_usd:.4f})")
                self._reserved_usd += est_cost
                self.calls += 1
                usage.http_calls += 1
                try:
                    texts, pt, ct = await self._send(messages, n, usage, extra)
                except (openai.APIError, ValueError) as e:
                    err = e
                else:
                    self._failed_in_a_row, self._failing_since = 0, None
                    self._tpm.settle(pt + ct - est_tokens)
                    spent = self.cost(pt, ct)
                    self.spent_usd += spent
                    usage.cost_usd += spent
                    usage.prompt_tokens += pt
                    usage.completion_tokens += ct
                    return texts, pt, ct
                finally:
                    self._reserved_usd -= est_cost
            error = f"{type(err).__name__}: {err}"[:500]
            status = getattr(err, "status_code", None)
            if isinstance(err, openai.APIStatusError) and status not in (408, 409, 429) \
                    and status < 500:
                raise _Failed(Failure.REJECTED, error)
            limited = status == 429  # the endpoint is up, just busy: not a circuit failure
            if not limited:
                self._try_failed(error)
            self._tpm.settle(-est_tokens)  # nothing generated as far as we know
            if attempt == c.max_retries or self._down:
                if not limited:
                    self._request_failed(error)
                raise _Failed(Failure.CIRCUIT if self._down else Failure.RETRIES, error)
            wait = retry_after_s(err)
            if wait is not None:  # the server's own backoff; up to 10% more spreads a herd
                wait *= random.uniform(1.0, 1.1)
            else:
                wait = min(c.backoff_s * 2 ** attempt, c.backoff_max_s) * random.uniform(0.5, 1.5)
            await self._backoff(wait)
        raise AssertionError("unreachable")

    async def _answer(self, messages: list[dict[str, str]], key: str, n: int, usage: Usage,
                      extra: dict | None = None) -> TeacherReply:
        """Ask with the API's n; an endpoint that returns fewer choices gets the rest as separate
        requests. Each part is cached as it lands, so a kill mid-way keeps what was paid for."""
        hit = self.cache.get(key) or CacheEntry(key, ())
        texts, pt, ct = list(hit.texts), hit.prompt_tokens, hit.completion_tokens
        try:
            while len(texts) < n:
                got, p, c = await self._call(messages, 1 if texts else n, usage, extra)
                texts, pt, ct = (texts + got)[:n], pt + p, ct + c
                await self.cache.put_async(CacheEntry(key, tuple(texts), pt, ct))
                faults.point("teacher-answer")  # durable now: a kill here costs nothing
        except _Failed as f:
            return TeacherReply(key, (), pt, ct, cached=False, error=f.error, failure=f.failure,
                                cost_usd=self.cost(pt, ct))
        return TeacherReply(key, tuple(texts), pt, ct, cached=False, cost_usd=self.cost(pt, ct))

    def _cached(self, key: str, n: int) -> TeacherReply | None:
        hit = self.cache.get(key)
        if hit is None or len(hit.texts) < n:
            return None
        pt, ct = hit.prompt_tokens, hit.completion_tokens
        return TeacherReply(key, hit.texts[:n], pt, ct, cached=True,
                            cost_usd=self.cost(pt, ct))

    async def complete_many(self, requests: list[list[dict[str, str]]],
                            on_done: Callable[[int, TeacherReply], None] | None = None, *,
                            n: int = 1, stage: str = "teacher",
                            extras: list[dict | None] | None = None) -> list[TeacherReply]:
        """Answer every request with n samples, cached ones for free; `on_done(i, reply)` as each
        finishes. Each reply is an answer or a failure with its reason, counted in
        `usage[stage]`. If the circuit trips, the calls in flight finish, the rest fail, and then
        TeacherUnreachable is raised: every answer received is in the cache by then."""
        async with self._session():
            return await self._batch(requests, on_done, n, stage, extras)

    def complete(self, requests: list[list[dict[str, str]]],
                 on_done: Callable[[int, TeacherReply], None] | None = None, *, n: int = 1,
                 stage: str = "teacher", extras: list[dict | None] | None = None
                 ) -> list[TeacherReply]:
        """`complete_many` for synchronous callers. While the teacher is shared (`shared()`,
        the streaming executor) the batch joins the one session every thread's batches share
        (one concurrency limit, one circuit, one connection pool); else it runs on its own."""
        if self._shared_loop is None:
            return asyncio.run(self.complete_many(requests, on_done, n=n, stage=stage,
                                                  extras=extras))
        return asyncio.run_coroutine_threadsafe(
            self._batch(requests, on_done, n, stage, extras), self._shared_loop).result()

    @contextlib.contextmanager
    def shared(self):
        """Serve `complete` calls from many threads through one session on its own event loop
        thread, for the life of the block."""
        import threading

        ready, loop = threading.Event(), asyncio.new_event_loop()
        stop: list[asyncio.Event] = []

        async def serve() -> None:
            async with self._session():
                stop.append(asyncio.Event())
                ready.set()
                await stop[0].wait()

        thread = threading.Thread(target=loop.run_until_complete, args=(serve(),),
                                  name="teacher-session", daemon=True)
        thread.start()
        ready.wait()
        self._shared_loop = loop
        try:
            yield self
        finally:
            self._shared_loop = None
            loop.call_soon_threadsafe(stop[0].set)
            thread.join()
            loop.close()

    @contextlib.asynccontextmanager
    async def _session(self):
        """Concurrency slots, circuit and connections for the batches asked within it."""
        self._slots = Slots(self.cfg.concurrency)
        self._reset_circuit()
        self._down_event = asyncio.Event()
        async with self._new_pool() as self.client:
            try:
                yield
            finally:
                self.client = None

    async def _batch(self, requests: list[list[dict[str, str]]],
                     on_done: Callable[[int, TeacherReply], None] | None, n: int, stage: str,
                     extras: list[dict | None] | None) -> list[TeacherReply]:
        usage = self.usage.setdefault(stage, Usage())
        self.cache.refresh()  # what other processes sharing the cache answered meanwhile
        asking: dict[str, asyncio.Future] = {}  # key -> its one answer in this batch

        async def one(i: int, messages: list[dict[str, str]]) -> TeacherReply:
            extra = extras[i] if extras else None
            key = self.cache_key(messages, n, extra)
            reply = self._cached(key, n)
            if reply is None:
                first = key not in asking
                if first:
                    asking[key] = asyncio.ensure_future(self._answer(messages, key, n, usage,
                                                                     extra))
                reply = await asking[key]
                if not first and reply.texts:  # the same request twice in a batch: asked once
                    reply = dataclasses.replace(reply, cached=True)
            usage.requests += 1
            if reply.failure is not None:
                usage.failed[reply.failure.value] += 1
            elif reply.cached:
                usage.cached += 1
            else:
                usage.answered += 1
            if on_done:
                on_done(i, reply)
            return reply

        replies = await asyncio.gather(*(one(i, m) for i, m in enumerate(requests)))
        if self._down:
            answered = sum(bool(r.texts) for r in replies)
            raise TeacherUnreachable(
                f"teacher endpoint {self.base_url} is down: {self._down}. {answered} of "
                f"{len(requests)} requests of this batch were answered and are in the cache "
                f"{self.cache.path}; run again to resume")
        return replies
