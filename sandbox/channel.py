"""The worker's end of one program's child: its three pipes, the zygote's reports, its clock.

`Channel` asks the zygote for a child, queues frames to it (the program, then operations; see
harness.py), hands the judge the child's messages one at a time, keeps what the child prints (up
to a cap, the rest is read and dropped so the child never blocks on it), and says how the child
ended (`finish`). Every wait ends at the program's deadline with `TimedOut`; the child going
away mid-answer is `Gone`; bytes that are not frames are `Corrupt`. All three are `Abort`: they
end the judging of the program, and the verdict (verdict.py) says what it means.

Waking the worker for every answer cost more than the rest of its work on a short program, so
once the child has every operation it will get (its input is closed), the result pipe (1 MiB)
is read every DRAIN_S or when something else wakes the worker (the child's exit, its output);
a child that fills it waits at most DRAIN_S for room. Only operations that depend on an answer
(judge.py) are waited for one by one.

Runs in the jail: stdlib and orjson only.
"""
from __future__ import annotations

import collections
import fcntl
import os
import select
import time
from contextlib import suppress
from typing import Any

from sandbox.protocol import FrameDecoder, ProtocolError, encode_frame
from sandbox.verdict import ChildEnd
from sandbox.zygote import Zygote

RESULT_BYTES = 32 << 20       # most bytes a child may send on the result channel per program
RESULT_PIPE_BYTES = 1 << 20   # capacity asked for the result pipe (F_SETPIPE_SZ; the default max)
DRAIN_S = 0.05                # s between reads of the result pipe once the child's input is closed
KILL_GRACE_S = 5.0            # s to wait for the zygote's report after killing a child


class Abort(BaseException):
    """Ends the judging of one program (BaseException: test code cannot catch it)."""


class TimedOut(Abort):
    pass


class Gone(Abort):
    pass


class Corrupt(Abort):
    pass


