"""Starting one worker in its jail and talking to it: the bwrap command line, the pipes, Hello.

The jail (bwrap) sees: /usr read-only (plus /bin, /lib, /lib64, /sbin as on the host), the Python
prefix read-only, the worker's own modules and orjson read-only under /sandbox, a fresh /proc and
/dev, a size-capped tmpfs /tmp, and nothing else (root is a read-only tmpfs). It has new pid, net
(loopback only), ipc, uts and cgroup namespaces, no environment but PATH/HOME/LANG, and the
worker is pid 1 of its namespace (`--as-pid-1`, see worker.py for why).

Why no user namespace when we are root: a user namespace made by root maps the jail's uid onto
host uid 0, and the kernel exempts uid 0 from RLIMIT_NPROC, so thread bombs would not stop. So
as root bwrap keeps only CAP_SETUID/CAP_SETGID and the worker drops to the real, unprivileged
`uid`/`gid` itself (which also clears those capabilities). Not root: bwrap makes a user
namespace as usual (`--unshare-all --uid --gid`).

Isolation layers, each reported in `Mechanisms` (the first worker's Hello decides; later workers
must match): bwrap and namespaces (checked in `_check`), seccomp and Landlock (built and probed
by the worker, see confine.py; Landlock's read-only paths come from `_limits`), cgroups (one per
worker, cgroups.py). `enforce`: with `require_isolation`, a missing bwrap, namespaces or seccomp
is a RuntimeError naming it; every other missing layer is a loud warning, once per pool.

    python -c "from sandbox.launch import *; from sandbox.config import SandboxConfig as C; \\
        print(' '.join(Launcher(C()).argv))"
"""
from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import orjson

from common.errors import SandboxUnavailable
from sandbox.cgroups import Cgroups, WorkerCgroup
from sandbox.config import SandboxConfig
from sandbox.protocol import (
    HEADER,
    MAX_FRAME,
    Hello,
    ProtocolError,
    Reply,
    WorkerLimits,
    encode_frame,
    from_wire,
    to_wire,
)
from sandbox.records import Program, Status

log = logging.getLogger(__name__)

JAIL_MODULES = ("records.py", "protocol.py", "values.py", "harness.py", "verdict.py", "worker.py",
                "confine.py",
                "zygote.py", "channel.py", "parse.py", "plan.py", "judge.py", "remote.py")
LIB, DEPS = "/sandbox/lib", "/sandbox/deps"   # in the jail: our modules, and orjson
BOOT = "import sys; sys.path[:0] = [{lib!r}, {deps!r}]; from sandbox.worker import main; main()"
HELLO_TIMEOUT_S = 30.0
NO_CAPS = "0000000000000000"
SYSTEM_DIRS = ("/usr", "/bin", "/lib", "/lib64", "/sbin")
PIDS_HEADROOM = 16   # pids.max of a worker's cgroup = max_processes + this (the worker itself)
REQUIRED = ("bwrap", "namespaces", "seccomp")   # missing one of these + require_isolation: error
WITHOUT = {   # what a missing mechanism leaves open, for the warning
    "namespaces": "programs share the host's pids and network",
    "seccomp": "programs may fork, exec, open sockets, ptrace and unshare",
    "landlock": "programs may write wherever the sandbox uid can (in the jail: its /tmp) and "
                "open TCP connections where a network is reachable",
    "cgroups": "a worker's memory and processes are bounded by per-program rlimits only",
}


@dataclass(frozen=True)
class Mechanisms:
    """Which isolation layers this pool's programs run under (`pool.mechanisms`)."""

    bwrap: bool        # the worker runs in a bubblewrap jail: own root, read-only system dirs
    namespaces: bool   # own pid/net/ipc/uts namespaces, checked from inside (pid 1, only `lo`)
    seccomp: bool      # confine.py's syscall filter, probed by the worker
    landlock: bool     # confine.py's filesystem (and, ABI >= 4, TCP) rules, probed by the worker
    cgroups: bool      # each worker in its own cgroup with memory and pids limits (cgroups.py)
    landlock_abi: int = 0                            # the kernel's Landlock ABI; 0 = none
    why_missing: tuple[tuple[str, str], ...] = ()    # (mechanism, reason) for each one off

    def as_dict(self) -> dict[str, bool]:
        return {name: getattr(self, name) for name in (*REQUIRED, "landlock", "cgroups")}


