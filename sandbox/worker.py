"""The worker: started once inside the jail, then grades programs one at a time until stdin closes.

launch.py starts it under bwrap (as pid 1 of its own pid namespace) as

    python3.11 -I -B -c "import sys; sys.path[:0] = ['/sandbox/lib', '/sandbox/deps']; \\
        from sandbox.worker import main; main()"

and `python -c "from sandbox.launch import Launcher; ..."` prints the whole bwrap command line.

It reads a WorkerLimits frame, pre-imports common modules (so a fork is all a program costs),
builds the seccomp filter and Landlock ruleset (confine.py) while still root, drops to the
unprivileged uid/gid, makes the programs' working directory (`/tmp/program`, kept for the
worker's life and emptied after each program), probes both mechanisms in throwaway children,
says Hello (which reports what works), then loops: read a Request frame, fork a child that
confines itself and runs it (harness.py), watch the child against the wall clock, kill and reap
everything the child left behind, wipe the scratch directory, decide the verdict (verdict.py),
write a Reply frame.

Why pid 1: the kernel drops signals sent to a namespace's init from inside the namespace unless
init handles them, so a program cannot `os.kill(os.getppid(), 9)` its worker, `kill(-1, 9)` spares
it, and `kill(-1, SIGKILL)` from the worker removes every process a program started, daemons
that called setsid included (with seccomp, a program cannot start processes at all; this is the
second layer). Without bwrap (require_isolation=False) the worker is not pid 1; it becomes a child
subreaper instead and kills its descendants one by one, and a program can kill it unless Landlock
(ABI >= 6) scopes its signals.

Runs in the jail: stdlib and orjson only.
"""
from __future__ import annotations

import ctypes
import fcntl
import gc
import importlib
import os
import secrets
import selectors
import shutil
import signal
import tempfile
import time
from contextlib import suppress

from sandbox import harness
from sandbox.confine import Confinement
from sandbox.protocol import (FrameDecoder, Hello, Outcome, ProtocolError, Reply, Request,
                              WorkerLimits, from_wire, read_frame, to_wire, write_frame)
from sandbox.verdict import ChildEnd, decide

# Imported once here so that programs using them start in a fork, not an import.
PREIMPORTS = (
    "math", "cmath", "re", "collections", "collections.abc", "itertools", "functools", "heapq",
    "bisect", "string", "typing", "json", "random", "statistics", "fractions", "decimal",
    "operator", "copy", "datetime", "hashlib", "array", "dataclasses", "enum", "numbers",
    "textwrap", "unicodedata", "sys", "os", "time", "queue", "threading", "struct", "ast",
)
RESULT_BYTES = 32 << 20   # most bytes a child may send on the result channel per program
RESULT_PIPE_BYTES = 1 << 20   # capacity asked for the result pipe (F_SETPIPE_SZ; the default max)
DRAIN_S = 0.05                # s between reads of the result pipe while a child runs
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Move the request/reply pipes off fds 0/1 so a stray print() can never write into a frame.
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)

    limits = from_wire(WorkerLimits, read_frame(requests))
    for module in PREIMPORTS:
        importlib.import_module(module)
    gc.freeze()   # children's collections skip these objects, so they stay shared after fork
    isolated = os.getpid() == 1
    # Built while still root, so it can open every path it allows (/root/... included).
    confinement = Confinement.build(limits.read_paths)
    _drop_privileges(limits)
    _harden(isolated)
    scratch = "/tmp" if isolated else tempfile.mkdtemp(prefix="sandbox-worker-")
    workdir = os.path.join(scratch, "program")   # the one directory programs may write to
    os.mkdir(workdir, 0o700)
    confinement.allow_workdir(workdir)
    confinement.probe(workdir, scratch)
    _wipe(scratch, workdir)
    setup = harness.prepare(workdir, confinement)
    write_frame(replies, to_wire(_hello(confinement)))
    while (frame := read_frame(requests)) is not None:
        request = from_wire(Request, frame)
        write_frame(replies, to_wire(grade(request, limits, scratch, setup)))
    if not isolated:
        shutil.rmtree(scratch, ignore_errors=True)


