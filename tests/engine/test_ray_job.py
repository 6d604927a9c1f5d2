"""A cluster job through Ray job submission: a head on loopback ports, `ray job submit` of an
evaluation whose student actor runs on the cluster."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from engine.records import EvalResult
from engine.store import RunStore
from engine.teacher.server import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ray_head():
    ray = shutil.which("ray", path=str(Path(sys.executable).parent))
    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray puts sockets under it
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    ports = [free_port() for _ in range(8)]
    start = [ray, "start", "--head", "--temp-dir", temp, "--port", str(ports[0]),
             "--dashboard-port", str(ports[1]), "--dashboard-agent-listen-port", str(ports[2]),
             "--dashboard-agent-grpc-port", str(ports[3]), "--runtime-env-agent-port",
             str(ports[4]), "--metrics-export-port", str(ports[5]), "--node-manager-port",
             str(ports[6]), "--object-manager-port", str(ports[7]), "--num-cpus", "2",
             "--include-dashboard", "true", "--disable-usage-stats"]
    try:  # cleanup also when the start half-failed
        started = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        yield ray, f"http://127.0.0.1:{ports[1]}", env
    finally:
        # `ray stop` would also stop the test session's own Ray: end only this head's processes
        subprocess.run(["pkill", "-9", "-f", temp], check=False)
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_job_submit_runs_an_evaluation(ray_head, tiny_model, tmp_path):
    ray, address, env = ray_head
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_bytes(b"\n".join((ROOT / "engine/tasks/data/tasks.jsonl").read_bytes().splitlines()[:2]))
    out = tmp_path / "eval"
    cmd = [ray, "job", "submit", "--address", address, "--working-dir", str(ROOT), "--",
           sys.executable, "-m", "engine.evaluate", "--model", str(tiny_model), "--tasks", str(tasks),
           "--eval.max_tokens", "16", "--out", str(out)]
    for attempt in range(3):  # the job agent can take a few seconds to accept jobs
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
        if "No available agent" not in done.stdout + done.stderr:
            break
        time.sleep(5)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout + done.stderr
    [view] = out.glob("eval-*-results.jsonl")  # named by what was evaluated
    results = RunStore(out, lock=False).read(view.name.removesuffix(".jsonl"), EvalResult)
    assert [r.n for r in results] == [1, 1]
    assert all(r.model_id and r.adapter_id is None for r in results)