def enforce(mechanisms: Mechanisms, require_isolation: bool) -> None:
    """Refuse a pool without a required mechanism; otherwise warn, loudly, about each one off."""
    missing = [(name, why) for name, why in mechanisms.why_missing if name in REQUIRED]
    if require_isolation and missing:
        raise SandboxUnavailable(
            "sandbox isolation unavailable: " + "; ".join(f"{n}: {why}" for n, why in missing)
            + ". Set sandbox.require_isolation=false to run programs without "
            + ", ".join(n for n, _ in missing))
    for name, why in mechanisms.why_missing:
        if name != "bwrap":   # that one has its own warning (Launcher.start)
            log.warning("SANDBOX: %s IS NOT ACTIVE (%s): %s", name.upper(), why, WITHOUT[name])


class WorkerFailure(Exception):
    """The worker died, wedged or broke the protocol; the program it held is a SANDBOX_FAULT."""


class Launcher:
    """Knows how to start a worker: jailed when bwrap works, else (only if allowed) unjailed."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.python = os.path.realpath(sys.executable)
        self.prefix = os.path.realpath(sys.base_prefix)
        self._tmp = tempfile.TemporaryDirectory(prefix="sandbox-lib-")
        self.lib, self.deps = _lay_out_modules(Path(self._tmp.name))
        self.jailed = True
        self.argv = self._jail_argv()
        self.mechanisms: Mechanisms | None = None   # set by the first worker that starts
        self._no_jail = ""                          # why bwrap did not work, when it did not
        memory_mb = config.memory_mb + config.tmp_size_mb + config.cgroup_headroom_mb
        self.cgroups = Cgroups(memory_mb << 20, config.max_processes + PIDS_HEADROOM)

    def start(self) -> WorkerProcess:
        """Start one worker and check its Hello; the first failure decides jail vs. no jail."""
        if self.jailed:
            bwrap = shutil.which(self.config.bwrap)
            try:
                if bwrap is None:
                    raise WorkerFailure(f"bubblewrap not found: no {self.config.bwrap!r} on PATH")
                return self._start(self.argv)
            except WorkerFailure as exc:
                if self.mechanisms is not None:   # the jail worked before: this worker failed
                    raise
                if self.config.require_isolation:
                    raise RuntimeError(
                        f"sandbox isolation unavailable: bwrap: {exc}. Install bubblewrap with "
                        "user/pid/net namespaces enabled, or set sandbox.require_isolation=false "
                        "to run programs WITHOUT a jail") from None
                message = (f"SANDBOX NOT ISOLATED: {exc}. Programs run unjailed: forked with "
                           "rlimits, seccomp and Landlock where the kernel has them, in a private "
                           "scratch directory; they share the host's pids and network "
                           "(require_isolation=false).")
                log.warning(message)
                warnings.warn(message, RuntimeWarning, stacklevel=2)
                self.jailed = False
                self._no_jail = str(exc)
        return self._start(self._direct_argv())

    def close(self) -> None:
        self.cgroups.close()
        self._tmp.cleanup()

    def _start(self, argv: list[str]) -> WorkerProcess:
        worker = WorkerProcess(argv, env=None if self.jailed else _clean_env())
        try:
            worker.send(to_wire(self._limits()))
            hello = from_wire(Hello, worker.receive(time.monotonic() + HELLO_TIMEOUT_S))
            if self.jailed:
                self._check(hello)
            found = self._mechanisms(hello)
            if self.mechanisms is None:
                enforce(found, self.config.require_isolation)
                self.mechanisms = found
            elif found != self.mechanisms:
                raise WorkerFailure(f"worker reports isolation {found.as_dict()}, the pool "
                                    f"started with {self.mechanisms.as_dict()}")
            if self.cgroups.active:
                worker.cgroup = self.cgroups.new_worker_group()
                pid = worker.worker_pid(self.jailed)
                for process in (pid, *_children(pid)):   # the worker and its zygote (idle:
                    worker.cgroup.add(process)           # it forks only when asked)
        except (WorkerFailure, ProtocolError, OSError) as exc:
            worker.kill()   # first, so its stderr is complete
            raise WorkerFailure(f"{exc}{worker.stderr_tail()}") from None
        except BaseException:
            worker.kill()
            raise
        return worker

    def _limits(self) -> WorkerLimits:
        cfg = self.config
        # /proc: programs may list processes and read their own entries; other processes'
        # environ and memory stay closed (ptrace access rules, which Landlock confines further).
        # Not /etc (absent in the jail; unjailed it would expose the host's configuration).
        ours = "/sandbox" if self.jailed else str(self.lib.parent)
        return WorkerLimits(
            memory_mb=cfg.memory_mb, cpu_s=cfg.cpu_s, file_size_mb=cfg.file_size_mb,
            max_open_files=cfg.max_open_files, max_processes=cfg.max_processes,
            max_output_kb=cfg.max_output_kb, uid=cfg.uid, gid=cfg.gid,
            read_paths=(*SYSTEM_DIRS, self.prefix, ours, "/proc"))

    def _mechanisms(self, hello: Hello) -> Mechanisms:
        why = []
        if not self.jailed:
            why += [("bwrap", self._no_jail), ("namespaces", "no bwrap jail")]
        if hello.seccomp_error:
            why.append(("seccomp", hello.seccomp_error))
        if hello.landlock_error:
            why.append(("landlock", hello.landlock_error))
        if not self.cgroups.active:
            why.append(("cgroups", self.cgroups.reason))
        off = {name for name, _ in why}
        return Mechanisms(
            bwrap=self.jailed, namespaces=self.jailed, seccomp="seccomp" not in off,
            landlock="landlock" not in off, cgroups="cgroups" not in off,
            landlock_abi=hello.landlock_abi, why_missing=tuple(why))

    def _check(self, hello: Hello) -> None:
        """Refuse a jail that is not what we asked for, naming the part that is missing."""
        problems = []
        if hello.pid != 1:
            problems.append(f"worker is pid {hello.pid}, not 1 (no pid namespace)")
        if (hello.uid, hello.gid) != (self.config.uid, self.config.gid):
            problems.append(f"worker runs as {hello.uid}:{hello.gid}, "
                            f"not {self.config.uid}:{self.config.gid}")
        if hello.cap_eff != NO_CAPS:
            problems.append(f"worker keeps capabilities {hello.cap_eff}")
        if not hello.no_new_privs:
            problems.append("no_new_privs is not set")
        if hello.net_interfaces != ("lo",):
            problems.append(f"network interfaces {hello.net_interfaces} (no net namespace)")
        if problems:
            raise WorkerFailure("; ".join(problems))

    def _jail_argv(self) -> list[str]:
        cfg = self.config
        argv = [cfg.bwrap, "--ro-bind", "/usr", "/usr"]
        for name in ("bin", "lib", "lib64", "sbin"):   # merged-/usr symlinks, or real dirs
            path = f"/{name}"
            if os.path.islink(path):
                argv += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                argv += ["--ro-bind", path, path]
        if not self.prefix.startswith("/usr/"):
            # bwrap would copy the host's modes onto the parents it creates (/root is 0700),
            # so make them traversable for the unprivileged uid first.
            for parent in reversed(Path(self.prefix).parents[:-1]):
                argv += ["--perms", "0755", "--dir", str(parent)]
            argv += ["--ro-bind", self.prefix, self.prefix]
        argv += [
            "--ro-bind", str(self.lib), LIB,
            "--ro-bind", str(self.deps), DEPS,
            "--proc", "/proc",
            "--dev", "/dev",
            "--size", str(cfg.tmp_size_mb << 20), "--perms", "1777", "--tmpfs", "/tmp",
            "--remount-ro", "/",
            "--die-with-parent", "--new-session", "--as-pid-1",
            "--hostname", "sandbox",
            "--clearenv", "--chdir", "/tmp",
        ]
        for key, value in _clean_env().items():
            argv += ["--setenv", key, value]
        if os.geteuid() == 0:
            argv += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
                     "--unshare-cgroup-try",
                     "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        else:
            argv += ["--unshare-all", "--uid", str(cfg.uid), "--gid", str(cfg.gid),
                     "--cap-drop", "ALL"]
        return argv + ["--", self.python, "-I", "-B", "-c", BOOT.format(lib=LIB, deps=DEPS)]

    def _direct_argv(self) -> list[str]:
        return [self.python, "-I", "-B", "-c", BOOT.format(lib=str(self.lib), deps=str(self.deps))]


def _clean_env() -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1"}


def _lay_out_modules(root: Path) -> tuple[Path, Path]:
    """Copy the jail-side modules into `root/lib/sandbox` (with an empty __init__, so the host
    package's __init__ never runs in the jail) and expose orjson under `root/deps`."""
    package = root / "lib" / "sandbox"
    package.mkdir(parents=True)
    here = Path(__file__).resolve().parent
    for name in JAIL_MODULES:
        shutil.copyfile(here / name, package / name)
    (package / "__init__.py").write_text('"""Jail-side copy of the sandbox modules."""\n')
    deps = root / "deps"
    deps.mkdir()
    shutil.copytree(Path(orjson.__file__).resolve().parent, deps / "orjson")
    for path in (root, *root.rglob("*")):   # readable by the unprivileged uid, nothing more
        path.chmod(0o755 if path.is_dir() else 0o644)
    return package.parent, deps


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(child) for child in fh.read().split()]
    except OSError:
        return []


