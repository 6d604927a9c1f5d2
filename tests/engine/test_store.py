"""The run store on its own: atomic jobs across a SIGKILL, fingerprinted reuse, the lock, atomic
views, content hashes; and the watchdog that leaves no process behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.run.store import RunInUse, RunStore, content_hash, fingerprint, read_view

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Rec:
    job: str
    i: int
    value: str


def run_py(code: str, env_extra: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    env.pop("PERSD_KILL_AT", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


WRITER = """
    import sys
    from dataclasses import dataclass
    from engine.run.store import RunStore

    @dataclass(frozen=True)
    class Rec:
        job: str
        i: int
        value: str

    store = RunStore(sys.argv[1] if len(sys.argv) > 1 else {path!r})
    store.commit("s", [(f"j{{k}}", "fp", [Rec(f"j{{k}}", i, "{tag}") for i in range(10)])
                       for k in range({jobs})])
    print("committed")
"""


def test_a_kill_mid_commit_leaves_none_of_the_batch_and_the_store_usable(tmp_path):
    ok = run_py(WRITER.format(path=str(tmp_path), tag="first", jobs=2))
    assert ok.returncode == 0 and "committed" in ok.stdout, ok.stderr
    killed = run_py(WRITER.format(path=str(tmp_path), tag="second", jobs=6),
                    {"PERSD_KILL_AT": "mid-commit:s#1"})
    assert killed.returncode == -signal.SIGKILL
    with RunStore(tmp_path) as store:
        assert store.count("s") == 2  # the killed batch of 6 jobs x 10 records: none of it
        for k in range(2):
            recs = store.lookup("s", f"j{k}", "fp")
            assert len(recs) == 10 and all(r["value"] == "first" for r in recs)
        assert store.lookup("s", "j5", "fp") is None
        store.commit("s", [("j5", "fp", [Rec("j5", 0, "third")])])
        assert store.count("s") == 3


def test_stage_reuses_by_fingerprint_and_keeps_old_ones(tmp_path):
    calls: list[list[str]] = []

    def compute(items):
        calls.append([it for it, _ in items])
        return [Rec(it, i, f"{it}/{setting}") for it, setting in items for i in range(3)]

    def stage(store, items):
        return store.stage("s", Rec, items, key=lambda it: it[0], fp=lambda it: fingerprint(it),
                           rkey=lambda r: r.job, compute=compute, batch=2)

    with RunStore(tmp_path) as store:
        first = stage(store, [("a", 1), ("b", 1), ("c", 1)])
        assert [r.job for r in first] == ["a"] * 3 + ["b"] * 3 + ["c"] * 3  # item order
        assert calls == [["a", "b"], ["c"]]
        assert stage(store, [("a", 1), ("b", 1), ("c", 1)]) == first and len(calls) == 2
        changed = stage(store, [("a", 1), ("b", 2)])   # b's input changed, c not asked for
        assert calls[-1] == ["b"] and {r.value for r in changed} == {"a/1", "b/2"}
        stage(store, [("b", 1)])                        # changed back: reused, not recomputed
        assert calls[-1] == ["b"] and len(calls) == 3
        assert store.stats["s"] == {"reused": 5, "computed": 4}
        assert [r.job for r in read_view(tmp_path, "s", Rec)] == ["b"] * 3  # the view: last call
        with pytest.raises(ValueError, match="appears twice"):
            stage(store, [("a", 1), ("a", 2)])


def test_a_streamed_stage_commits_each_group_as_it_arrives(tmp_path):
    """A compute that yields groups of finished jobs: a failure after the first group keeps
    that group's jobs, and the rerun computes only the others."""
    asked: list[list[str]] = []

    def compute(items, fail_after=None):
        asked.append([it for it, _ in items])
        for n, (it, setting) in enumerate(items):
            if n == fail_after:
                raise RuntimeError("the engine died")
            yield [Rec(it, i, f"{it}/{setting}") for i in range(2)]

    def stage(store, items, **kw):
        return store.stage("s", Rec, items, key=lambda it: it[0], fp=lambda it: fingerprint(it),
                           rkey=lambda r: r.job, compute=lambda c: compute(c, **kw), batch=10)

    items = [("a", 1), ("b", 1), ("c", 1)]
    with RunStore(tmp_path) as store:
        with pytest.raises(RuntimeError, match="engine died"):
            stage(store, items, fail_after=2)
        assert store.count("s") == 2                     # a and b, each committed on arrival
        out = stage(store, items)
        assert asked[-1] == ["c"] and [r.value for r in out] == ["a/1"] * 2 + ["b/1"] * 2 + [
            "c/1"] * 2


