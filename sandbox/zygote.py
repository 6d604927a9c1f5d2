"""The zygote: the process that forks each program's child, so that no child starts as a copy of
memory that ever held a test, an expected value or another program.

The worker reads every Program (with its tests) and judges it; a child forked from the worker
would inherit all of that, stale pages included, where a program could find it (gc, frames,
/proc/self/mem). So the worker forks the zygote once, right after it is set up and before it
reads any Program, and the zygote only ever receives three pipe ends per program:

    worker (pid 1, judges) --socketpair--> zygote --fork--> child (confines itself, runs the
                                                            program: harness.py)

Messages on the SOCK_SEQPACKET pair, one datagram each:
    worker -> zygote   b"F" + the child's input, result and output pipe ends (SCM_RIGHTS)
                       b"K"                kill the child's process group (its time is up)
    zygote -> worker   b"E" + wait status + CPU seconds: it exited, and everything it left
                                           behind is killed and reaped (the sweep)
                       b"X" + errno        fork failed

The zygote is a child subreaper, so processes a program leaves behind come back to it. In the
jail the sweep is `kill(-1, SIGKILL)`, which spares only the namespace's init (the worker) and
the zygote itself; unjailed it kills its own children one by one. Programs cannot signal it
where Landlock scopes signals (ABI >= 6); where one kills it anyway, the worker finishes that
program's verdict and retires (worker.py).

Runs in the jail: stdlib only.
"""
from __future__ import annotations

import ctypes
import os
import select
import signal
import socket
import struct
from contextlib import suppress

from sandbox import harness
from sandbox.protocol import WorkerLimits

PID = struct.Struct("=i")
END = struct.Struct("=id")
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36


class Zygote:
    """The worker's handle on its zygote."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock

    @classmethod
    def start(cls, limits: WorkerLimits, setup: harness.ChildSetup, isolated: bool,
              close_fds: tuple[int, ...]) -> Zygote:
        """Fork the zygote; call before any Program is read. `close_fds`: the pool's pipes."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        worker = os.getpid()
        pid = os.fork()
        if pid == 0:
            try:
                ours.close()
                for fd in close_fds:
                    os.close(fd)
                _serve(theirs, limits, setup, isolated, worker)
            finally:
                os._exit(0)
        theirs.close()
        return cls(pid, ours)

    def fork(self, input_r: int, result_w: int, output_w: int) -> None:
        socket.send_fds(self.sock, [b"F"], [input_r, result_w, output_w])

    def kill(self) -> None:
        with suppress(OSError):
            self.sock.send(b"K")

    def receive(self) -> tuple[str, tuple]:
        """One message (the socket must be readable): ("E", status, cpu_s), ("X", errno), or
        ("gone", ()) when the zygote died."""
        try:
            data = self.sock.recv(64)
        except OSError:
            data = b""
        if data[:1] == b"E" and len(data) == 1 + END.size:
            return "E", END.unpack(data[1:])
        if data[:1] == b"X" and len(data) == 1 + PID.size:
            return "X", PID.unpack(data[1:])
        return "gone", ()

    def close(self) -> None:
        self.sock.close()
        with suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def _serve(sock: socket.socket, limits: WorkerLimits, setup: harness.ChildSetup,
           isolated: bool, worker: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for option, value in ((PR_SET_PDEATHSIG, signal.SIGKILL), (PR_SET_CHILD_SUBREAPER, 1)):
        if libc.prctl(option, value, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl({option}) failed")
    if os.getppid() != worker:
        return   # the worker died before the parent-death signal was set
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(sock, 16, 3)
        except OSError:
            return
        if message != b"F" or len(fds) != 3:
            return   # the worker closed its end (or broke the protocol)
        try:
            pid = os.fork()
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            sock.send(b"X" + PID.pack(exc.errno or 0))
            continue
        if pid == 0:
            harness.run_child(*fds, limits, setup)   # never returns
        for fd in fds:
            os.close(fd)
        with suppress(OSError):   # the child does the same; whichever runs first wins the race
            os.setpgid(pid, pid)
        pidfd = os.pidfd_open(pid)
        while pidfd not in select.select([sock, pidfd], [], [])[0]:
            if sock.recv(16) != b"K":   # the worker is gone: so are we, and the child
                os.killpg(pid, signal.SIGKILL)
                return
            with suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)   # in case it had not yet set its group
        os.close(pidfd)
        _, status, usage = os.wait4(pid, 0)
        sweep(pid, isolated)
        sock.send(b"E" + END.pack(status, usage.ru_utime + usage.ru_stime))


def sweep(child_pid: int, isolated: bool) -> None:
    """Kill and reap every process the program started, including ones that left its group."""
    with suppress(ProcessLookupError):
        os.killpg(child_pid, signal.SIGKILL)
    while True:
        if isolated:
            with suppress(ProcessLookupError):
                os.kill(-1, signal.SIGKILL)   # everyone in the namespace but init and us
        else:
            for pid in own_children():
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def own_children() -> list[int]:
    me, children = str(os.getpid()), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with suppress(OSError):
                with open(f"/proc/{entry}/stat") as stat:
                    # "pid (comm) state ppid ...": comm may hold spaces, so split after its ")".
                    if stat.read().rpartition(")")[2].split()[1] == me:
                        children.append(int(entry))
    return children
