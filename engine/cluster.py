"""The run's pools on a Ray cluster: which node runs the student, the sandbox and the trainer.

    python -m engine.distill --student.resources student=1 \\
        --cluster.sandbox_resources sandbox=1 --cluster.trainer_resources trainer=1

By default everything but the student runs on the driver's node: the sandbox pool in the driver
and the trainer as its subprocess. Given resources, the sandbox pool becomes a Ray actor (its
bubblewrap workers start on that actor's node) and the trainer a Ray task; each asks for the
custom resources named, so the cluster places them on the nodes that offer them (`ray start
--resources '{"sandbox": 1}'`). Where each ran is in `summary.json["placement"]` (Ray node ids).

How data reaches the other nodes: by path. The run directory, the model directories and the
adapters are read and written by path on every node, so they must be on storage every node
mounts at the same path (NFS, EFS, a cluster's shared disk); `PERSD_CACHE` (the models) and
`--run_dir` should point there. Records (programs, grades, samples) travel in Ray's object store.
"""
from __future__ import annotations

import os
import subprocess
from typing import Sequence

from common.config import pairs
from common.errors import ConfigError


def parse_resources(text: str, where: str) -> dict[str, float]:
    """`student=1,fast_disk=0.5` -> {"student": 1.0, "fast_disk": 0.5}."""
    form = "NAME=AMOUNT with AMOUNT > 0"
    out = {}
    for name, amount in pairs(text, where, form):
        try:
            value = float(amount)
        except ValueError:
            value = -1.0
        if value <= 0:
            raise ConfigError(f"{where}: '{name}={amount}' is not {form}")
        out[name] = value
    return out


def node_id() -> str:
    """The Ray node this process runs on ("" outside Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def check_offered(resources: dict[str, float], where: str) -> None:
    """Fail fast when no node offers a resource (Ray would wait for one forever)."""
    import ray

    offered = ray.cluster_resources()
    missing = [k for k, v in resources.items() if offered.get(k, 0) < v]
    if missing:
        raise ConfigError(f"{where}: no node of the Ray cluster offers {missing[0]}="
                          f"{resources[missing[0]]:g} (is RAY_ADDRESS set, and was the node "
                          f"started with --resources?); the cluster has "
                          f"{sorted(k for k in offered if not k.startswith('node:'))}")


# ------------------------------------------------------------------------------- the sandbox

class SandboxActor:
    """A SandboxPool inside a Ray actor: its workers start on the actor's node."""

    def __init__(self, config) -> None:
        from sandbox.pool import SandboxPool

        self.pool = SandboxPool(config)

    def grade(self, programs: list) -> list:
        return self.pool.grade(programs)

    def stats(self):
        return self.pool.stats

    def node(self) -> str:
        return node_id()

    def close(self) -> None:
        self.pool.close()


class RemoteSandbox:
    """The driver's handle on a SandboxActor, with the SandboxPool surface the stages use
    (`config`, `grade`, `stats`, `close`)."""

    def __init__(self, config, resources: dict[str, float], cpus: float) -> None:
        import ray

        from engine.student.pool import init_ray

        init_ray()
        check_offered(resources, "cluster.sandbox_resources")
        self.config = config
        self.actor = ray.remote(SandboxActor).options(num_cpus=cpus, resources=resources
                                                      ).remote(config)
        self.node = ray.get(self.actor.node.remote())

    def grade(self, programs: Sequence) -> list:
        import ray

        return ray.get(self.actor.grade.remote(list(programs))) if programs else []

    @property
    def stats(self):
        import ray

        return ray.get(self.actor.stats.remote())

    def close(self) -> None:
        import ray

        if self.actor is not None:
            try:
                ray.get(self.actor.close.remote(), timeout=60)
            finally:
                ray.kill(self.actor)
                self.actor = None

    def __enter__(self) -> RemoteSandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def sandbox_service(sandbox_cfg, cluster_cfg):
    """The run's sandbox: a pool in the driver, or a Ray actor where cluster resources say."""
    resources = parse_resources(cluster_cfg.sandbox_resources, "cluster.sandbox_resources")
    if not resources:
        from sandbox.pool import SandboxPool

        return SandboxPool(sandbox_cfg)
    return RemoteSandbox(sandbox_cfg, resources, cluster_cfg.sandbox_cpus)


# ------------------------------------------------------------------------------- the trainer

def _die_with_parent() -> None:
    """In the trainer's child: SIGKILL it when the process that started it dies."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG


def run_process(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run the trainer command where this function runs; (exit code, node id)."""
    proc = subprocess.Popen(args, env={**os.environ, **env}, preexec_fn=_die_with_parent)
    return proc.wait(), node_id()


def remote_process(args: list[str], env: dict[str, str], cluster_cfg):
    """Start the trainer command as a Ray task on a node offering the trainer resources; an
    ObjectRef of (exit code, node id)."""
    import ray

    from engine.student.pool import init_ray

    init_ray()
    resources = parse_resources(cluster_cfg.trainer_resources, "cluster.trainer_resources")
    check_offered(resources, "cluster.trainer_resources")
    task = ray.remote(run_process).options(num_cpus=cluster_cfg.trainer_cpus,
                                           num_gpus=cluster_cfg.trainer_gpus,
                                           resources=resources, max_retries=0)
    return task.remote(args, env)