def test_one_driver_per_run_directory(tmp_path):
    with RunStore(tmp_path):
        with pytest.raises(RunInUse, match=f"pid {os.getpid()}"):
            RunStore(tmp_path)
    RunStore(tmp_path).close()  # free again once closed


def test_a_kill_mid_export_keeps_the_previous_view(tmp_path):
    code = f"""
        from dataclasses import dataclass
        from engine.run.store import RunStore

        @dataclass(frozen=True)
        class Rec:
            job: str
            i: int
            value: str

        store = RunStore({str(tmp_path)!r})
        store.export("view", [Rec("a", i, "{{tag}}") for i in range(1000)])
    """
    assert run_py(code.replace("{tag}", "old")).returncode == 0
    killed = run_py(code.replace("{tag}", "new"), {"PERSD_KILL_AT": "mid-export:view#1"})
    assert killed.returncode == -signal.SIGKILL
    recs = read_view(tmp_path, "view", Rec)
    assert len(recs) == 1000 and {r.value for r in recs} == {"old"}


def test_content_hash_follows_content(tmp_path):
    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_model.safetensors").write_bytes(b"weights-1")
    (d / "adapter_config.json").write_text("{}")
    h1 = content_hash(d)
    assert content_hash(d) == h1
    (d / "adapter_model.safetensors").write_bytes(b"weights-2")
    assert content_hash(d) != h1
    (d / "adapter_model.safetensors").write_bytes(b"weights-1")
    assert content_hash(d) == h1
    (d / "extra.txt").write_text("x")
    assert content_hash(d) != h1


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_the_watchdog_kills_what_a_sigkilled_driver_started(tmp_path):
    """Children in sessions of their own (as Ray's services and the teacher server are) escape
    a process-group kill; the watchdog still finds them by the driver's token."""
    pids = tmp_path / "pids"
    code = f"""
        import subprocess, time
        from engine.run.reaper import Reaper
        Reaper().start()
        a = subprocess.Popen(["sleep", "300"], start_new_session=True)
        b = subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300"], start_new_session=True)
        time.sleep(0.5)
        open({str(pids)!r}, "w").write(f"{{a.pid}} {{b.pid}}")
        time.sleep(300)
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    driver = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=ROOT)
    deadline = time.monotonic() + 30
    while not pids.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    started = [int(p) for p in pids.read_text().split()]
    grandchildren = [int(p) for p in subprocess.run(
        ["pgrep", "-P", str(started[1])], capture_output=True, text=True).stdout.split()]
    assert all(_alive(p) for p in started + grandchildren) and grandchildren
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in started + grandchildren) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in started + grandchildren)


def test_the_watchdog_spares_the_driver_and_what_it_did_not_start():
    from engine.run.reaper import Reaper

    before = subprocess.Popen(["sleep", "30"])
    with Reaper():
        after = subprocess.Popen(["sleep", "30"])
    assert after.wait(timeout=10) == -signal.SIGKILL  # started under the token: reaped at stop
    assert before.poll() is None
    before.kill()
    before.wait()
    assert "PERSD_RUN_TOKEN" not in os.environ


def test_fingerprints_are_stable_across_versions():
    """A run directory made by an earlier version resumes without recomputing: the fingerprints
    of a grade and of a sample request are pinned (values computed at d46f5dd, before records
    moved into sandbox/records.py). A change to what they hash must be deliberate: it makes
    every existing run recompute, so it changes these values in the same commit."""
    from engine import stages
    from engine.records import Task, TestCase
    from engine.student import Decoding, Sampling
    from sandbox.config import SandboxConfig

    t = Task("demo/1", "def add(a, b):\n    \"\"\"Add.\"\"\"\n", "add",
             (TestCase("assert add(2, 3) == 5", "add(2, 3)", "5"),),
             reference="def add(a, b):\n    return a + b\n")
    cfg = SandboxConfig(workers=1)
    prog = stages.program(cfg, "p", t, "def add(a, b):\n    return a - b\n")
    assert stages.program_fingerprint(cfg, prog) == "9ef1e299bf8702d4013035766c276328"
    [req] = stages.sample_requests(stages.task_jobs([t]), Sampling(1, 0.0, 0.95, 64, 0, "chat"))
    assert fingerprint("attempt", "model", None, {"dtype": "bfloat16"}, req) == \
        "e8dc5591144b813ceb1c7c88e20b8be6"
    # the decoding record hashes as the dict it replaced
    dec = Decoding("bfloat16", 2048, "chat")
    assert fingerprint("attempt", "model", None, dec, req) == fingerprint(
        "attempt", "model", None, {"prompt_format": "chat", "max_model_len": 2048,
                                   "dtype": "bfloat16"}, req) == "18147368064a8c7aa0a4b2e0d96f19a1"