def grade(request: Request, limits: WorkerLimits, scratch: str,
          setup: harness.ChildSetup) -> Reply:
    """Run one program in a forked child and judge it; leaves no process or file behind."""
    nonce = secrets.token_hex(16)
    result_r, result_w = os.pipe()
    with suppress(OSError):   # refused past the user's pipe quota: 64 KiB, then it waits DRAIN_S
        fcntl.fcntl(result_w, fcntl.F_SETPIPE_SZ, RESULT_PIPE_BYTES)
    output_r, output_w = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(result_r)
        os.close(output_r)
        harness.run_child(request, limits, nonce, result_w, output_w, setup)
    os.close(result_w)
    os.close(output_w)
    with suppress(OSError):   # the child does the same; whichever runs first wins the race
        os.setpgid(pid, pid)
    watch = _Watch(pid, result_r, output_r, limits.max_output_kb << 10)
    end = watch.run(request.timeout_s)
    duration = time.monotonic() - started
    _sweep(pid)
    watch.drain()   # every writer is dead now, so this reaches EOF
    os.close(result_r)
    os.close(output_r)
    _wipe(scratch, setup.workdir)
    verdict = decide(request, nonce, watch.messages, end, limits.cpu_s, watch.channel_error)
    feedback = verdict.feedback
    if verdict.status is Outcome.KILLED and watch.output:
        tail = bytes(watch.output[-200:]).decode("utf-8", "backslashreplace").strip()
        feedback = f"{feedback}; last output: {tail}"[:500]
    return Reply(request.program_id, verdict.status.value, verdict.test_passed, feedback, duration)


class _Watch:
    """Reads the child's result channel and output pipe until it exits or its time is up.

    The result pipe is enlarged (RESULT_PIPE_BYTES) and emptied every DRAIN_S or whenever the
    worker wakes for another reason, not on each message: a wake-up per test result cost more
    than the rest of the worker's work on a program. A child that fills the pipe waits at most
    DRAIN_S for room."""

    def __init__(self, pid: int, result_fd: int, output_fd: int, output_cap: int) -> None:
        self.pid = pid
        self.result_fd = result_fd
        self.output_fd = output_fd
        self.output_cap = output_cap   # bytes of output kept; the rest is read and dropped
        self.decoder = FrameDecoder(max_total=RESULT_BYTES)
        self.messages: list = []
        self.output = bytearray()
        self.channel_error: str | None = None
        self.open = {result_fd, output_fd}
        os.set_blocking(result_fd, False)

    def run(self, timeout_s: float) -> ChildEnd:
        deadline = time.monotonic() + timeout_s
        pidfd = os.pidfd_open(self.pid)
        timed_out = False
        with selectors.DefaultSelector() as selector:
            selector.register(pidfd, selectors.EVENT_READ)
            selector.register(self.output_fd, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:   # checked first, so a flood of output cannot outrun it
                    exited = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                    timed_out = exited is None
                    break
                ready = {key.fd for key, _ in selector.select(min(remaining, DRAIN_S))}
                if pidfd in ready:
                    break
                while self.result_fd in self.open and self._read(self.result_fd):
                    pass
                if self.output_fd in ready and not self._read(self.output_fd):
                    selector.unregister(self.output_fd)
                if self.channel_error is not None:
                    break   # a corrupted channel already decides the verdict; stop the program
        os.close(pidfd)
        if timed_out or self.channel_error is not None:
            with suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            with suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)   # in case it had not yet set its group
        _, status, usage = os.wait4(self.pid, 0)
        return ChildEnd(
            exit_code=os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else None,
            signal=os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            timed_out=timed_out,
            cpu_s=usage.ru_utime + usage.ru_stime,
        )

    def drain(self) -> None:
        """Read to EOF; call only once every writer is dead (else it may spin)."""
        for fd in list(self.open):
            while self._read(fd):
                pass

    def _read(self, fd: int) -> bool:
        """Read one chunk; False at EOF or, on the non-blocking result pipe, when it is empty."""
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return False
        if not data:
            self.open.discard(fd)
            return False
        if fd == self.output_fd:
            self.output += data[: max(self.output_cap - len(self.output), 0)]
        elif self.channel_error is None:
            try:
                self.messages.extend(self.decoder.feed(data))
            except ProtocolError as exc:
                self.channel_error = str(exc)
        return True


