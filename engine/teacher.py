"""The async teacher: any OpenAI-compatible endpoint, bounded concurrency, retries, durable cache.

Every answered request is appended to a JSONL cache keyed by a hash of (endpoint, model,
messages, sampling); a re-run or resumed run pays for nothing already answered. Retries back off
exponentially with jitter, honouring Retry-After. An endpoint that never answers fails fast with
its URL (after `connect_retries` health checks) instead of hanging the run.

    teacher = Teacher(TeacherConfig(base_url="http://127.0.0.1:8000/v1"), cache_path)
    replies = asyncio.run(teacher.complete_many([messages, ...]))
"""
from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path

import orjson

from engine.config import TeacherConfig


class TeacherUnreachable(RuntimeError):
    """The endpoint did not answer at all; fatal for the run (finished work is already on disk)."""


@dataclass(frozen=True)
class TeacherReply:
    key: str                 # cache key of the request
    text: str | None         # None when the request failed for good
    prompt_tokens: int
    completion_tokens: int
    cached: bool
    error: str = ""


class ResponseCache:
    """Append-only JSONL of answered requests; one line per answer, flushed and fsynced as it
    arrives, under an exclusive file lock so concurrent runs sharing the file never interleave."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, dict] = {}
        if path.exists():
            with open(path, "rb") as f:
                for line in f:
                    try:
                        rec = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        continue  # a line torn by a kill mid-write: that answer is simply redone
                    self.entries[rec["key"]] = rec
        path.parent.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, rec: dict) -> None:
        self.entries[rec["key"]] = rec
        data = orjson.dumps(rec) + b"\n"
        with open(self.path, "ab") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            fcntl.flock(f, fcntl.LOCK_UN)


class Teacher:
    def __init__(self, cfg: TeacherConfig, base_url: str, model: str, cache_path: Path,
                 identity: str | None = None):
        """`identity` names the endpoint in cache keys (default: base_url); a local server on a
        random port passes a stable one so re-runs hit the cache."""
        self.cfg, self.base_url, self.model = cfg, base_url.rstrip("/"), model
        self.identity = identity or self.base_url
        self.cache = ResponseCache(cache_path)
        self.calls = 0  # requests actually sent (for tests and the summary)
        self.client = None  # bound to one event loop: made per complete_many / check

    def _new_client(self):
        from openai import AsyncOpenAI

        key = os.environ.get(self.cfg.api_key_env) or "EMPTY"  # local servers need none
        return AsyncOpenAI(base_url=self.base_url, api_key=key, timeout=self.cfg.timeout_s,
                           max_retries=0)  # our own retry loop (Retry-After, counting)

    def cache_key(self, messages: list[dict[str, str]], n: int = 1) -> str:
        blob = orjson.dumps({"endpoint": self.identity, "model": self.model, "messages": messages,
                             "temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens,
                             "n": n}, option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(blob).hexdigest()

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
                    await asyncio.sleep(min(2 ** attempt, 5))
        raise TeacherUnreachable(f"teacher endpoint {self.base_url} is unreachable after "
                                 f"{self.cfg.connect_retries} tries ({last})")

    async def _call(self, messages: list[dict[str, str]], key: str) -> TeacherReply:
        import openai

        delay = 1.0
        for attempt in range(self.cfg.max_retries + 1):
            try:
                self.calls += 1
                resp = await self.client.chat.completions.create(
                    model=self.model, messages=messages, temperature=self.cfg.temperature,
                    max_tokens=self.cfg.max_tokens)
                if not resp.choices:
                    raise ValueError("response has no choices")
                usage = resp.usage
                rec = {"key": key, "text": resp.choices[0].message.content or "",
                       "prompt_tokens": usage.prompt_tokens if usage else 0,
                       "completion_tokens": usage.completion_tokens if usage else 0}
                self.cache.put(rec)
                return TeacherReply(key, rec["text"], rec["prompt_tokens"],
                                    rec["completion_tokens"], cached=False)
            except (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError,
                    openai.APIConnectionError, ValueError) as e:
                error = f"{type(e).__name__}: {e}"
                if attempt == self.cfg.max_retries:
                    return TeacherReply(key, None, 0, 0, cached=False, error=error)
                wait = delay * (0.5 + random.random())
                retry_after = getattr(getattr(e, "response", None), "headers", {}).get("retry-after")
                if retry_after:
                    try:
                        wait = max(wait, float(retry_after))
                    except ValueError:
                        pass
                await asyncio.sleep(wait)
                delay = min(delay * 2, 30.0)
            except openai.APIStatusError as e:  # 4xx other than 429: retrying will not help
                return TeacherReply(key, None, 0, 0, cached=False,
                                    error=f"{type(e).__name__}: {e}")
        raise AssertionError("unreachable")

    async def complete_many(self, requests: list[list[dict[str, str]]],
                            on_done=None) -> list[TeacherReply]:
        """Answer all requests, cached ones first and for free; `on_done(i, reply)` per answer."""
        sem = asyncio.Semaphore(self.cfg.concurrency)

        async def one(i: int, messages: list[dict[str, str]]) -> TeacherReply:
            key = self.cache_key(messages)
            hit = self.cache.get(key)
            if hit is not None:
                reply = TeacherReply(key, hit["text"], hit["prompt_tokens"],
                                     hit["completion_tokens"], cached=True)
            else:
                async with sem:
                    reply = await self._call(messages, key)
            if on_done:
                on_done(i, reply)
            return reply

        async with self._new_client() as self.client:
            try:
                return await asyncio.gather(*(one(i, m) for i, m in enumerate(requests)))
            finally:
                self.client = None