class Channel:
    """Made (and its child forked) before the program is known: the child confines itself
    and waits for its input while the worker is between requests. `start` sets the clock."""

    def __init__(self, zygote: Zygote, output_cap: int) -> None:
        self.zygote = zygote
        self.deadline = float("inf")
        self.output_cap = output_cap
        input_r, self.input_w = os.pipe()
        self.result_r, result_w = os.pipe()
        self.output_r, output_w = os.pipe()
        with suppress(OSError):   # refused past the user's pipe quota: 64 KiB, then it waits
            fcntl.fcntl(result_w, fcntl.F_SETPIPE_SZ, RESULT_PIPE_BYTES)
        try:
            zygote.fork(input_r, result_w, output_w)
            self.zygote_lost = False
        except OSError:
            self.zygote_lost = True
        for fd in (input_r, result_w, output_w):
            os.close(fd)
        for fd in (self.input_w, self.result_r, self.output_r):
            os.set_blocking(fd, False)
        self.end: tuple[int, float] | None = None   # (wait status, CPU s) from the zygote
        self.fork_errno: int | None = None
        self.timed_out = False
        self.finished = False
        self.grace = time.monotonic()
        self.pending = bytearray()     # frames for the child not yet written
        self.closing = False           # close its input once `pending` is written
        self.decoder = FrameDecoder(max_total=RESULT_BYTES)
        self.inbox: collections.deque = collections.deque()
        self.output = bytearray()
        self.open = {self.result_r, self.output_r}   # our read ends not yet at EOF
        self.zfd = zygote.sock.fileno()
        self.poller = select.poll()   # registered once: cheaper per wait than select()
        for fd in (self.result_r, self.output_r, self.zfd):
            self.poller.register(fd, select.POLLIN)
        self.watching_results = True
        self.watching_input = False

    # ------------------------------------------------------------------------ for the judge

    def start(self, timeout_s: float) -> None:
        self.deadline = time.monotonic() + timeout_s

    def send(self, frame: Any) -> None:
        """Write a frame to the child; what the pipe cannot take now goes when it can."""
        if self.input_w >= 0 and not self.closing:
            self.pending += encode_frame(frame)
            self._flush()
            if self.pending and not self.watching_input:
                self.poller.register(self.input_w, select.POLLOUT)
                self.watching_input = True

    def close_input(self) -> None:
        self.closing = True
        self._flush()

    def next(self) -> Any:
        """The child's next message; raises TimedOut, Gone or Corrupt."""
        self._flush()
        while not self.inbox:
            if self.result_r not in self.open or self.fork_errno is not None or self.zygote_lost:
                raise Gone("the program ended before it answered")
            self._pump(self.deadline, interactive=not self.closing)
        return self.inbox.popleft()

    # ----------------------------------------------------------------------- for the worker

    def finish(self, kill: bool) -> ChildEnd | None:
        """Close the child's input (or kill it), wait for it to end and read what it left;
        None if the zygote stopped answering (the worker must retire)."""
        self.finished = True
        self.closing = True
        self._flush()
        if self.input_w >= 0 and (kill or self.pending):
            self._close_input_now()   # a child that does not read its input gets no more
        killed = kill and self._kill()
        until = self.grace if killed else self.deadline
        while self.end is None and not self.zygote_lost and self.fork_errno is None:
            try:
                self._pump(until, False)
            except TimedOut:
                if killed:   # killed and still no report: the zygote is stuck
                    self.zygote_lost = True
                    break
                self.timed_out = killed = self._kill()
                until = self.grace
        while self.open:
            self._read_all()
            if self.open:
                select.select(list(self.open), [], [], 0.01)
        for fd in (self.result_r, self.output_r):
            os.close(fd)
        if self.zygote_lost:
            return None
        if self.end is None:   # the fork failed: no child ever ran
            return ChildEnd(exit_code=None, signal=None, timed_out=False, cpu_s=0.0)
        status, cpu_s = self.end
        return ChildEnd(
            exit_code=os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else None,
            signal=os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            timed_out=self.timed_out, cpu_s=cpu_s)

    # ------------------------------------------------------------------------------ internals

    def _kill(self) -> bool:
        """Have the zygote kill the child's process group; True, for chaining."""
        self.grace = time.monotonic() + KILL_GRACE_S
        if self.end is None:
            self.zygote.kill()
        return True

    def _pump(self, deadline: float, interactive: bool) -> None:
        """Wait for one event or DRAIN_S (until `deadline`) and handle what is ready."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimedOut
        if interactive != self.watching_results and self.result_r in self.open:
            self.poller.modify(self.result_r, select.POLLIN if interactive else 0)
            self.watching_results = interactive
        wait = remaining if interactive else min(remaining, DRAIN_S)
        for fd, _ in self.poller.poll(wait * 1000 + 1):
            if fd == self.input_w:
                self._flush()
            elif fd == self.zfd:
                self._zygote_message()
            else:
                self._read(fd)
        if not interactive:
            self._read_all(results_only=True)

    def _zygote_message(self) -> None:
        kind, fields = self.zygote.receive()
        if kind == "E":
            self.end = fields
        elif kind == "X":
            self.fork_errno = fields[0]
        else:
            self.zygote_lost = True
        self.poller.unregister(self.zfd)   # nothing more for this program

    def _flush(self) -> None:
        if self.input_w < 0:
            return
        if not self.pending and not self.closing:
            return
        while self.pending:
            try:
                written = os.write(self.input_w, self.pending)
            except BlockingIOError:
                return
            except OSError:   # the child closed its end (or died): it gets nothing more
                self.pending.clear()
                break
            del self.pending[:written]
        if not self.pending and self.watching_input:
            self.poller.unregister(self.input_w)
            self.watching_input = False
        if self.closing:
            self._close_input_now()

    def _close_input_now(self) -> None:
        self.pending.clear()
        if self.watching_input:
            self.poller.unregister(self.input_w)
            self.watching_input = False
        os.close(self.input_w)
        self.input_w = -1

    def _read_all(self, results_only: bool = False) -> None:
        for fd in (self.result_r,) if results_only else tuple(self.open):
            while fd in self.open and self._read(fd):
                pass

    def _read(self, fd: int) -> bool:
        """Read one chunk; False at EOF or when the pipe is empty."""
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return False
        if not data:
            self.open.discard(fd)
            self.poller.unregister(fd)
            if fd == self.result_r and self.decoder.pending:
                self.inbox.append({"k": "corrupt", "why": "the result channel ended mid-frame"})
            return False
        if fd == self.output_r:
            self.output += data[: max(self.output_cap - len(self.output), 0)]
        else:
            try:
                self.inbox.extend(self.decoder.feed(data))
            except ProtocolError as exc:
                self.open.discard(fd)   # nothing after a broken frame can be trusted to align
                self.poller.unregister(fd)
                self.inbox.append({"k": "corrupt", "why": str(exc)})
                return False
        return True
