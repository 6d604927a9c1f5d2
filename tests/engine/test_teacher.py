"""The async teacher against vLLM's own OpenAI-compatible server (tiny model), the refine stage's
jobs and ids, and code extraction from teacher replies. Fault injection: test_teacher_faults.py."""
from __future__ import annotations

import ast
import asyncio
import time

import pytest

from engine import prompts, stages
from engine.config import TeacherConfig
from engine.prompts import extract_code
from engine.records import Attempt, Grade, Refinement, Status
from engine.tasks import BUILTIN_PATH, load_file
from engine.teacher import Teacher, TeacherUnreachable
from engine.teacher.server import LocalServer, free_port
from tests.faulty_server import FaultyServer


@pytest.fixture(scope="module")
def vllm_server(tiny_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    with LocalServer(str(tiny_model), "tiny", log, kv_cache_gb=1, max_model_len=1024,
                     startup_s=600, extra_args=("--enforce-eager",)) as url:
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


def test_n_samples_from_vllm_come_in_one_request_and_are_cached_once(vllm_server, tmp_path):
    cfg = TeacherConfig(max_tokens=16, temperature=0.8, concurrency=4)
    cache = tmp_path / "cache.jsonl"
    teacher = Teacher(cfg, vllm_server, "tiny", cache)
    msgs = [[{"role": "user", "content": f"write function number {i}"}] for i in range(2)]
    replies = asyncio.run(teacher.complete_many(msgs, n=3))
    assert teacher.calls == 2  # the API's n, not three requests each
    assert all(len(r.texts) == 3 and r.completion_tokens > 0 for r in replies)
    assert len(cache.read_bytes().splitlines()) == 2
    again = Teacher(cfg, vllm_server, "tiny", cache)
    replies2 = asyncio.run(again.complete_many(msgs, n=3))
    assert again.calls == 0 and [r.texts for r in replies2] == [r.texts for r in replies]


def test_unreachable_teacher_fails_fast_naming_the_url(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    teacher = Teacher(TeacherConfig(connect_retries=2, backoff_s=0.05), url, "m",
                      tmp_path / "c.jsonl")
    t0 = time.monotonic()
    with pytest.raises(TeacherUnreachable, match=url):
        asyncio.run(teacher.check_reachable())
    assert time.monotonic() - t0 < 30


# ------------------------------------------------------------------------ refine stage: ids, rounds

def _failed_attempt(task, i: int = 0) -> tuple[Attempt, Grade]:
    att = Attempt(f"{task.task_id}#{i}", task.task_id, "x", f"def {task.entry_point}(): pass\n")
    return att, Grade(att.attempt_id, Status.FAILED, (False,), "AssertionError: wrong", 0.01)


def test_refine_stage_ids_samples_and_second_round(tmp_path):
    task = load_file(BUILTIN_PATH)[0]
    att, grade = _failed_attempt(task)
    with FaultyServer(usage=(100, 30)) as server:
        teacher = Teacher(TeacherConfig(timeout_s=1.0), server.url, "m", tmp_path / "c.jsonl")
        jobs = stages.first_round_jobs([att], {task.task_id: task}, {att.attempt_id: grade},
                                       "refine-feedback", samples=3)
        refs = stages.ask_teacher(teacher, jobs)
        assert [r.refinement_id for r in refs] == [f"{att.attempt_id}>r0.{j}" for j in range(3)]
        assert [r.prompt_tokens for r in refs] == [100, 0, 0]  # the bill rides on sample 0
        assert all(r.attempt_id == att.attempt_id and r.template == "refine-feedback"
                   for r in refs)
        assert [r.reply.split(" to:")[0] for r in refs] == ["reply 0", "reply 1", "reply 2"]
        by_id = {r.refinement_id: r for r in refs}
        code = {rid: r.__class__(**{**r.__dict__, "code": "def f(): return 1\n"})
                for rid, r in by_id.items()}
        verdict = {rid: Grade(rid, Status.PASSED if rid.endswith(".2") else Status.ERROR, (),
                              f"error of {rid}", 0.01) for rid in code}
        assert stages.next_round_jobs(jobs, code, verdict) == []  # sample 2 passed: solved
        verdict[f"{att.attempt_id}>r0.2"] = Grade(f"{att.attempt_id}>r0.2", Status.ERROR, (),
                                                  "error of 2", 0.01)
        second = stages.next_round_jobs(jobs, code, verdict)
        assert [j.job_id for j in second] == [f"{att.attempt_id}>r1.{j}" for j in range(3)]
        assert second[1].code == "def f(): return 1\n"
        assert second[1].feedback == f"error of {att.attempt_id}>r0.1"
        refs2 = stages.ask_teacher(teacher, second)
        assert [r.refinement_id for r in refs2] == [j.job_id for j in second]
        asked = server.requests[-1].key
        assert "error of" in asked and "def f(): return 1" in asked  # its own code and error
        [stand] = stages.ask_teacher(teacher, stages.stand_jobs([task]), stage="stand")
    assert (stand.refinement_id, stand.attempt_id, stand.template) == (
        f"{task.task_id}>stand", None, "answer")
    assert {k: u.requests for k, u in teacher.usage.items()} == {"refine": 4, "stand": 1}


def test_one_per_attempt_keeps_the_first_passing_refinement():
    task = load_file(BUILTIN_PATH)[0]
    att, _ = _failed_attempt(task)
    refs = [Refinement(f"{att.attempt_id}>r0.{j}", task.task_id, att.attempt_id,
                              "refine-feedback", "", "code") for j in range(3)]
    verified = {r.refinement_id: Grade(r.refinement_id, Status.PASSED, (), "", 0.0)
                for r in refs}
    kept = stages.one_per_attempt(refs, verified, {att.attempt_id: att})
    assert [r.refinement_id for r in kept] == [f"{att.attempt_id}>r0.0"]  # a tie: the first


def test_one_per_attempt_keeps_the_passing_refinement_closest_to_the_attempt():
    task = load_file(BUILTIN_PATH)[0]
    att, _ = _failed_attempt(task)
    far = "import math\n\ndef other(*a):\n    return [math.pi for _ in a]\n"
    near = att.code.replace("return", "return  ", 1) + "\n# fixed\n"
    refs = [Refinement(f"{att.attempt_id}>r0.{j}", task.task_id, att.attempt_id,
                       "refine-feedback", "", code) for j, code in enumerate((far, near, far))]
    verified = {r.refinement_id: Grade(r.refinement_id, Status.PASSED, (), "", 0.0)
                for r in refs}
    kept = stages.one_per_attempt(refs, verified, {att.attempt_id: att})
    assert [r.refinement_id for r in kept] == [f"{att.attempt_id}>r0.1"]
    every = stages.one_per_attempt(refs, verified, {att.attempt_id: att}, keep="all")
    assert len(every) == 3


# --------------------------------------------------------------------------------- code extraction

def same_code(got: str | None, want: str) -> bool:
    """Equal as Python (extract_code may normalise blank lines between definitions)."""
    return got is not None and ast.dump(ast.parse(got)) == ast.dump(ast.parse(want))


def test_extract_code_from_a_fenced_block():
    reply = "```python\ndef add(a, b):\n    return a + b\n```"
    assert same_code(extract_code(reply, "add"), "def add(a, b):\n    return a + b\n")


def test_extract_code_takes_the_last_block_defining_the_function():
    reply = ("The bug is here:\n```python\ndef add(a, b):\n    return a - b\n```\n"
             "Usage:\n```\nprint(add(1, 2))\n```\nFixed:\n```py\ndef add(a, b):\n"
             "    return a + b\n```\nand a shell line:\n```bash\npython x.py\n```")
    assert same_code(extract_code(reply, "add"), "def add(a, b):\n    return a + b\n")


def test_extract_code_without_fences_drops_the_chat_preamble():
    reply = ("Sure! Here is the corrected function.\n\nimport math\ndef root(x):\n"
             "    return math.sqrt(x)\n")
    assert same_code(extract_code(reply, "root"),
                     "import math\ndef root(x):\n    return math.sqrt(x)\n")


def test_extract_code_with_a_preamble_and_an_unclosed_fence():
    reply = "Of course. The fix:\n\n```python\ndef neg(x):\n    return -x\n"
    assert same_code(extract_code(reply, "neg"), "def neg(x):\n    return -x\n")


def test_extract_code_reattaches_a_bare_body_to_the_prompt():
    prompt = "def inc(x):\n    \"\"\"Add one.\"\"\"\n"
    assert same_code(extract_code("    return x + 1\n", "inc", prompt),
                     prompt + "    return x + 1\n")


def test_extract_code_none_when_the_reply_has_no_code():
    assert extract_code("I am not sure what you mean.", "f") is None
    assert extract_code("```python\n\n```", "f") is None


def test_an_unchanged_refinement_is_counted_and_never_asked_again_the_same_way(tmp_path):
    from tests.tiny import ScriptedTeacher

    task = load_file(BUILTIN_PATH)[0]
    att, grade = _failed_attempt(task)
    with ScriptedTeacher([task], copy=True) as server:
        teacher = Teacher(TeacherConfig(timeout_s=5.0, temperature=0.0), server.url, "m",
                          tmp_path / "c.jsonl")
        jobs = stages.first_round_jobs([att], {task.task_id: task}, {att.attempt_id: grade},
                                       "refine-feedback", 1)
        [ref] = stages.ask_teacher(teacher, jobs)
        assert ref.unchanged and ref.code is not None
        failed = Grade(ref.refinement_id, Status.FAILED, (False,), grade.feedback, 0.0)
        [again] = stages.next_round_jobs(jobs, {ref.refinement_id: ref},
                                         {ref.refinement_id: failed}, retry_temperature=0.7)
        assert prompts.teacher_messages(again.template, task, again.code, again.feedback) == \
            prompts.teacher_messages(jobs[0].template, task, jobs[0].code, jobs[0].feedback)
        assert teacher.cache_key(*[prompts.teacher_messages(
            j.template, task, j.code, j.feedback) for j in (again,)], 1, again.extra) != \
            teacher.cache_key(prompts.teacher_messages(
                jobs[0].template, task, jobs[0].code, jobs[0].feedback), 1)
        stages.ask_teacher(teacher, [again])
        first, second = server.requests
        assert first["temperature"] == 0.0 and second["temperature"] == 0.7
        assert second["seed"] == 1 and first["messages"] == second["messages"]


def _seeded_burst(url: str, prompt_words: int = 350, requests: int = 24) -> list[str]:
    """Many seeded requests with long prompts at once: more prefill than one step's budget."""
    from openai import AsyncOpenAI

    async def go():
        client = AsyncOpenAI(base_url=url, api_key="EMPTY", timeout=120, max_retries=0)
        text = " ".join(f"word{i % 50}" for i in range(prompt_words))
        replies = await asyncio.gather(*[client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": f"{i} {text}"}], max_tokens=4,
            temperature=0.8, seed=i) for i in range(requests)])
        return [r.choices[0].message.content for r in replies]
    return asyncio.run(go())


def test_seeded_requests_with_long_prompts_do_not_kill_the_server(vllm_server):
    """The retries of unchanged refinements are seeded; a seeded request whose prefill vLLM
    chunks across steps killed the CPU engine ("CPU Generator does not use offset") in the
    quality run's second round. The engine's server prefills whole, and keeps serving."""
    assert len(_seeded_burst(vllm_server)) == 24
    assert len(_seeded_burst(vllm_server, requests=2)) == 2     # still alive
