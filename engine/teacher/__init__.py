"""The teacher as a service: an async client for any OpenAI-compatible endpoint, its durable
response cache and rate limits, and the local vLLM server started when no endpoint is given.

    client.py   Teacher: retries, backoff, circuit breaker, budget, prices, typed failures
    cache.py    ResponseCache: every paid answer on disk before it is used
    limits.py   Slots (requests in flight) and TokenBucket (requests and tokens per minute)
    server.py   LocalServer: vLLM's OpenAI server on 127.0.0.1 for a local teacher
"""
from engine.teacher.client import (
                                   PRICES_PER_MTOK,
                                   Failure,
                                   Teacher,
                                   TeacherReply,
                                   TeacherUnreachable,
                                   Usage,
                                   prices,
                                   retry_after_s,
)

__all__ = ["PRICES_PER_MTOK", "Failure", "Teacher", "TeacherReply", "TeacherUnreachable", "Usage",
           "prices", "retry_after_s"]
