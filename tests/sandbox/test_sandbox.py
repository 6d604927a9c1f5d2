"""The sandbox: correct verdicts, hostile programs contained, forged passes refused, each isolation
layer reported and doing its job, HumanEval.

    .venv/bin/python -m pytest tests/sandbox/test_sandbox.py -q

Uses the session `sandbox_pool` (conftest.py, default config: one worker per CPU) and a few small
dedicated pools where a test needs one worker or breaks workers on purpose. After every hostile
program the same pool must still grade a good program correctly.
"""
from __future__ import annotations

import ast
import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import signal
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from engine.records import Program, Status
from engine.records import TestCase as Case  # as Case: pytest would try to collect TestCase
from sandbox.config import SandboxConfig
from sandbox.confine import ARCHES, DENIED, seccomp_program
from sandbox.launch import Mechanisms, enforce
from sandbox.pool import SandboxPool
from sandbox.values import encode, equal
from sandbox.verdict import ChildEnd, Run, TestResult, decide

# Set before any pool starts (collection runs before fixtures): no program may read it.
SECRET = f"sekrit-{secrets.token_hex(8)}"
os.environ["SANDBOX_TEST_SECRET"] = SECRET

F_TEST = (Case("assert f(1) == 2", "f(1)", "2"),)
GOOD = "def f(x):\n    return x + 1\n"


def make_program(code: str, tests: tuple[Case, ...] = F_TEST, setup: str = "",
                 timeout_s: float = 5.0, program_id: str = "p") -> Program:
    return Program(program_id, code, tests, setup, timeout_s)


def grade_one(pool: SandboxPool, program: Program):
    [grade] = pool.grade([program])
    return grade


def assert_still_healthy(pool: SandboxPool) -> None:
    """Every worker (one good program each, at once) still grades correctly."""
    grades = pool.grade([make_program(GOOD, program_id=f"good{i}")
                         for i in range(pool.config.workers)])
    assert [g.status for g in grades] == [Status.PASSED] * pool.config.workers, grades


# ------------------------------------------------------------------------------ correct verdicts

def test_passing_program(sandbox_pool):
    grade = grade_one(sandbox_pool, make_program(GOOD))
    assert grade.status is Status.PASSED and grade.test_passed == (True,) and grade.feedback == ""


def test_wrong_answer_gives_input_output_expected(sandbox_pool):
    tests = (Case("assert f(1) == 2", "f(1)", "2"), Case("assert f(2) == 2", "f(2)", "2"))
    grade = grade_one(sandbox_pool, make_program("def f(x):\n    return 2 * x\n", tests))
    assert grade.status is Status.FAILED
    assert grade.test_passed == (True, False)
    assert grade.feedback == "Input: f(2) Output: 4 Expected: 2"


def test_exception_gives_type_and_message(sandbox_pool):
    grade = grade_one(sandbox_pool, make_program("def f(x):\n    return {}[x]\n"))
    assert grade.status is Status.ERROR and grade.feedback == "KeyError: 1"


def test_syntax_error(sandbox_pool):
    grade = grade_one(sandbox_pool, make_program("def f(x)\n    return x\n"))
    assert grade.status is Status.ERROR and grade.feedback.startswith("SyntaxError:")


def test_statement_tests_and_assert_messages(sandbox_pool):
    tests = (Case("assert f(1) == 2"),
             Case("assert f(2) == 2, 'Input: 2 Output: 3 Expected: 2'"),
             Case("assert f(3) == 2"))
    grade = grade_one(sandbox_pool, make_program(GOOD, tests, setup="import math"))
    assert grade.status is Status.FAILED and grade.test_passed == (True, False, False)
    assert grade.feedback == "Input: 2 Output: 3 Expected: 2"


def test_stdlib_imports_work_in_the_jail(sandbox_pool):
    code = ("import zlib, xml.dom.minidom, sqlite3, decimal\ndef f(x):\n"
            "    return len(zlib.compress(b'a')) and x + 1\n")
    assert grade_one(sandbox_pool, make_program(code)).passed


