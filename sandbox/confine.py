"""Per-program confinement in the forked child: a seccomp syscall filter and a Landlock ruleset.

The worker builds both once (`Confinement.build` before it drops root, so it can open every path
it allows; `allow_workdir` after), tries each in a throwaway child (`probe`), and then every
program's child applies them with two calls, `restrict_files` (Landlock) and `filter_syscalls`
(seccomp, the last thing before the program runs). A mechanism whose probe fails is reported
(Hello -> pool.mechanisms, a loud warning, an error for seccomp when isolation is required) and
not applied.

seccomp: a classic BPF program built here (no libseccomp). Denied with EPERM, so the program sees
`PermissionError: [Errno 1] Operation not permitted` and the grade is an ordinary ERROR with that
feedback (a kill would read as KILLED and hide why):
    new processes   fork, vfork, clone without CLONE_THREAD or with any CLONE_NEW* flag;
                    clone3 gets ENOSYS instead, so glibc falls back to clone for threads
    new programs    execve, execveat           (so `subprocess` and `os.system` fail: intended)
    network         socket, connect, bind, listen, accept, accept4
                    (socketpair stays: asyncio's event loop needs it, and a pair reaches nothing)
    other processes ptrace, process_vm_readv/writev, pidfd_getfd
    namespaces      unshare, setns, mount, umount2, pivot_root, chroot, the new mount API
    kernel          kexec_load, kexec_file_load, bpf, perf_event_open, keyctl, add_key,
                    request_key, userfaultfd, io_uring_* (io_uring operations bypass seccomp)
Killed instead (SECCOMP_RET_KILL_PROCESS): a syscall made with another architecture's
convention (AUDIT_ARCH mismatch, e.g. `int 0x80` on x86_64) or an x32 number: an ABI switch is
how filters keyed on syscall numbers are evaded, and no Python program makes one by accident.
Supported: x86_64 and aarch64; any other machine reports seccomp as unavailable.

Landlock (ABI from landlock_create_ruleset(..., LANDLOCK_CREATE_RULESET_VERSION)): read and
execute on the paths the worker is given (system dirs, the Python prefix, our modules, /proc),
read-write on a few /dev files, everything on the program's own working directory, nothing
anywhere else. ABI >= 4: no TCP bind or connect at all. ABI >= 6: no signals to processes outside
the program's domain (the worker) and no abstract unix sockets outside it.

Runs in the jail: stdlib only.
"""
from __future__ import annotations

import ctypes
import errno
import os
import socket
import stat
import struct
import threading
from contextlib import suppress

# ------------------------------------------------------------------------------------- seccomp

PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
RET_KILL_PROCESS, RET_ERRNO, RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
LD_W_ABS, JEQ_K, JGE_K, JSET_K, RET_K = 0x20, 0x15, 0x35, 0x45, 0x06   # BPF opcodes
NR_OFFSET, ARCH_OFFSET, ARG0_OFFSET = 0, 4, 16   # struct seccomp_data; arg0's low word (LE)
CLONE_THREAD = 0x00010000
CLONE_NEW_ANY = 0x7E020000   # CLONE_NEW{NS,CGROUP,UTS,IPC,USER,PID,NET}
X32_SYSCALL_BIT = 0x40000000

DENIED = (
    "fork", "vfork", "execve", "execveat",
    "socket", "connect", "bind", "listen", "accept", "accept4",
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd",
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot",
    "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "kexec_load", "kexec_file_load", "bpf", "perf_event_open", "keyctl", "add_key",
    "request_key", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
)
# machine -> (AUDIT_ARCH_*, syscall numbers); checked against the kernel's uapi headers
ARCHES = {
    "x86_64": (0xC000003E, {
        "fork": 57, "vfork": 58, "execve": 59, "execveat": 322, "clone": 56, "clone3": 435,
        "socket": 41, "connect": 42, "bind": 49, "listen": 50, "accept": 43, "accept4": 288,
        "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "pidfd_getfd": 438,
        "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155,
        "chroot": 161, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
        "fsmount": 432, "fspick": 433, "mount_setattr": 442, "kexec_load": 246,
        "kexec_file_load": 320, "bpf": 321, "perf_event_open": 298, "keyctl": 250,
        "add_key": 248, "request_key": 249, "userfaultfd": 323, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427}),
    "aarch64": (0xC00000B7, {   # asm-generic numbering; no fork/vfork syscalls exist
        "execve": 221, "execveat": 281, "clone": 220, "clone3": 435,
        "socket": 198, "connect": 203, "bind": 200, "listen": 201, "accept": 202, "accept4": 242,
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "pidfd_getfd": 438,
        "unshare": 97, "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41,
        "chroot": 51, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
        "fsmount": 432, "fspick": 433, "mount_setattr": 442, "kexec_load": 104,
        "kexec_file_load": 294, "bpf": 280, "perf_event_open": 241, "keyctl": 219,
        "add_key": 217, "request_key": 218, "userfaultfd": 282, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427}),
}


