"""SandboxConfig: the one record that says how programs are jailed and limited.

It is the `sandbox` section of the run's config tree (engine/config.py builds `--sandbox.<field>`
flags from the `help` next to each field below).

    from sandbox.config import SandboxConfig
    from sandbox.pool import SandboxPool
    with SandboxPool(SandboxConfig(workers=2, memory_mb=512)) as pool:
        grades = pool.grade(programs)
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


def _cpu_count() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True)
class SandboxConfig:
    """Limits and isolation of the sandbox pool; every field is checked in __post_init__."""

    workers: int = field(default_factory=_cpu_count, metadata={
        "help": "warm worker processes, i.e. programs graded at once (default: CPU count)"})
    memory_mb: int = _f(1024, "address-space limit (RLIMIT_AS) per program, MiB")
    cpu_s: int = _f(30, "CPU-time limit (RLIMIT_CPU) per program, s; a backstop to the wall clock")
    file_size_mb: int = _f(64, "largest file a program may write (RLIMIT_FSIZE), MiB")
    tmp_size_mb: int = _f(256, "size cap of each worker's private /tmp (a bwrap tmpfs), MiB")
    cgroup_headroom_mb: int = _f(256, "memory limit of each worker's cgroup, where cgroups are "
                                 "writable, beyond memory_mb + tmp_size_mb (room for the worker "
                                 "itself and kernel memory), MiB")
    max_output_kb: int = _f(64, "stdout+stderr kept per program, KiB; the rest is read and dropped")
    max_open_files: int = _f(64, "open file descriptors per program (RLIMIT_NOFILE)")
    max_processes: int = _f(64, "processes and threads of the sandbox uid a program may reach "
                            "(RLIMIT_NPROC; seccomp already denies new processes); each worker's "
                            "cgroup, where writable, gets pids.max = this + 16")
    timeout_s: float = _f(10.0, "wall-clock limit per program, s, for Programs built by the "
                          "engine (the pool enforces each Program's own timeout_s)")
    reply_margin_s: float = _f(10.0, "extra wait for a worker's reply past a program's timeout "
                               "before the worker counts as wedged, s")
    uid: int = _f(65534, "unprivileged uid programs run as (65534 = nobody)")
    gid: int = _f(65534, "unprivileged gid programs run as (65534 = nogroup)")
    bwrap: str = _f("bwrap", "bubblewrap executable: a name on PATH or a path")
    require_isolation: bool = _f(True, "refuse to run without the bwrap jail, its namespaces or "
                                 "the seccomp filter; false: warn loudly and run programs with "
                                 "whatever works (Landlock and cgroups only ever warn)")

    def __post_init__(self) -> None:
        positive = ("workers", "memory_mb", "cpu_s", "file_size_mb", "tmp_size_mb",
                    "cgroup_headroom_mb", "max_output_kb", "max_open_files", "max_processes",
                    "uid", "gid")
        for name in positive:
            value = getattr(self, name)
            if type(value) is not int or value <= 0:
                raise ValueError(f"sandbox.{name}: must be a positive int, got {value!r}")
        if self.max_open_files < 8:
            raise ValueError("sandbox.max_open_files: must be at least 8 (stdio + harness)")
        for name in ("timeout_s", "reply_margin_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"sandbox.{name}: must be a number > 0, got {value!r}")
