"""Starting one worker in its jail and talking to it: the bwrap command line, the pipes, Hello.

The jail (bwrap) sees: /usr read-only (plus /bin, /lib, /lib64, /sbin as on the host), the Python
prefix read-only, the worker's own modules and orjson read-only under /sandbox, a fresh /proc and
/dev, a size-capped tmpfs /tmp, and nothing else (root is a read-only tmpfs). It has new pid, net
(loopback only), ipc, uts and cgroup namespaces, no environment but PATH/HOME/LANG, and the
worker is pid 1 of its namespace (`--as-pid-1`, see worker.py for why).

Why no user namespace when we are root: a user namespace made by root maps the jail's uid onto
host uid 0, and the kernel exempts uid 0 from RLIMIT_NPROC, so fork bombs would not stop. So as
root bwrap keeps only CAP_SETUID/CAP_SETGID and the worker drops to the real, unprivileged
`uid`/`gid` itself (which also clears those capabilities). Not root: bwrap makes a user
namespace as usual (`--unshare-all --uid --gid`).

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
from pathlib import Path

import orjson

from sandbox.config import SandboxConfig
from sandbox.protocol import (HEADER, MAX_FRAME, Hello, Outcome, ProtocolError, Reply, Request,
                              WorkerLimits, encode_frame, from_wire, to_wire)

log = logging.getLogger(__name__)

JAIL_MODULES = ("protocol.py", "values.py", "harness.py", "verdict.py", "worker.py")
LIB, DEPS = "/sandbox/lib", "/sandbox/deps"   # in the jail: our modules, and orjson
BOOT = "import sys; sys.path[:0] = [{lib!r}, {deps!r}]; from sandbox.worker import main; main()"
HELLO_TIMEOUT_S = 30.0
NO_CAPS = "0000000000000000"


class WorkerFailure(Exception):
    """The worker died, wedged or broke the protocol; the program it held is a SANDBOX_FAULT."""


class Launcher:
    """Knows how to start a worker: jailed when bwrap works, else (only if allowed) unjailed."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.limits = WorkerLimits(
            memory_mb=config.memory_mb, cpu_s=config.cpu_s, file_size_mb=config.file_size_mb,
            max_open_files=config.max_open_files, max_processes=config.max_processes,
            max_output_kb=config.max_output_kb, uid=config.uid, gid=config.gid)
        self.python = os.path.realpath(sys.executable)
        self.prefix = os.path.realpath(sys.base_prefix)
        self._tmp = tempfile.TemporaryDirectory(prefix="sandbox-lib-")
        self.lib, self.deps = _lay_out_modules(Path(self._tmp.name))
        self.jailed = True
        self.argv = self._jail_argv()

    def start(self) -> WorkerProcess:
        """Start one worker and check its Hello; the first failure decides jail vs. no jail."""
        if not self.jailed:
            return self._start(self._direct_argv())
        bwrap = shutil.which(self.config.bwrap)
        try:
            if bwrap is None:
                raise WorkerFailure(f"bubblewrap not found: no {self.config.bwrap!r} on PATH")
            return self._start(self.argv)
        except WorkerFailure as exc:
            if self.config.require_isolation:
                raise RuntimeError(
                    f"sandbox isolation unavailable: {exc}. Install bubblewrap with user/pid/net "
                    "namespaces enabled, or set sandbox.require_isolation=false to run "
                    "programs WITHOUT a jail") from None
            message = (f"SANDBOX NOT ISOLATED: {exc}. Programs run unjailed: forked with rlimits "
                       "and a private scratch directory only; they can see the host filesystem "
                       "and network and can signal each other (require_isolation=false).")
            log.warning(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            self.jailed = False
            return self._start(self._direct_argv())

    def close(self) -> None:
        self._tmp.cleanup()

    def _start(self, argv: list[str]) -> WorkerProcess:
        worker = WorkerProcess(argv, env=None if self.jailed else _clean_env())
        try:
            worker.send(to_wire(self.limits))
            hello = from_wire(Hello, worker.receive(time.monotonic() + HELLO_TIMEOUT_S))
            if self.jailed:
                self._check(hello)
        except (WorkerFailure, ProtocolError) as exc:
            worker.kill()   # first, so its stderr is complete
            raise WorkerFailure(f"{exc}{worker.stderr_tail()}") from None
        return worker

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

    def call(self, request: Request, timeout_s: float) -> Reply:
        """Grade one program; raises WorkerFailure if no valid reply comes within timeout_s."""
        try:
            self.send(to_wire(request))
            reply = from_wire(Reply, self.receive(time.monotonic() + timeout_s))
            Outcome(reply.status)
        except (ProtocolError, ValueError) as exc:
            raise WorkerFailure(f"bad reply: {exc}") from None
        if reply.program_id != request.program_id or len(reply.test_passed) != len(request.tests):
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