def test_agrade_keeps_input_order(sandbox_pool):
    programs = [make_program(GOOD if i % 2 else "def f(x):\n    return 0\n", program_id=f"a{i}")
                for i in range(6)]
    grades = asyncio.run(sandbox_pool.agrade(programs))
    assert [g.program_id for g in grades] == [p.program_id for p in programs]
    assert [g.passed for g in grades] == [bool(i % 2) for i in range(6)]


# ------------------------------------------------------------------------------ hostile programs

HOSTILE = {   # name: (code, acceptable statuses, timeout_s)
    "infinite loop": ("def f(x):\n    while True:\n        pass\n", {Status.TIMEOUT}, 1.5),
    "20 GB allocation": ("def f(x):\n    return len(bytearray(20 << 30))\n", {Status.MEMORY}, 10),
    "growing list": ("def f(x):\n    a = []\n    while True:\n        a.append('x' * (1 << 20))\n",
                     {Status.MEMORY}, 10),
    "fork bomb": ("import os\ndef f(x):\n    while True:\n        try:\n            os.fork()\n"
                  "        except OSError:\n            pass\n", {Status.TIMEOUT}, 1.5),
    "10 GB file": ("def f(x):\n    with open('big', 'wb') as out:\n        for _ in range(10240):\n"
                   "            out.write(bytes(1 << 20))\n", {Status.ERROR}, 10),
    "fill the tmpfs": ("def f(x):\n    for i in range(100):\n"   # its own dir is on /tmp
                       "        with open(f'f{i}', 'wb') as out:\n"
                       "            for _ in range(60):\n"
                       "                out.write(bytes(1 << 20))\n", {Status.ERROR}, 10),
    # RLIMIT_NPROC stops it; CPython itself may then crash after ~10^4 failed thread starts
    "thread bomb": ("import threading, time\ndef f(x):\n    while True:\n        try:\n"
                    "            threading.Thread(target=time.sleep, args=(60,), daemon=True)"
                    ".start()\n        except RuntimeError:\n            pass\n",
                    {Status.TIMEOUT, Status.MEMORY, Status.KILLED}, 1.5),
    "endless output": ("import sys\ndef f(x):\n    while True:\n"
                       "        sys.stdout.write('x' * 4096)\n", {Status.TIMEOUT}, 1.5),
    "kill the worker": ("import os, signal\ndef f(x):\n    for pid, sig in ((os.getppid(), 9), "
                        "(1, 9), (1, signal.SIGSTOP), (1, signal.SIGINT), (-1, 9)):\n"
                        "        try:\n            os.kill(pid, sig)\n        except OSError:\n"
                        "            pass\n    return x + 1\n", {Status.PASSED}, 10),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_program_is_contained(sandbox_pool, name):
    code, statuses, timeout_s = HOSTILE[name]
    grade = grade_one(sandbox_pool, make_program(code, timeout_s=timeout_s))
    assert grade.status in statuses, grade
    assert_still_healthy(sandbox_pool)


def test_no_process_survives_a_fork_bomb(sandbox_pool):
    bomb, _, _ = HOSTILE["fork bomb"]
    sandbox_pool.grade([make_program(bomb, timeout_s=1.0)] * sandbox_pool.config.workers)
    # Left: the worker (pid 1), the zygote (our parent) and this program.
    census = ("import os\ndef f(x):\n    return sorted(int(p) for p in os.listdir('/proc') "
              "if p.isdigit() and int(p) not in (os.getpid(), os.getppid()))\n")
    tests = (Case("assert f(1) == [1]", "f(1)", "[1]"),)
    grades = sandbox_pool.grade([make_program(census, tests)] * sandbox_pool.config.workers)
    assert all(g.passed for g in grades), grades
    assert_still_healthy(sandbox_pool)


def test_host_file_cannot_be_deleted(sandbox_pool, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    code = f"import os\ndef f(x):\n    os.remove({str(victim)!r})\n    return x + 1\n"
    grade = grade_one(sandbox_pool, make_program(code))
    assert grade.status is Status.ERROR and "FileNotFoundError" in grade.feedback
    assert victim.read_text() == "keep me"
    assert_still_healthy(sandbox_pool)


def test_parent_environment_is_invisible(sandbox_pool):
    code = (
        "import os\n"
        "def sources():\n"
        "    found = {'os.environ': repr(dict(os.environ))}\n"
        "    for pid in ['1', str(os.getppid()), 'self'] + os.listdir('/proc'):\n"
        "        try:\n"
        "            with open(f'/proc/{pid}/environ', 'rb') as fh:\n"
        "                found[pid] = fh.read().decode('utf-8', 'replace')\n"
        "        except OSError:\n"
        "            pass\n"
        "    return found\n"
        "def leaks():\n"
        "    return {k: v for k, v in sources().items() if 'SANDBOX_TEST' in v or 'sekrit' in v}\n"
        "def env_names():\n"
        "    return sorted(os.environ)\n")
    tests = (Case("assert leaks() == {}", "leaks()", "{}"),
             Case("", "env_names()",
                  "['HOME', 'LANG', 'PATH', 'PWD', 'PYTHONDONTWRITEBYTECODE', 'TMPDIR']"))
    grade = grade_one(sandbox_pool, make_program(code, tests))
    assert grade.status is Status.PASSED, grade
    assert SECRET not in grade.feedback
    assert_still_healthy(sandbox_pool)


def test_network_is_unreachable(sandbox_pool):
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    code = ("import socket\ndef f():\n    try:\n"
            f"        socket.create_connection(('127.0.0.1', {port}), timeout=2).close()\n"
            "        return 'connected'\n    except OSError as exc:\n"
            "        return type(exc).__name__\n")
    tests = (Case("assert f() != 'connected'"),)
    with listener:
        grade = grade_one(sandbox_pool, make_program(code, tests))
        assert grade.status is Status.PASSED, grade
        with pytest.raises(socket.timeout):
            listener.accept()
    assert_still_healthy(sandbox_pool)


def test_daemon_does_not_outlive_its_program(tmp_path):
    marker = tmp_path / "daemon-was-here"
    daemon = (   # a forked, setsid'd daemon (seccomp: fork fails) and a daemon thread
        "import os, threading, time\n"
        "def linger():\n"
        "    time.sleep(2)\n"
        f"    for path in ({str(marker)!r}, '/tmp/daemon-was-here', 'daemon-was-here'):\n"
        "        try:\n"
        "            open(path, 'w').close()\n"
        "        except OSError:\n"
        "            pass\n"
        "def f(x):\n"
        "    threading.Thread(target=linger, daemon=True).start()\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        return x + 1\n"
        "    if pid == 0:\n"
        "        os.setsid()\n"
        "        if os.fork() == 0:\n"
        "            linger()\n"
        "        os._exit(0)\n"
        "    return x + 1\n")
    census = ("import os\ndef f(x):\n    return [sorted(int(p) for p in os.listdir('/proc') "
              "if p.isdigit() and int(p) not in (os.getpid(), os.getppid())), os.listdir('.')]\n")
    census_tests = (Case("", "f(1)", "[[1], []]"),)
    with SandboxPool(SandboxConfig(workers=1)) as pool:
        assert grade_one(pool, make_program(daemon)).status is Status.PASSED
        time.sleep(3)
        grade = grade_one(pool, make_program(census, census_tests))
        assert grade.status is Status.PASSED, grade
        assert_still_healthy(pool)
    assert not marker.exists()


def test_a_gigabyte_of_output_is_capped_and_does_not_hang(sandbox_pool):
    code = ("import sys\ndef f(x):\n    line = 'x' * 1023 + '\\n'\n    for _ in range(1 << 20):\n"
            "        sys.stdout.write(line)\n    return x + 1\n")
    started = time.monotonic()
    grade = grade_one(sandbox_pool, make_program(code, timeout_s=20.0))
    assert grade.status is Status.PASSED, grade
    assert time.monotonic() - started < 20
    assert_still_healthy(sandbox_pool)


# ------------------------------------------------------------- seccomp and Landlock, per program

LIBC = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
BLOCKED = {   # name: (code defining f() that reports what happened, the report we expect)
    "fork": ("import os\ndef f():\n    try:\n        return os.fork() and 'forked'\n"
             "    except OSError as exc:\n        return type(exc).__name__\n",
             "'PermissionError'"),
    "subprocess": ("import subprocess\ndef f():\n    try:\n"
                   "        return subprocess.run(['/bin/true']).returncode\n"
                   "    except OSError as exc:\n        return type(exc).__name__\n",
                   "'PermissionError'"),
    "execve": ("import os\ndef f():\n    try:\n        os.execv('/bin/true', ['true'])\n"
               "    except OSError as exc:\n        return type(exc).__name__\n",
               "'PermissionError'"),
    "socket()": ("import socket\ndef f():\n    try:\n        socket.socket().close()\n"
                 "        return 'socket'\n    except OSError as exc:\n"
                 "        return type(exc).__name__\n", "'PermissionError'"),
    # PTRACE_TRACEME and unshare(0) succeed for anyone without the filter: EPERM is seccomp's
    "ptrace": (LIBC + "def f():\n    return libc.ptrace(0, 0, 0, 0), ctypes.get_errno()\n",
               "(-1, 1)"),
    "unshare": (LIBC + "def f():\n    return [(libc.unshare(flags), ctypes.get_errno()) "
                "for flags in (0, 0x10000000, 0x40000000)]\n", "[(-1, 1)] * 3"),
    "threads still work": ("from concurrent.futures import ThreadPoolExecutor\ndef f():\n"
                           "    with ThreadPoolExecutor(4) as threads:\n"
                           "        return sum(threads.map(lambda x: x * x, range(100)))\n",
                           "328350"),
    "asyncio still works": ("import asyncio\nasync def g():\n    await asyncio.sleep(0)\n"
                            "    return 7\ndef f():\n    return asyncio.run(g())\n", "7"),
    "tempfile goes to the work dir": ("import os, tempfile\ndef f():\n"
                                      "    with tempfile.NamedTemporaryFile() as fh:\n"
                                      "        return os.path.dirname(fh.name) == os.getcwd()\n",
                                      "True"),
}
LANDLOCKED = {   # needs Landlock: inside the jail /tmp is writable by the sandbox uid otherwise
    "write outside the work dir": (
        "import os\ndef attempt(action):\n    try:\n        action()\n        return 'done'\n"
        "    except OSError as exc:\n        return type(exc).__name__\n"
        "def f():\n    return [attempt(lambda: open('/tmp/outside', 'w').close()),\n"
        "            attempt(lambda: os.mkdir('/tmp/outside-dir')),\n"
        "            attempt(lambda: open('inside', 'w').close()),\n"
        "            attempt(lambda: os.rename('inside', '/tmp/moved')),\n"
        "            attempt(lambda: os.symlink('/tmp', 'escape')),\n"
        "            attempt(lambda: open('escape/outside', 'w').close()),\n"
        "            attempt(lambda: os.rmdir(os.getcwd()))]\n",
        "['PermissionError', 'PermissionError', 'done', 'PermissionError', 'done', "
        "'PermissionError', 'PermissionError']"),
}


@pytest.mark.parametrize("name", list(BLOCKED) + list(LANDLOCKED))
def test_new_layers_block_and_allow(sandbox_pool, name):
    if name in LANDLOCKED and not sandbox_pool.mechanisms.landlock:
        pytest.skip(f"Landlock not active: {dict(sandbox_pool.mechanisms.why_missing)}")
    code, expected = BLOCKED.get(name) or LANDLOCKED[name]
    grade = grade_one(sandbox_pool, make_program(code, (Case("", "f()", expected),)))
    assert grade.status is Status.PASSED, grade
    assert_still_healthy(sandbox_pool)


def test_programs_run_under_the_filter(sandbox_pool):
    code = ("def f():\n    with open('/proc/self/status') as fh:\n"
            "        return [l.split()[1] for l in fh if l.startswith('Seccomp:')]\n")
    assert grade_one(sandbox_pool, make_program(code, (Case("", "f()", "['2']"),))).passed


def test_mechanisms_are_reported(sandbox_pool):
    mechanisms = sandbox_pool.mechanisms
    assert set(mechanisms.as_dict()) == {"bwrap", "namespaces", "seccomp", "landlock", "cgroups"}
    assert mechanisms.bwrap and mechanisms.namespaces and mechanisms.seccomp   # required
    off = {name for name, on in mechanisms.as_dict().items() if not on}
    assert off == {name for name, _ in mechanisms.why_missing}


def test_a_missing_required_mechanism_is_an_error_and_others_warn(caplog):
    no_seccomp = Mechanisms(True, True, False, False, True,
                            why_missing=(("seccomp", "no table for mips"), ("landlock", "old")))
    with pytest.raises(RuntimeError, match="seccomp: no table for mips"):
        enforce(no_seccomp, require_isolation=True)
    with caplog.at_level(logging.WARNING, logger="sandbox.launch"):
        enforce(no_seccomp, require_isolation=False)
    assert "SECCOMP IS NOT ACTIVE (no table for mips)" in caplog.text
    assert "LANDLOCK IS NOT ACTIVE (old)" in caplog.text
    no_landlock = Mechanisms(True, True, True, False, True, why_missing=(("landlock", "old"),))
    enforce(no_landlock, require_isolation=True)   # Landlock (and cgroups) only ever warn


def run_bpf(program: bytes, arch: int, nr: int, arg0: int = 0) -> int:
    """A classic-BPF interpreter for the few opcodes seccomp_program emits."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)   # struct seccomp_data
    code = [struct.unpack("=HBBI", program[i:i + 8]) for i in range(0, len(program), 8)]
    pc = acc = 0
    while True:
        op, jt, jf, k = code[pc]
        pc += 1
        if op == 0x20:                                           # ld [k]
            acc = struct.unpack_from("<I", data, k)[0]
        elif op == 0x06:                                         # ret k
            return k
        else:                                                    # jeq / jge / jset
            taken = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[op]
            pc += jt if taken else jf


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_seccomp_program_decides_per_syscall(machine):
    audit_arch, numbers = ARCHES[machine]
    program = seccomp_program(machine)
    allow, eperm, enosys, kill = 0x7FFF0000, 0x50000 | 1, 0x50000 | 38, 0x80000000
    thread_flags = 0x3D0F00   # what glibc's pthread_create passes to clone
    cases = [
        (audit_arch, 0 if machine == "x86_64" else 63, 0, allow),          # read
        (audit_arch, numbers["clone"], thread_flags, allow),
        (audit_arch, numbers["clone"], 17, eperm),                          # fork: SIGCHLD only
        (audit_arch, numbers["clone"], thread_flags | 0x10000000, eperm),   # + CLONE_NEWUSER
        (audit_arch, numbers["clone3"], 0, enosys),
        (0x40000003, numbers["execve"], 0, kill),                           # i386 convention
    ] + [(audit_arch, numbers[name], 0, eperm) for name in DENIED if name in numbers]
    if machine == "x86_64":
        cases.append((audit_arch, 0x40000000 | 59, 0, kill))               # x32 execve
    for arch, nr, arg0, action in cases:
        assert run_bpf(program, arch, nr, arg0) == action, (arch, nr, arg0)
    with pytest.raises(ValueError, match="riscv64"):
        seccomp_program("riscv64")


def test_each_worker_has_its_own_cgroup_removed_on_close():
    with SandboxPool(SandboxConfig(workers=2, memory_mb=512)) as pool:
        if not pool.mechanisms.cgroups:
            pytest.skip(f"cgroups not active: {dict(pool.mechanisms.why_missing)}")
        groups = [worker.cgroup for worker in pool._live]
        dirs = [path for group in groups for path in group.dirs]
        assert len({path.name for path in dirs}) == 2   # one group per worker
        for worker in pool._live:
            pid = worker.worker_pid(jailed=True)
            assert all(str(pid) in (path / "cgroup.procs").read_text().split()
                       for path in worker.cgroup.dirs)
        limits = {f.name: f.read_text().strip() for path in dirs for f in path.iterdir()
                  if f.name in ("memory.max", "memory.limit_in_bytes", "pids.max")}
        assert limits["pids.max"] == str(64 + 16)
        memory = limits.get("memory.max", limits.get("memory.limit_in_bytes"))
        assert memory == str((512 + 256 + 256) << 20)
        assert grade_one(pool, make_program(GOOD)).passed
    assert not any(path.exists() for path in dirs)
    assert not any(path.parent.exists() for path in dirs)


# ------------------------------------------------------------------------------- forged passes

WRONG = "def f(x):\n    return x\n"   # fails F_TEST; each forgery below tries to pass anyway
FORGERIES = {
    "sys.exit(0) in body": "import sys\nsys.exit(0)\n",
    "os._exit(0) in body": "import os\nos._exit(0)\n",
    "sys.exit(0) in the tested call": "import sys\ndef f(x):\n    sys.exit(0)\n",
    "atexit os._exit(0)": "import atexit, os\natexit.register(os._exit, 0)\n" + WRONG,
    "atexit then exit": "import atexit, os, sys\natexit.register(os._exit, 0)\nsys.exit(0)\n",
    "fake PASS marker": "print('PASSED'); print('{\"k\": \"done\"}')\nimport sys\n"
                        "sys.stderr.write('all tests passed\\n')\n" + WRONG,
    "forged frames on every fd": (
        "import os, struct, json\nmsg = json.dumps({'k': 'done'}).encode()\n"
        "for fd in range(3, 64):\n    try:\n"
        "        os.write(fd, struct.pack('>I', len(msg)) + msg)\n"
        "    except OSError:\n        pass\nos._exit(0)\n"),
    "close the result channel": "import os\nos.close(3)\n" + WRONG,
    "flip results via gc and frames": (
        "import gc, sys\n"
        "def flip(obj):\n"
        "    if isinstance(obj, list) and obj and all(isinstance(v, bool) for v in obj):\n"
        "        obj[:] = [True] * len(obj)\n"
        "    if isinstance(obj, dict):\n"
        "        for key in [k for k in obj if k in ('passed', 'ok', 'status', 'r')]:\n"
        "            obj[key] = True if key != 'r' else 'ok'\n"
        "for obj in gc.get_objects():\n"
        "    flip(obj)\n"
        "frame = sys._getframe()\n"
        "while frame is not None:\n"
        "    for value in list(frame.f_locals.values()):\n"
        "        flip(value)\n"
        "    frame = frame.f_back\n"
        "for name in [m for m in sys.modules if 'harness' in m or 'verdict' in m]:\n"
        "    sys.modules[name].decide = lambda *a, **k: None\n" + WRONG),
    "patch builtins eval": "import builtins\nbuiltins.eval = lambda *a, **k: 2\n" + WRONG,
    "always-equal object": "class A:\n    __eq__ = lambda s, o: True\n    __hash__ = None\n"
                           "def f(x):\n    return A()\n",
    "int subclass that lies": "class I(int):\n    __eq__ = lambda s, o: True\n"
                              "def f(x):\n    return I(5)\n",
}


@pytest.mark.parametrize("name", list(FORGERIES))
def test_forged_pass_is_refused(sandbox_pool, name):
    grade = grade_one(sandbox_pool, make_program(FORGERIES[name]))
    assert grade.status is not Status.PASSED, grade
    assert grade.test_passed == (False,)
    assert_still_healthy(sandbox_pool)


def test_bool_never_equals_an_int(sandbox_pool):
    tests = (Case("assert f(1) == 1", "f(1)", "1"),)
    grade = grade_one(sandbox_pool, make_program("def f(x):\n    return True\n", tests))
    assert grade.status is Status.FAILED
    assert grade.feedback == "Input: f(1) Output: True Expected: 1"


# ----------------------------------------------------------------------- broken or wedged workers

def _jailed_worker_pid(pool: SandboxPool) -> int:
    """Host pid of the (only) worker's python, the child of its bwrap process."""
    [worker] = pool._live
    with open(f"/proc/{worker.proc.pid}/task/{worker.proc.pid}/children") as fh:
        return int(fh.read().split()[0])


@pytest.mark.parametrize("how", ["killed", "wedged"])
def test_dead_or_wedged_worker_is_replaced_and_the_program_graded_again(how):
    config = SandboxConfig(workers=1, reply_margin_s=1.0)
    with SandboxPool(config) as pool:
        sleeper = make_program("import time\ndef f(x):\n    time.sleep(30)\n", timeout_s=1.0)
        victim = _jailed_worker_pid(pool)
        if how == "killed":
            threading.Timer(0.3, lambda: os.kill(victim, signal.SIGKILL)).start()
        else:
            os.kill(victim, signal.SIGSTOP)
        grade = grade_one(pool, sleeper)
        assert grade.status is Status.TIMEOUT, grade   # the re-run, on a fresh worker
        assert (pool.stats.sandbox_faults, pool.stats.sandbox_faults_final) == (1, 0)
        assert_still_healthy(pool)
        assert _gone(victim), "the failed worker outlived its replacement"


def test_a_program_that_faults_twice_stays_a_sandbox_fault():
    config = SandboxConfig(workers=1, reply_margin_s=1.0)
    with SandboxPool(config) as pool:
        stop = threading.Event()

        def kill_every_worker():   # each worker that starts is killed soon after
            while not stop.wait(0.1):
                for worker in list(pool._live):
                    with contextlib.suppress(OSError, ValueError, IndexError):
                        os.kill(_children_of(worker.proc.pid)[0], signal.SIGKILL)

        killer = threading.Thread(target=kill_every_worker)
        killer.start()
        try:
            sleeper = make_program("import time\ndef f(x):\n    time.sleep(30)\n", timeout_s=2.0)
            grade = grade_one(pool, sleeper)
        finally:
            stop.set()
            killer.join()
        assert grade.status is Status.SANDBOX_FAULT, grade
        assert (pool.stats.sandbox_faults, pool.stats.sandbox_faults_final) == (1, 1)
        assert grade_one(pool, make_program(GOOD)).passed


def _children_of(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(p) for p in fh.read().split()]


def _gone(pid: int, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rpartition(")")[2].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


# -------------------------------------------------------------------------- missing isolation

def test_missing_bwrap_is_an_error_when_isolation_is_required():
    with pytest.raises(RuntimeError, match="bubblewrap not found"):
        SandboxPool(SandboxConfig(workers=1, bwrap="/nonexistent/bwrap"))


def test_missing_bwrap_warns_loudly_when_isolation_is_optional(tmp_path):
    scratch_dirs = set(Path("/tmp").glob("sandbox-worker-*"))
    victim = tmp_path / "open" / "victim.txt"   # writable by anyone: only Landlock protects it
    victim.parent.mkdir(mode=0o777)
    victim.parent.chmod(0o777)
    tmp_path.chmod(0o755)
    victim.write_text("keep me")
    victim.chmod(0o666)
    with pytest.warns(RuntimeWarning, match="SANDBOX NOT ISOLATED"):
        pool = SandboxPool(SandboxConfig(workers=1, bwrap="/nonexistent/bwrap",
                                         require_isolation=False))
    with pool:
        assert not pool.isolated
        assert not pool.mechanisms.bwrap and not pool.mechanisms.namespaces
        assert grade_one(pool, make_program(GOOD)).passed
        assert grade_one(pool, make_program(WRONG)).status is Status.FAILED
        if pool.mechanisms.landlock:
            code = f"import os\ndef f(x):\n    os.remove({str(victim)!r})\n    return x + 1\n"
            grade = grade_one(pool, make_program(code))
            assert grade.status is Status.ERROR and "PermissionError" in grade.feedback, grade
            assert victim.read_text() == "keep me"
            assert grade_one(pool, make_program(GOOD)).passed
    assert set(Path("/tmp").glob("sandbox-worker-*")) == scratch_dirs   # closed cleanly


# ------------------------------------------------------------------ pure parts: values, verdict

Point = collections.namedtuple("Point", "x y")


class Lying(int):
    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


@pytest.mark.parametrize("output, expected, same", [
    (True, 1, False), (1, True, False), (2, 2.0, True), (0.1 + 0.2, 0.3, True),
    ([1, 2], (1, 2), False), ({"a": 1, "b": 2}, {"b": 2, "a": 1}, True), ({1, 2}, {2, 1}, True),
    (float("nan"), float("nan"), False), (10 ** 5000, 10 ** 5000, True), ("\ud800", "\ud800", True),
    (None, 0, False), ([[1, "a"]], [[1, "a"]], True), (b"x", "x", False),
    (collections.Counter("aab"), {"a": 2, "b": 1}, True), (Point(1, 2), (1, 2), True),
    (Lying(5), 6, False), (Lying(5), Lying(5), False),
], ids=lambda v: "bigint" if type(v) is int and v.bit_length() > 64 else None)
def test_strict_equality(output, expected, same):
    assert equal(encode(output), encode(expected)) is same


def test_verdict_needs_start_done_and_a_clean_exit():
    ok, wrong = TestResult(True, Status.PASSED, ""), TestResult(False, Status.FAILED, "no")
    clean = ChildEnd(exit_code=0, signal=None, timed_out=False, cpu_s=0.0)
    good = Run((ok, ok), started=True, done=True, stop=None, corrupt=None, timed_out=False,
               zygote_lost=False)

    def status(end=clean, **changes):
        return decide(2, 1.0, dataclasses.replace(good, **changes), end, 30).status

    assert status() is Status.PASSED
    assert status(results=(ok, wrong)) is Status.FAILED
    assert status(results=(ok,)) is Status.ERROR                   # a test never judged
    assert status(corrupt="x") is Status.ERROR
    assert status(started=False) is Status.SANDBOX_FAULT           # never started
    assert status(done=False) is Status.KILLED                     # no done
    assert status(timed_out=True) is Status.TIMEOUT
    assert status(zygote_lost=True) is Status.KILLED
    assert status(end=None) is Status.KILLED
    crashed = ChildEnd(exit_code=None, signal=signal.SIGSEGV, timed_out=False, cpu_s=0.0)
    assert status(end=crashed) is Status.KILLED
    assert status(end=dataclasses.replace(clean, exit_code=3)) is Status.KILLED
    cpu = ChildEnd(exit_code=None, signal=signal.SIGKILL, timed_out=False, cpu_s=31.0)
    assert status(end=cpu) is Status.TIMEOUT
    stop = {"stage": "test", "kind": "memory", "etype": "MemoryError", "msg": ""}
    assert status(results=(ok,), stop=stop) is Status.MEMORY


def test_the_jail_and_the_engine_share_one_status():
    """One record, no twin: the jail imports sandbox.records itself, and the engine re-exports it."""
    import engine.records
    import sandbox.protocol
    from sandbox.launch import JAIL_MODULES

    assert engine.records.Status is Status is sandbox.protocol.Status
    assert engine.records.Program is sandbox.protocol.Program
    assert "records.py" in JAIL_MODULES


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="sandbox.workers"):
        SandboxConfig(workers=0)
    with pytest.raises(ValueError, match="sandbox.uid"):
        SandboxConfig(uid=0)


# ---------------------------------------------------------------------------------- HumanEval

class _Rename(ast.NodeTransformer):
    def __init__(self, old: str, new: str) -> None:
        self.old, self.new = old, new

    def visit_Name(self, node: ast.Name) -> ast.Name:
        return ast.Name(self.new, node.ctx) if node.id == self.old else node


def humaneval_program(record: dict, solution: str, program_id: str) -> Program:
    """HumanEval's `check(candidate)` -> one TestCase per statement, `candidate` renamed to the
    entry point; the test file's other top-level statements (METADATA, imports) become setup."""
    module = ast.parse(record["test"])
    check = next(n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check")
    setup = ast.unparse([n for n in module.body if n is not check])
    tests = []
    for statement in check.body:
        statement = ast.fix_missing_locations(_Rename("candidate", record["entry_point"])
                                              .visit(statement))
        call = expected = None
        test = getattr(statement, "test", None)
        if (isinstance(statement, ast.Assert) and isinstance(test, ast.Compare)
                and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
            call, expected = ast.unparse(test.left), ast.unparse(test.comparators[0])
        tests.append(Case(ast.unparse(statement), call, expected))
    return Program(program_id, record["prompt"] + solution, tuple(tests), setup, 10.0)


def test_humaneval_canonical_solutions_pass_and_wrong_ones_fail(sandbox_pool, shared_data):
    records = [json.loads(line) for line in open(Path(shared_data) / "humaneval.jsonl")]
    assert len(records) == 164
    right = [humaneval_program(r, r["canonical_solution"], r["task_id"]) for r in records]
    wrong = [humaneval_program(r, "    return None\n", r["task_id"] + "/wrong") for r in records]
    started = time.monotonic()
    grades = sandbox_pool.grade(right + wrong)
    elapsed = time.monotonic() - started
    not_passed = [(g.program_id, g.status.value, g.feedback) for g in grades[:164] if not g.passed]
    assert not_passed == []
    wrongly_passed = [g.program_id for g in grades[164:] if g.passed]
    assert wrongly_passed == []
    assert elapsed < 60, f"328 HumanEval programs took {elapsed:.1f} s"
