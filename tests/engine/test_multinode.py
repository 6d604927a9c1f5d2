"""A real multi-node run submitted as a Ray job: `ray.cluster_utils.Cluster` starts a head (with
the job server) and three more raylets on this machine, each offering one custom resource;
`ray job submit` runs `python -m engine.distill`, which joins the cluster and places the student
actor, the sandbox pool and the trainer on different nodes. The run's
`summary.json["placement"]` must name exactly those nodes, and the job must run every stage to a
trained adapter that the evaluation sampled with."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine.config import ClusterConfig, DataConfig, EvalConfig, RunConfig, TeacherConfig
from engine.records import EvalResult
from engine.run.store import RunStore
from engine.tasks import load_file
from engine.teacher.server import free_port
from tests.killing import cli_flags
from tests.tiny import SCRIPTED_TEACHER, ScriptedTeacher
from train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]

CLUSTER = textwrap.dedent("""
    import json, sys
    from ray.cluster_utils import Cluster
    ports = iter(int(p) for p in sys.argv[1:])
    # every agent on a port of its own: another Ray on this machine (the test session's) holds
    # the default 52365, and a head without its agent accepts no job
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1",
        "dashboard_port": next(ports),      # the dashboard serves job submission
        "dashboard_agent_listen_port": next(ports)})
    nodes = {name: cluster.add_node(num_cpus=1, resources={name: 1},
                                    dashboard_agent_listen_port=next(ports))
             for name in ("student", "sandbox", "trainer")}
    cluster.wait_for_nodes()
    print(json.dumps({"address": cluster.address, "head": cluster.head_node.node_id,
                      **{k: n.node_id for k, n in nodes.items()}}), flush=True)
    sys.stdin.read()          # until the test closes it
    cluster.shutdown()
""")


@pytest.fixture
def cluster(tmp_path):
    ports = [free_port() for _ in range(5)]
    env = {**os.environ, "RAY_AUTH_MODE": "token"}   # Ray 2.60's job server wants it
    proc = subprocess.Popen([sys.executable, "-c", CLUSTER, *map(str, ports)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=tmp_path, env=env)
    port = ports[0]
    try:
        line = proc.stdout.readline()
        assert line, "the Ray cluster did not start"
        yield {**json.loads(line), "jobs": f"http://127.0.0.1:{port}", "env": env}
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_a_submitted_job_runs_student_sandbox_and_trainer_on_their_own_nodes(cluster, tmp_path, task_file,
                                                           tiny_model, student_cfg):
    tasks = load_file(task_file)
    with ScriptedTeacher(tasks) as teacher:
        cfg = RunConfig(
            run_dir=str(tmp_path / "run"),
            # the default engine processes: the suite's other engines run inline
            student=dataclasses.replace(student_cfg, model=str(tiny_model), resources="student=1",
                                        engine_process="separate"),
            teacher=TeacherConfig(base_url=teacher.url, model="scripted", concurrency=4,
                                  stand=False, **SCRIPTED_TEACHER),
            data=DataConfig(train_tasks=str(task_file), train_limit=3, eval_tasks=str(task_file),
                            eval_limit=2),
            eval=EvalConfig(n=1, k=(1,), temperature=0.0, max_tokens=24),
            train=TrainConfig(epochs=1, lr=1e-3, batch_tokens=1024, save_every=100),
            cluster=ClusterConfig(sandbox_resources="sandbox=1", trainer_resources="trainer=1"))
        ray = str(Path(sys.executable).parent / "ray")
        cmd = [ray, "job", "submit", "--address", cluster["jobs"], "--working-dir", str(ROOT),
               "--", sys.executable, "-m", "engine.distill", *cli_flags(cfg)]
        deadline = time.monotonic() + 180   # the head's job agent starts after the raylets
        while True:
            done = subprocess.run(cmd, env=cluster["env"], capture_output=True, text=True,
                                  timeout=900)
            if "No available agent" not in done.stdout + done.stderr or \
                    time.monotonic() > deadline:
                break
            time.sleep(5)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout + done.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    where = summary["placement"]
    assert where["student"] == [cluster["student"]]
    assert where["sandbox"] == cluster["sandbox"]
    assert where["trainer"] == cluster["trainer"]
    assert where["driver"] not in (cluster["student"], cluster["sandbox"], cluster["trainer"])
    # and the run did its job across them
    assert summary["attempts"]["tasks"] == 3 and summary["sandbox"]["programs"] > 0
    assert (tmp_path / "run" / "train" / "adapter" / "adapter_config.json").exists()
    assert "pass@1" in summary["pass_after"]
    results = RunStore(tmp_path / "run", lock=False).read("eval-after-results", EvalResult)
    assert [r.n for r in results] == [1, 1]
    assert all(r.model_id and r.adapter_id for r in results)   # sampled with the adapter


def test_a_resource_no_node_offers_is_a_clear_error(tmp_path, task_file):
    """Without a cluster that offers it, Ray would wait forever: the run stops at once instead."""
    cfg = RunConfig(run_dir=str(tmp_path / "run"),
                    data=DataConfig(train_tasks=str(task_file), eval_tasks=str(task_file)),
                    cluster=ClusterConfig(sandbox_resources="sandbox=1"))
    done = subprocess.run([sys.executable, "-m", "engine.distill", *cli_flags(cfg)], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "cluster.sandbox_resources: no node of the Ray cluster offers sandbox=1" in done.stderr
