"""A cluster job through Ray job submission: a head on loopback ports, `ray job submit` of a
small distillation whose student actor runs on the cluster."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from engine.config import DataConfig, EvalConfig, RunConfig, TeacherConfig
from engine.records import EvalResult
from engine.store import RunStore
from engine.tasks import load_file
from engine.teacher.server import free_port
from tests.killing import cli_flags
from tests.tiny import SCRIPTED_TEACHER, ScriptedTeacher
from train.config import TrainConfig

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


def test_ray_job_submit_runs_a_distillation(ray_head, tiny_model, student_cfg, tmp_path):
    """`ray job submit` of `python -m engine.distill`: the student actor runs on the cluster, the
    teacher is an HTTP endpoint, and the job runs every stage to a trained, evaluated adapter."""
    ray, address, env = ray_head
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_bytes(b"\n".join((ROOT / "engine/tasks/data/tasks.jsonl").read_bytes().splitlines()[:3]))
    with ScriptedTeacher(load_file(tasks)) as teacher:
        cfg = RunConfig(
            run_dir=str(tmp_path / "run"),
            student=dataclasses.replace(student_cfg, model=str(tiny_model)),
            teacher=TeacherConfig(base_url=teacher.url, model="scripted", concurrency=4,
                                  stand=False, **SCRIPTED_TEACHER),
            data=DataConfig(train_tasks=str(tasks), eval_tasks=str(tasks), eval_limit=2),
            eval=EvalConfig(n=1, k=(1,), temperature=0.0, max_tokens=16),
            train=TrainConfig(epochs=1, lr=1e-3, batch_tokens=1024, save_every=100))
        cmd = [ray, "job", "submit", "--address", address, "--working-dir", str(ROOT), "--",
               sys.executable, "-m", "engine.distill", *cli_flags(cfg)]
        for attempt in range(3):  # the job agent can take a few seconds to accept jobs
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            if "No available agent" not in done.stdout + done.stderr:
                break
            time.sleep(5)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout + done.stderr
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["attempts"]["tasks"] == 3 and "pass@1" in summary["pass_after"]
    assert summary["placement"]["student"] and all(summary["placement"]["student"])  # on Ray
    results = RunStore(run, lock=False).read("eval-after-results", EvalResult)
    assert [r.n for r in results] == [1, 1]
    assert all(r.model_id and r.adapter_id for r in results)   # sampled with the adapter