def seccomp_program(machine: str) -> bytes:
    """The filter as packed `struct sock_filter`s; ValueError on an unsupported machine."""
    if machine not in ARCHES:
        raise ValueError(f"no seccomp syscall table for machine {machine!r}")
    audit_arch, numbers = ARCHES[machine]
    deny = RET_ERRNO | errno.EPERM
    code = [(LD_W_ABS, 0, 0, ARCH_OFFSET), (JEQ_K, 1, 0, audit_arch),
            (RET_K, 0, 0, RET_KILL_PROCESS), (LD_W_ABS, 0, 0, NR_OFFSET)]
    if machine == "x86_64":
        code += [(JGE_K, 0, 1, X32_SYSCALL_BIT), (RET_K, 0, 0, RET_KILL_PROCESS)]
    for name in DENIED:
        if name in numbers:
            code += [(JEQ_K, 0, 1, numbers[name]), (RET_K, 0, 0, deny)]
    code += [(JEQ_K, 0, 1, numbers["clone3"]), (RET_K, 0, 0, RET_ERRNO | errno.ENOSYS)]
    code += [
        (JEQ_K, 0, 5, numbers["clone"]),    # not clone: jump to the final allow
        (LD_W_ABS, 0, 0, ARG0_OFFSET),      # clone flags (the low word holds them all)
        (JSET_K, 2, 0, CLONE_NEW_ANY),      # any new namespace: deny
        (JSET_K, 0, 1, CLONE_THREAD),       # a thread: allow; a process: deny
        (RET_K, 0, 0, RET_ALLOW),
        (RET_K, 0, 0, deny),
        (RET_K, 0, 0, RET_ALLOW),
    ]
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in code)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


# ------------------------------------------------------------------------------------ landlock

SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446   # x86_64 and aarch64
CREATE_RULESET_VERSION, RULE_PATH_BENEATH = 1, 1
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15   # ABI 2, 3, 5
FS_ON_FILES = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
READ_ONLY = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1                    # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1         # ABI 6
DEVICES = {"/dev/null": FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE,
           "/dev/zero": FS_READ_FILE, "/dev/random": FS_READ_FILE, "/dev/urandom": FS_READ_FILE}


def _fs_rights(abi: int) -> int:
    """Every filesystem right this ABI knows (all handled: what no rule grants is denied)."""
    rights = (1 << 13) - 1   # ABI 1: EXECUTE .. MAKE_SYM
    for since, right in ((2, FS_REFER), (3, FS_TRUNCATE), (5, FS_IOCTL_DEV)):
        if abi >= since:
            rights |= right
    return rights


