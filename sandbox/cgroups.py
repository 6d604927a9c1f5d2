"""A cgroup per worker: memory and pids limits on the worker and every program it forks.

A second layer behind the per-program rlimits (RLIMIT_AS bounds a program's address space, not
kernel memory, pipe buffers or the tmpfs pages its files take; RLIMIT_NPROC counts the whole
sandbox uid, not one worker). Where the host's cgroup tree is writable (we run as root), the pool
makes `sandbox-<pid>-<hex>` below the cgroup it runs in and one child per worker, `w<N>`, with

    memory   memory_bytes (v2 memory.max + memory.swap.max=0; v1 memory.limit_in_bytes and, if
             swap accounting is on, memory.memsw.limit_in_bytes)
    pids     max_pids (pids.max, both versions)

cgroup v2 is used when its tree offers both controllers; else cgroup v1 (one hierarchy per
controller, as on hosts with systemd's "hybrid" layout, where v2 is mounted without
controllers). Neither: `reason` says why, and the pool warns once and relies on rlimits. Groups
are removed when their worker is closed and when the pool closes.

Host side only (not copied into the jail).
"""
from __future__ import annotations

import errno
import os
import secrets
import signal
import time
from contextlib import suppress
from pathlib import Path

REMOVE_WAIT_S = 2.0   # how long a group's last processes may take to exit before we give up


class CgroupUnavailable(Exception):
    pass


class WorkerCgroup:
    """One worker's group: one directory (v2) or one per controller (v1)."""

    def __init__(self, dirs: list[Path]) -> None:
        self.dirs = dirs

    def add(self, pid: int) -> None:
        for path in self.dirs:
            (path / "cgroup.procs").write_text(f"{pid}\n")

    def remove(self) -> None:
        """Remove the group, killing whatever is still in it (only this worker's processes)."""
        deadline = time.monotonic() + REMOVE_WAIT_S
        for path in self.dirs:
            while path.exists():
                try:
                    path.rmdir()
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        break
                    for pid in _procs(path):
                        with suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    time.sleep(0.01)


class Cgroups:
    """The pool's cgroup tree, or the reason there is none (`active`, `reason`)."""

    def __init__(self, memory_bytes: int, max_pids: int) -> None:
        self.memory_bytes = memory_bytes
        self.max_pids = max_pids
        self.version = 0
        self.reason = ""
        self._parents: list[Path] = []   # the pool's own group(s), one per hierarchy used
        self._count = 0
        try:
            self._parents = self._make_pool_groups()
            self.new_worker_group().remove()   # prove limits can be set before relying on them
        except (OSError, CgroupUnavailable) as exc:
            self.reason = str(exc)
            self.close()

    @property
    def active(self) -> bool:
        return not self.reason

    def new_worker_group(self) -> WorkerCgroup:
        """An empty group with the limits set; raises OSError."""
        self._count += 1
        group = WorkerCgroup([parent / f"w{self._count}" for parent in self._parents])
        try:
            for path in group.dirs:
                path.mkdir()
                for name, value in self._limits(path):
                    (path / name).write_text(f"{value}\n")
        except OSError:
            group.remove()
            raise
        return group

    def close(self) -> None:
        for parent in self._parents:
            for child in [p for p in parent.iterdir() if p.is_dir()]:
                WorkerCgroup([child]).remove()
            WorkerCgroup([parent]).remove()
        self._parents = []

    # ---------------------------------------------------------------------------- internals

    def _limits(self, path: Path) -> list[tuple[str, int | str]]:
        if self.version == 2:
            limits: list[tuple[str, int | str]] = [("memory.max", self.memory_bytes),
                                                   ("pids.max", self.max_pids)]
            if (path / "memory.swap.max").exists():
                limits.append(("memory.swap.max", 0))
            return limits
        if (path / "memory.limit_in_bytes").exists():
            limits = [("memory.limit_in_bytes", self.memory_bytes)]
            if (path / "memory.memsw.limit_in_bytes").exists():
                limits.append(("memory.memsw.limit_in_bytes", self.memory_bytes))
            return limits
        return [("pids.max", self.max_pids)]

    def _make_pool_groups(self) -> list[Path]:
        mounts, own = _cgroup_mounts(), _own_cgroups()
        name = f"sandbox-{os.getpid()}-{secrets.token_hex(3)}"
        v2_mount, v2_path = mounts.get("cgroup2"), own.get("")
        problems = []
        if v2_mount is not None and v2_path is not None:
            base = Path(v2_mount + v2_path)
            try:
                return [self._make_v2_pool(base, name)]
            except (OSError, CgroupUnavailable) as exc:
                problems.append(f"cgroup v2 at {base}: {exc}")
        parents: list[Path] = []
        try:
            for controller in ("memory", "pids"):
                mount, path = mounts.get(controller), own.get(controller)
                if mount is None or path is None:
                    raise CgroupUnavailable(f"no {controller} hierarchy")
                pool = Path(mount + path) / name
                pool.mkdir()
                parents.append(pool)
        except (OSError, CgroupUnavailable) as exc:
            for pool in parents:
                pool.rmdir()
            problems.append(f"cgroup v1: {exc}")
            raise CgroupUnavailable("; ".join(problems)) from None
        self.version = 1
        return parents

    def _make_v2_pool(self, base: Path, name: str) -> Path:
        available = (base / "cgroup.controllers").read_text().split()
        if not {"memory", "pids"} <= set(available):
            raise CgroupUnavailable(f"offers {available or 'no controllers'}, not memory and pids")
        # Our group must hand both controllers down; that fails if it holds processes and is not
        # the root (cgroup v2's no-internal-processes rule).
        if not {"memory", "pids"} <= set((base / "cgroup.subtree_control").read_text().split()):
            (base / "cgroup.subtree_control").write_text("+memory +pids\n")
        pool = base / name
        pool.mkdir()
        try:
            (pool / "cgroup.subtree_control").write_text("+memory +pids\n")
        except OSError:
            pool.rmdir()
            raise
        self.version = 2
        return pool


def _cgroup_mounts() -> dict[str, str]:
    """'cgroup2' -> its mount point, and each v1 controller -> its hierarchy's mount point."""
    mounts: dict[str, str] = {}
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            before, _, after = line.partition(" - ")
            fstype, _source, options = (after.split() + ["", ""])[:3]
            mount_point = before.split()[4]
            if fstype == "cgroup2":
                mounts.setdefault("cgroup2", mount_point)
            elif fstype == "cgroup":
                for option in options.split(","):
                    if option in ("memory", "pids"):
                        mounts.setdefault(option, mount_point)
    return mounts


def _own_cgroups() -> dict[str, str]:
    """'' -> our v2 path, and each v1 controller -> our path in its hierarchy."""
    own: dict[str, str] = {}
    with open("/proc/self/cgroup") as fh:
        for line in fh:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            path = path.rstrip("/")
            for controller in controllers.split(",") if controllers else [""]:
                own[controller] = path
    return own


def _procs(path: Path) -> list[int]:
    try:
        return [int(pid) for pid in (path / "cgroup.procs").read_text().split()]
    except OSError:
        return []
