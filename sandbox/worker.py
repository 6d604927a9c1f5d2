"""The worker: started once inside the jail, then grades programs one at a time until stdin closes.

launch.py starts it under bwrap (as pid 1 of its own pid namespace) as

    python3.11 -I -B -c "import sys; sys.path[:0] = ['/sandbox/lib', '/sandbox/deps']; \\
        from sandbox.worker import main; main()"

and `python -c "from sandbox.launch import Launcher; ..."` prints the whole bwrap command line.

It reads a WorkerLimits frame, pre-imports common modules (so a fork is all a program costs),
builds the seccomp filter and Landlock ruleset (confine.py) while still root, drops to the
unprivileged uid/gid, makes the programs' working directory (`/tmp/program`, kept for the
worker's life and emptied after each program), probes both mechanisms in throwaway children,
starts the zygote (zygote.py) before it has read a single test, says Hello (which reports what
works), has the zygote fork a child that confines itself and waits for a program (harness.py),
then loops: read a Program frame, send that child the program, judge every test here while the
child computes what the tests ask of the program (judge.py), decide the verdict (verdict.py), write
a Reply, wait for the child to end (the zygote kills and reaps everything it left behind; a child
that answered everything is waited for after the reply), wipe the scratch directory, and have
the next child forked while the pool answers.

Why pid 1: the kernel drops signals sent to a namespace's init from inside the namespace unless
init handles them, so a program cannot kill or stop the worker that judges it, and the
zygote's `kill(-1, SIGKILL)` removes every process a program started, daemons that called
setsid included (with seccomp, a program cannot start processes at all; this is the second
layer). Without bwrap (require_isolation=False) the worker is not pid 1 and a program can signal
it (and the zygote) unless Landlock (ABI >= 6) scopes its signals.

Runs in the jail: stdlib and orjson only.
"""
from __future__ import annotations

import ctypes
import gc
import importlib
import os
import shutil
import signal
import tempfile
import time
from contextlib import suppress

from sandbox import harness
from sandbox.channel import Channel
from sandbox.confine import Confinement
from sandbox.judge import Judge
from sandbox.protocol import Hello, Reply, WorkerLimits, from_wire, read_frame, to_wire, write_frame
from sandbox.records import Program, Status
from sandbox.verdict import ChildEnd, decide
from sandbox.zygote import Zygote

# Imported once here so that programs using them start in a fork, not an import.
PREIMPORTS = (
    "math", "cmath", "re", "collections", "collections.abc", "itertools", "functools", "heapq",
    "bisect", "string", "typing", "json", "random", "statistics", "fractions", "decimal",
    "operator", "copy", "datetime", "hashlib", "array", "dataclasses", "enum", "numbers",
    "textwrap", "unicodedata", "sys", "os", "time", "queue", "threading", "struct", "ast",
)
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
    zygote = Zygote.start(limits, setup, isolated, (requests.fileno(), replies.fileno()))
    output_cap = limits.max_output_kb << 10
    write_frame(replies, to_wire(_hello(confinement)))
    channel = None   # the first child waits for the first request: the pool has then put us
    while (frame := read_frame(requests)) is not None:   # (and the zygote) in our cgroup
        request = from_wire(Program, frame)
        channel = channel or Channel(zygote, output_cap)
        reply = grade(request, limits, scratch, workdir, channel)
        write_frame(replies, to_wire(reply))
        if reply.retire or not clean_up(channel, scratch, workdir):
            break   # the pool replaces this worker; bwrap takes every process with it
        channel = Channel(zygote, output_cap)   # the next program's child, forked ahead
    zygote.close()
    if not isolated:
        shutil.rmtree(scratch, ignore_errors=True)


def grade(request: Program, limits: WorkerLimits, scratch: str, workdir: str,
          channel: Channel) -> Reply:
    """Judge one program while its child computes; leaves no process or file behind."""
    started = time.monotonic()
    channel.start(request.timeout_s)
    judge = Judge(request, channel)
    run = judge.run()
    if run.done and not run.timed_out and run.corrupt is None:
        # The child answered everything and said so: how it exits cannot change a verdict
        # made here, so the reply goes now; clean_up collects its end before the next fork.
        end: ChildEnd | None = ChildEnd(exit_code=0, signal=None, timed_out=False, cpu_s=0.0)
    else:
        end = channel.finish(kill=True)
    duration = time.monotonic() - started
    verdict = decide(len(request.tests), request.timeout_s, run, end, limits.cpu_s)
    feedback = verdict.feedback
    if verdict.status is Status.KILLED and channel.output:
        tail = bytes(channel.output[-200:]).decode("utf-8", "backslashreplace").strip()
        feedback = f"{feedback}; last output: {tail}"[:500]
    return Reply(request.program_id, verdict.status.value, verdict.test_passed, feedback,
                 duration, judge.inside, end is None, list(run.outputs))


def clean_up(channel: Channel, scratch: str, workdir: str) -> bool:
    """After the reply: the child's end (if not yet collected), then the scratch directory
    wiped; False if the zygote stopped answering."""
    if not channel.finished:
        channel.finish(kill=False)
    _wipe(scratch, workdir)
    return not channel.zygote_lost


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