class Confinement:
    """Both mechanisms, prepared once per worker; `restrict_files` / `filter_syscalls` per child."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)   # own instance: its restypes are ours
        self._libc.syscall.restype = ctypes.c_long
        self.landlock_abi = 0
        self.landlock_error = "not built"
        self.seccomp_error = "not built"
        self._ruleset_fd = -1
        self._filter = None   # keeps the BPF buffer alive for the lifetime of the worker
        self._fprog = None

    @classmethod
    def build(cls, read_paths: tuple[str, ...]) -> Confinement:
        """Filter and ruleset; run it as root, so every allowed path can be opened."""
        self = cls()
        try:
            program = seccomp_program(os.uname().machine)
            self._filter = ctypes.create_string_buffer(program, len(program))
            self._fprog = _SockFprog(len(program) // 8, ctypes.addressof(self._filter))
            self.seccomp_error = ""
        except ValueError as exc:
            self.seccomp_error = str(exc)
        try:
            self._ruleset_fd = self._landlock_ruleset(read_paths)
            self.landlock_error = ""
        except OSError as exc:
            self.landlock_error = f"{exc.strerror or exc}"
        return self

    def allow_workdir(self, workdir: str) -> None:
        """Give the programs' working directory every right (after the worker dropped root)."""
        if not self.landlock_error:
            try:
                self._add_rule(self._ruleset_fd, workdir, _fs_rights(self.landlock_abi), True)
            except OSError as exc:
                self.landlock_error = f"{exc.strerror or exc}"

    # ---------------------------------------------------------------- in every program's child

    def restrict_files(self) -> None:
        """Enter the Landlock domain (no-op if Landlock is unavailable); raises OSError."""
        if self.landlock_error:
            return
        if self._libc.syscall(ctypes.c_long(SYS_RESTRICT_SELF), ctypes.c_int(self._ruleset_fd),
                              ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")

    def filter_syscalls(self) -> None:
        """Install the seccomp filter (no-op if unavailable); raises OSError."""
        if self.seccomp_error:
            return
        if self._libc.prctl(PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), ctypes.c_ulong(0),
                            ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if self._libc.prctl(PR_SET_SECCOMP, ctypes.c_ulong(SECCOMP_MODE_FILTER),
                            ctypes.byref(self._fprog), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")

    # ------------------------------------------------------------- once, in the worker at start

    def probe(self, workdir: str, outside: str) -> None:
        """Check each mechanism in a throwaway child; a failure disables it, with the reason.

        `outside`: a writable directory outside `workdir` that Landlock must close."""
        if not self.seccomp_error:
            self.seccomp_error = _in_child(self._probe_seccomp)
        if not self.landlock_error:
            self.landlock_error = _in_child(lambda: self._probe_landlock(workdir, outside))

    def _probe_seccomp(self) -> str:
        self.filter_syscalls()
        problems = []
        try:
            if os.fork() == 0:
                os._exit(0)
            problems.append("fork() was not blocked")
        except PermissionError:
            pass
        try:
            socket.socket().close()
            problems.append("socket() was not blocked")
        except PermissionError:
            pass
        ran = []
        thread = threading.Thread(target=ran.append, args=(1,))
        thread.start()
        thread.join()
        if ran != [1]:
            problems.append("threads do not run")
        return "; ".join(problems)

    def _probe_landlock(self, workdir: str, outside: str) -> str:
        self.restrict_files()
        problems = []
        try:
            open(os.path.join(outside, ".landlock-probe"), "w").close()
            problems.append(f"{outside} stays writable")
        except PermissionError:
            pass
        inside = os.path.join(workdir, ".landlock-probe")
        try:
            open(inside, "w").close()
            os.unlink(inside)
        except OSError as exc:
            problems.append(f"the working directory is not writable ({exc})")
        if self.landlock_abi >= 4:
            with socket.socket() as sock:
                try:
                    sock.connect(("127.0.0.1", 9))
                    problems.append("a TCP connect went through")
                except PermissionError:
                    pass
                except OSError as exc:
                    problems.append(f"a TCP connect was not stopped by Landlock ({exc})")
        return "; ".join(problems)

    def _landlock_ruleset(self, read_paths: tuple[str, ...]) -> int:
        syscall = self._libc.syscall
        abi = syscall(ctypes.c_long(SYS_CREATE_RULESET), None, ctypes.c_size_t(0),
                      ctypes.c_uint32(CREATE_RULESET_VERSION))
        if abi < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"kernel has no Landlock ({errno.errorcode.get(code, code)})")
        self.landlock_abi = abi
        handled_fs = _fs_rights(abi)
        handled_net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
        scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
        # struct landlock_ruleset_attr; an older kernel accepts the larger struct if the fields
        # it does not know are zero, which they are for its ABI
        attr = ctypes.create_string_buffer(struct.pack("=QQQ", handled_fs, handled_net, scoped))
        fd = syscall(ctypes.c_long(SYS_CREATE_RULESET), attr, ctypes.c_size_t(24),
                     ctypes.c_uint32(0))
        if fd < 0:
            raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
        try:
            rules = [(path, READ_ONLY) for path in read_paths] + list(DEVICES.items())
            for path, access in rules:
                self._add_rule(fd, path, access & handled_fs, required=False)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _add_rule(self, ruleset_fd: int, path: str, access: int, required: bool) -> None:
        try:
            path_fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except FileNotFoundError:
            if required:
                raise
            return   # e.g. /lib64 on a machine without it
        try:
            if not stat.S_ISDIR(os.fstat(path_fd).st_mode):
                access &= FS_ON_FILES
            attr = ctypes.create_string_buffer(struct.pack("=Qi", access, path_fd))  # packed
            if self._libc.syscall(ctypes.c_long(SYS_ADD_RULE), ctypes.c_int(ruleset_fd),
                                  ctypes.c_int(RULE_PATH_BENEATH), attr, ctypes.c_uint32(0)) != 0:
                raise OSError(ctypes.get_errno(), f"landlock_add_rule({path}) failed")
        finally:
            os.close(path_fd)


def _in_child(check) -> str:
    """Run `check` (-> problems, "" if none) in a forked child; its answer, or why there is none."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            answer = check()
        except BaseException as exc:   # the child must never return into the worker's loop
            answer = f"{type(exc).__name__}: {exc}"
        with suppress(BaseException):
            os.write(write_fd, answer.encode("utf-8", "replace")[:1000] or b"-")
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as answer_pipe:
        answer = answer_pipe.read().decode("utf-8", "replace")
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return f"the probe was killed by signal {os.WTERMSIG(status)}"
    if not answer:
        return f"the probe exited with status {status} without an answer"
    return "" if answer == "-" else answer
