"""The async teacher against vLLM's own OpenAI-compatible server (tiny model), and failure modes."""
from __future__ import annotations

import asyncio
import time

import pytest

from engine.config import TeacherConfig
from engine.server import LocalServer, free_port
from engine.teacher import Teacher, TeacherUnreachable


@pytest.fixture(scope="module")
def vllm_server(tiny_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    with LocalServer(str(tiny_model), "tiny", log, kv_cache_gb=1, max_model_len=1024,
                     startup_s=300) as url:
        yield url


def test_teacher_against_vllm_server_caches_every_answer(vllm_server, tmp_path):
    cfg = TeacherConfig(max_tokens=16, temperature=0.0, concurrency=4)
    cache = tmp_path / "cache.jsonl"
    teacher = Teacher(cfg, vllm_server, "tiny", cache)
    msgs = [[{"role": "user", "content": f"write function number {i}"}] for i in range(5)]
    asyncio.run(teacher.check_reachable())
    replies = asyncio.run(teacher.complete_many(msgs))
    assert teacher.calls == 5
    assert all(r.text is not None and r.completion_tokens > 0 and not r.cached for r in replies)
    assert len(cache.read_bytes().splitlines()) == 5
    # a new client on the same cache (a re-run) answers everything without a call
    again = Teacher(cfg, vllm_server, "tiny", cache)
    replies2 = asyncio.run(again.complete_many(msgs))
    assert again.calls == 0 and all(r.cached for r in replies2)
    assert [r.text for r in replies2] == [r.text for r in replies]


def test_unreachable_teacher_fails_fast_naming_the_url(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    teacher = Teacher(TeacherConfig(connect_retries=2), url, "m", tmp_path / "c.jsonl")
    t0 = time.monotonic()
    with pytest.raises(TeacherUnreachable, match=url):
        asyncio.run(teacher.check_reachable())
    assert time.monotonic() - t0 < 30