def _sweep(child_pid: int) -> None:
    """Kill and reap every process the program started, including ones that left its group."""
    with suppress(ProcessLookupError):
        os.killpg(child_pid, signal.SIGKILL)
    while True:
        if os.getpid() == 1:
            with suppress(ProcessLookupError):
                os.kill(-1, signal.SIGKILL)   # everyone in this pid namespace except init (us)
        else:
            for pid in _own_children():
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _own_children() -> list[int]:
    me, children = str(os.getpid()), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with suppress(OSError):
                with open(f"/proc/{entry}/stat") as stat:
                    # "pid (comm) state ppid ...": comm may hold spaces, so split after its ")".
                    if stat.read().rpartition(")")[2].split()[1] == me:
                        children.append(int(entry))
    return children


def _wipe(scratch: str, workdir: str) -> None:
    """Empty the working directory and remove everything else in `scratch`, whatever permissions
    the program left. The working directory itself stays: Landlock's rule names its inode."""
    def make_writable(function, path, _exc_info) -> None:
        os.chmod(os.path.dirname(path), 0o700)
        with suppress(OSError):
            os.chmod(path, 0o700)
        function(path)

    if not os.path.isdir(workdir) or os.path.islink(workdir):
        # Only possible where Landlock is off (with it, a program cannot remove or rename its
        # directory), so no Landlock rule is left naming the old one.
        with suppress(FileNotFoundError):
            os.unlink(workdir)
        os.mkdir(workdir, 0o700)
    os.chmod(workdir, 0o700)
    for directory, keep in ((workdir, None), (scratch, os.path.basename(workdir))):
        for entry in os.scandir(directory):
            if entry.name == keep:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, onerror=make_writable)
            else:
                os.unlink(entry.path)


def _drop_privileges(limits: WorkerLimits) -> None:
    if os.getuid() != 0:
        return   # already unprivileged (bwrap ran as a normal user, in a user namespace)
    os.setgroups([])
    os.setresgid(limits.gid, limits.gid, limits.gid)
    os.setresuid(limits.uid, limits.uid, limits.uid)
    if os.getresuid() != (limits.uid,) * 3 or os.getresgid() != (limits.gid,) * 3:
        raise RuntimeError("could not drop privileges")


def _harden(isolated: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    options = [
        (PR_SET_NO_NEW_PRIVS, 1),             # no privileges gained through setuid binaries
        (PR_SET_DUMPABLE, 0),                 # programs cannot ptrace us or open /proc/1/fd
        (PR_SET_PDEATHSIG, signal.SIGKILL),   # die with bwrap: the uid drop cleared the
    ]                                         # setting that bwrap's --die-with-parent made
    if not isolated:
        options.append((PR_SET_CHILD_SUBREAPER, 1))   # orphans come back to us for the sweep
    for option, value in options:
        if libc.prctl(option, value, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl({option}, {value}) failed")


def _hello(confinement: Confinement) -> Hello:
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status if ":" in line)
    with open("/proc/net/dev") as dev:
        interfaces = tuple(line.split(":", 1)[0].strip() for line in dev.readlines()[2:])
    return Hello(
        pid=os.getpid(), uid=os.getuid(), gid=os.getgid(),
        no_new_privs=fields["NoNewPrivs"].strip() == "1",
        cap_eff=fields["CapEff"].strip(),
        net_interfaces=interfaces,
        seccomp_error=confinement.seccomp_error,
        landlock_error=confinement.landlock_error,
        landlock_abi=confinement.landlock_abi,
    )

