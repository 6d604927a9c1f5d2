"""Live progress: plain periodic lines off a terminal (CI, ray job logs), a heartbeat while a
batch is in flight, and the structured event log."""
from __future__ import annotations

import io
import json
import os
import pty
import time

from engine.run import runlog
from engine.run.runlog import Progress


def test_plain_progress_is_periodic_and_never_quiet(tmp_path):
    runlog.set_event_log(tmp_path / "events.jsonl")
    out = io.StringIO()
    try:
        p = Progress("grades", total=100, stream=out, interval_s=0.3)
        for _ in range(50):                 # 50 quick items: one line at most, not fifty
            p.update()
        quick = out.getvalue().splitlines()
        time.sleep(1.2)                     # a batch in flight: the heartbeat speaks
        beat = out.getvalue().splitlines()[len(quick):]
        p.update(50)
        p.finish()
    finally:
        runlog.set_event_log(None)
    lines = out.getvalue().splitlines()
    assert quick[0] == "[grades] 0/100 items started" and len(quick) <= 2
    assert beat and all("still working" in b for b in beat)
    assert lines[-1].startswith("[grades] 100/100 items") and "ETA 0s" in lines[-1]
    time.sleep(0.7)                         # finished: the heartbeat has stopped
    assert out.getvalue().splitlines() == lines
    events = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events][:2] == ["start", "update"]
    assert events[-1]["event"] == "end" and events[-1]["done"] == 100
    assert sum(e["event"] == "update" for e in events) == 51   # every item, not every line


def test_a_terminal_gets_a_bar(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(out, "isatty", lambda: True)
    p = Progress("attempts", total=4, stream=out)
    p.update(4)
    p.finish()
    assert "attempts" in out.getvalue() and "4/4" in out.getvalue()


def test_a_terminal_of_no_size_still_gets_a_bar():
    """A pty nobody sized (`script`, some `docker exec -t`) reports 0 x 0; tqdm then draws
    nothing at all unless it is given a size."""
    master, slave = pty.openpty()
    with open(slave, "w") as stream:
        p = Progress("attempts", total=4, stream=stream)
        p.update(4)
        p.finish()
    os.set_blocking(master, False)
    text = os.read(master, 65536).decode()
    os.close(master)
    assert "attempts" in text and "4/4" in text
