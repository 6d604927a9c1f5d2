"""Session-scoped heavy parts: the tiny model (built once) and one vLLM student pool."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED / "humaneval.jsonl").exists():
        pytest.skip(f"shared data not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def builtin_tasks():
    from engine.tasks import load_tasks

    return load_tasks("builtin-all")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, builtin_tasks) -> Path:
    from tests.tiny import build_tiny_model

    corpus = [t.prompt + (t.reference or "") for t in builtin_tasks] * 3
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", corpus)


@pytest.fixture(scope="session")
def student_cfg():
    from engine.config import StudentConfig

    # fp32: the tiny model is cheap either way, and fp32 lets vLLM's greedy output be compared
    # token for token with transformers + PEFT; inline: each engine start (the session's, and
    # every driver process of the kill tests) takes half the time
    return StudentConfig(model="unused", dtype="float32", kv_cache_gb=1, max_model_len=2048,
                         cpu_threads="all", max_tokens=48, enforce_eager=True,
                         engine_process="inline")


@pytest.fixture(scope="session")
def student_pool(tiny_model, student_cfg):
    """The one vLLM engine (in a Ray actor) that the whole test session shares."""
    from engine.student import StudentPool

    pool = StudentPool(str(tiny_model), student_cfg)
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def sandbox_pool():
    from sandbox.config import SandboxConfig
    from sandbox.pool import SandboxPool

    with SandboxPool(SandboxConfig()) as pool:
        yield pool


@pytest.fixture(scope="session")
def task_file(tmp_path_factory) -> Path:
    """The first six built-in tasks as a task file: the end-to-end runs' training pool."""
    from engine.tasks import BUILTIN_PATH

    lines = BUILTIN_PATH.read_bytes().splitlines()[:6]
    path = tmp_path_factory.mktemp("tasks") / "tasks.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


# --------------------------------------------------------------------------------------- tiers
# A test is marked by what it starts: the fixtures it uses, or (for modules that start engines
# themselves) its module. What is left is the pure tier: `pytest -m pure` runs in seconds.
FIXTURE_MARKS = {"student_pool": "needs_vllm", "vllm_server": "needs_vllm",
                 "sandbox_pool": "needs_bwrap", "tiny_model": "needs_model"}
MODULE_MARKS = {  # modules whose tests start vLLM, the sandbox or a model themselves
    "test_cpu_sampler": ("needs_vllm",),
    "test_distill_e2e": ("needs_vllm", "needs_bwrap"),
    "test_kill_resume": ("needs_vllm", "needs_bwrap"),
    "test_online": ("needs_vllm", "needs_bwrap"),
    "test_resume_changes": ("needs_vllm", "needs_bwrap"),
    "test_multinode": ("needs_vllm", "needs_bwrap"),
    "test_synthesize": ("needs_bwrap",),
    "test_streaming": ("needs_vllm", "needs_bwrap"),
    "test_windows": ("needs_vllm", "needs_bwrap"),
    "test_lora_vllm": ("needs_vllm",),
    "test_sandbox": ("needs_bwrap",),
    "test_sandbox_forgery": ("needs_bwrap",),
    "test_sandbox_judge": ("needs_bwrap",),
    "test_train": ("needs_model",),
}
HEAVY = ("needs_vllm", "needs_bwrap", "needs_model", "slow")


def pytest_collection_modifyitems(config, items):
    for item in items:
        names = {FIXTURE_MARKS[f] for f in getattr(item, "fixturenames", ()) if f in FIXTURE_MARKS}
        names |= set(MODULE_MARKS.get(item.module.__name__.rsplit(".", 1)[-1], ()))
        for name in sorted(names):
            item.add_marker(name)
        if not any(item.get_closest_marker(m) for m in HEAVY):
            item.add_marker("pure")