class WorkerProcess:
    """One running worker: frames out on its stdin, frames in from its stdout, with deadlines."""

    def __init__(self, argv: list[str], env: dict[str, str] | None) -> None:
        self._stderr = tempfile.TemporaryFile()   # read only to explain a failure
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, env=env, start_new_session=True)
        self._out = self.proc.stdout.fileno()
        self._buf = bytearray()
        self.cgroup: WorkerCgroup | None = None   # removed when the worker is killed

    def worker_pid(self, jailed: bool) -> int:
        """Host pid of the worker's python: bwrap's child when jailed, else our child."""
        if not jailed:
            return self.proc.pid
        children = _children(self.proc.pid)
        if not children:
            raise WorkerFailure("bwrap has no child process")
        return children[0]

    def call(self, request: Program, timeout_s: float) -> Reply:
        """Grade one program; raises WorkerFailure if no valid reply comes within timeout_s."""
        try:
            self.send(to_wire(request))
            reply = from_wire(Reply, self.receive(time.monotonic() + timeout_s))
            Status(reply.status)
        except (ProtocolError, ValueError) as exc:
            raise WorkerFailure(f"bad reply: {exc}") from None
        if reply.program_id != request.program_id or len(reply.test_passed) != len(request.tests) \
                or len(reply.outputs) != (len(request.tests) if request.outputs else 0):
            raise WorkerFailure("reply does not match the request")
        return reply

    def send(self, obj: object) -> None:
        try:
            self.proc.stdin.write(encode_frame(obj))
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise WorkerFailure(f"worker is gone ({exc})") from None

    def receive(self, deadline: float) -> object:
        header = self._read_exact(HEADER.size, deadline)
        (length,) = HEADER.unpack(header)
        if length > MAX_FRAME:
            raise ProtocolError(f"reply frame of {length} bytes")
        try:
            return orjson.loads(self._read_exact(length, deadline))
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(f"reply is not JSON: {exc}") from None

    def _read_exact(self, size: int, deadline: float) -> bytes:
        while len(self._buf) < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerFailure("worker did not reply in time")
            ready, _, _ = select.select([self._out], [], [], remaining)
            if ready:
                chunk = os.read(self._out, 1 << 16)
                if not chunk:
                    code = self.proc.poll()
                    raise WorkerFailure(f"worker exited (code {code})")
                self._buf += chunk
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    def stderr_tail(self, chars: int = 2000) -> str:
        if self._stderr.closed:
            return ""
        self._stderr.seek(0)
        text = self._stderr.read().decode("utf-8", "replace").strip()[-chars:]
        return f"\n--- worker stderr ---\n{text}" if text else ""

    def close(self, grace_s: float = 2.0) -> None:
        """Ask the worker to stop (EOF on stdin), then kill it if it does not."""
        try:
            self.proc.stdin.close()
            self.proc.wait(grace_s)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()
        self._stderr.close()

    def kill(self) -> None:
        """Kill the worker and bwrap; the worker is its pid namespace's init, so the whole jail
        goes with it (a stopped or wedged worker included)."""
        if self.proc.poll() is None:
            for pid in _children(self.proc.pid):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        if self.cgroup is not None:
            self.cgroup.remove()
            self.cgroup = None
