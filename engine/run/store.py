"""The run store: every finished job's records in SQLite, keyed by stage, job id and fingerprint.

Why SQLite (measured against fsynced JSONL in `benchmarks/bench_store.py`): the records of a
batch of jobs commit in one transaction, so a job's records (n samples, n teacher choices) are
visible all together or not at all; a commit is durable when it returns (WAL, synchronous=FULL);
a kill mid-write leaves the last committed state and nothing to repair; the primary key makes a
duplicated record impossible.

A job's *fingerprint* hashes everything that determines its records: the request actually sent
(rendered prompt, sampling, seed), the model's content hash, the adapter's content hash, the
teacher endpoint identity, the program and tests graded. On resume a job is reused only when its
fingerprint matches; a job whose inputs changed is recomputed, and records under old
fingerprints stay in the store (changing a setting back reuses them). Upstream changes flow down
by construction: a recomputed attempt has new code, so its grade's fingerprint changes too.

Users still read plain JSONL: at the end of each stage its current records are exported to
`<stage>.jsonl`, rewritten atomically. The store is the truth; the JSONL files are views.

    store = RunStore(Path("runs/x"))
    recs = store.stage("grades", Grade, attempts, key=lambda a: a.attempt_id,
                       fp=lambda a: fingerprint(a.code), rkey=lambda g: g.program_id,
                       compute=grade_batch)
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import orjson

from common.errors import RunInUse  # noqa: F401 (raised here)
from engine.records import from_dict, from_json, to_json
from engine.run import faults
from engine.run.runlog import Progress

T = TypeVar("T")
R = TypeVar("R")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    stage TEXT NOT NULL,       -- e.g. attempts, grades, refinements, eval-before-attempts
    job   TEXT NOT NULL,       -- the job's stable id (task id, attempt id, refinement id)
    fp    TEXT NOT NULL,       -- fingerprint of everything that determines the records
    data  BLOB NOT NULL,       -- orjson array of the job's records
    t     REAL NOT NULL,       -- unix time of the commit
    PRIMARY KEY (stage, job, fp)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS invocations (t REAL NOT NULL, info BLOB NOT NULL);
"""


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-able parts (dataclasses, dicts, tuples, strings); 32 hex chars."""
    data = orjson.dumps(parts, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.sha256(data).hexdigest()[:32]


class RunStore:
    """One run directory: `run.db` (the store), `run.lock`, and the JSONL views."""

    def __init__(self, path: str | Path, lock: bool = True):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = None
        if lock:  # one driver per run directory: a resume never fights a live run
            self._lock = open(self.path / "run.lock", "a+")
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lock.seek(0)
                holder = self._lock.read().strip() or "another process"
                self._lock.close()
                raise RunInUse(f"run directory {self.path} is in use by {holder}; wait for it "
                               "to end or pick another --run_dir") from None
            self._lock.truncate(0)
            self._lock.write(f"pid {os.getpid()}\n")
            self._lock.flush()
        self.db = sqlite3.connect(self.path / "run.db", isolation_level=None,
                                  check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")   # durable at commit, not just consistent
        self.db.executescript(SCHEMA)
        # one connection shared by the threads of a streaming run: one statement or
        # transaction at a time
        self._db_lock = threading.RLock()
        self.stats: dict[str, dict[str, int]] = {}  # stage -> jobs reused / computed, this process
        self.window: int | None = None   # the window a windowed pass is in (see export)

    def close(self) -> None:
        self.db.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------ metadata

    def get_meta(self, key: str) -> Any:
        with self._db_lock:
            row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return orjson.loads(row[0]) if row else None

    def set_meta(self, key: str, value: Any) -> None:
        with self._db_lock:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                            (key, orjson.dumps(value)))

    def log_invocation(self, info: dict) -> None:
        with self._db_lock:
            self.db.execute("INSERT INTO invocations VALUES (?, ?)",
                            (time.time(), orjson.dumps(info)))

    def invocations(self) -> list[dict]:
        with self._db_lock:
            rows = self.db.execute("SELECT info FROM invocations ORDER BY t").fetchall()
        return [orjson.loads(r[0]) for r in rows]

    # ---------------------------------------------------------------------------------- jobs

    def lookup(self, stage: str, job: str, fp: str) -> list[dict] | None:
        """The job's committed records (decoded JSON), or None if it has none under fp."""
        with self._db_lock:
            row = self.db.execute("SELECT data FROM jobs WHERE stage=? AND job=? AND fp=?",
                                  (stage, job, fp)).fetchone()
        return None if row is None else orjson.loads(row[0])

    def commit(self, stage: str, jobs: Sequence[tuple[str, str, Sequence[object]]]) -> None:
        """(job, fp, records) for each job, in one transaction: all of them or none."""
        if not jobs:
            return
        now = time.time()
        with self._db_lock:
            self._commit(stage, jobs, now)
        faults.point(f"after-commit:{stage}")

    def _commit(self, stage: str, jobs: Sequence[tuple[str, str, Sequence[object]]],
                now: float) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for i, (job, fp, recs) in enumerate(jobs):
                data = b"[" + b",".join(to_json(r) for r in recs) + b"]"
                self.db.execute("INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?, ?)",
                                (stage, job, fp, data, now))
                if i == len(jobs) // 2:
                    faults.point(f"mid-commit:{stage}")  # the transaction is open: rolled back
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def count(self, stage: str) -> int:
        with self._db_lock:
            return self.db.execute("SELECT count(*) FROM jobs WHERE stage=?",
                                   (stage,)).fetchone()[0]

    def stage(self, name: str, cls: type[R], items: Sequence[T], *, key: Callable[[T], str],
              fp: Callable[[T], str], rkey: Callable[[R], str],
              compute: Callable[[list[T]], list[R] | Iterator[list[R]]], batch: int = 64,
              export: bool = True, show: bool = True,
              on_records: Callable[[list[R]], None] | None = None) -> list[R]:
        """Records of every item, in item order: reused where (key, fp) is committed, else
        computed `batch` items at a time and committed as each batch finishes.

        `rkey` maps a computed record to its item's key. An item that yields no record (a
        failed teacher request) commits nothing, so a resumed run computes it again. `compute`
        may return the chunk's records, or an iterator of groups of records (every record of
        a job in one group), each committed as it comes: a kill then loses only unfinished jobs.
        `on_records` sees the reused records at once, then each committed group (a streaming
        pipeline passes them on while the rest computes); `show` False: no progress bar.
        """
        faults.point(f"start:{name}")
        prints = {}
        found: dict[str, list[R]] = {}
        todo: list[T] = []
        for it in items:
            k = key(it)
            if k in prints:
                raise ValueError(f"stage {name}: job id {k!r} appears twice")
            prints[k] = fp(it)
            hit = self.lookup(name, k, prints[k])
            if hit is None:
                todo.append(it)
            else:
                found[k] = [from_dict(cls, x) for x in hit]
        st = self.stats.setdefault(name, {"reused": 0, "computed": 0})
        st["reused"] += len(items) - len(todo)
        st["computed"] += len(todo)
        progress = Progress(name, len(items), already=len(items) - len(todo)) if show else None
        if on_records is not None and found:
            on_records([r for it in items for r in found.get(key(it), ())])
        try:
            for i in range(0, len(todo), batch):
                chunk = todo[i:i + batch]
                asked = {key(it) for it in chunk}
                got = compute(chunk)
                # a list is the chunk's records; an iterator yields groups of finished jobs'
                # records, each committed (and counted) as it arrives
                streamed = not isinstance(got, list)
                for group in got if streamed else [got]:
                    by_job: dict[str, list[R]] = {}
                    for r in group:
                        by_job.setdefault(rkey(r), []).append(r)
                    unknown = set(by_job) - asked
                    if unknown:
                        raise AssertionError(f"stage {name}: records for jobs not asked for: "
                                             f"{sorted(unknown)[:3]}")
                    self.commit(name, [(k, prints[k], recs) for k, recs in by_job.items()])
                    found.update(by_job)
                    if progress is not None:
                        progress.update(len(by_job) if streamed else len(chunk))
                    if on_records is not None:
                        on_records([r for recs in by_job.values() for r in recs])
        finally:
            if progress is not None:
                progress.finish()   # its heartbeat stops whether the stage finished or failed
        out = [r for it in items for r in found.get(key(it), ())]
        if export:
            self.export(name, out)
        return out

    # ------------------------------------------------------------------------ the JSONL views

    def file(self, name: str) -> Path:
        return self.path / f"{name}.jsonl"

    # The views a windowed pass (engine/pipeline/staged.py) writes one part per window: the
    # records of the training pool. Everything else (evaluations) is written whole.
    WINDOWED = frozenset({"attempts", "grades", "refinements", "stand-answers", "verified",
                          "persd", "persd-refine", "persd-combined", "stand", "stand-matched",
                          "inpd", "personalisation"})

    def set_window(self, index: int | None) -> None:
        """From now on, the windowed views are written as part `index` of their view
        (`parts/<name>/<index>.jsonl`) until join_windows(); None: whole files again."""
        self.window = index

    def discard_windows(self) -> None:
        """Drop the parts a killed windowed pass left (a resumed pass writes them again)."""
        import shutil

        self.window = None
        shutil.rmtree(self.path / "parts", ignore_errors=True)

    def join_windows(self) -> list[str]:
        """Each windowed view made whole from its parts, in window order, streamed (never held
        in memory) and atomically replaced; the parts are removed. Returns the views joined."""
        import shutil

        self.window = None
        root = self.path / "parts"
        joined = []
        for d in sorted(root.iterdir()) if root.exists() else []:
            parts = sorted(d.glob("*.jsonl"), key=lambda p: int(p.stem))
            tmp = self.file(d.name).with_suffix(".jsonl.tmp")
            with open(tmp, "wb") as out:
                for p in parts:
                    with open(p, "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.file(d.name))
            joined.append(d.name)
        shutil.rmtree(root, ignore_errors=True)
        return joined

    def export(self, name: str, records: Iterable[object]) -> None:
        """Atomically replace `<name>.jsonl` (in a window: its part): a kill mid-write leaves
        the previous file."""
        if self.window is not None and name in self.WINDOWED:
            part = self.path / "parts" / name / f"{self.window}.jsonl"
            part.parent.mkdir(parents=True, exist_ok=True)
            self._write(part, records, name)
            return
        self._write(self.file(name), records, name)

    def _write(self, path: Path, records: Iterable[object], name: str) -> None:
        tmp = path.with_suffix(".jsonl.tmp")
        with open(tmp, "wb") as f:
            for i, r in enumerate(records):
                f.write(to_json(r) + b"\n")
                if i == 0:
                    faults.point(f"mid-export:{name}")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def read(self, name: str, cls: type[T]) -> list[T]:
        """A JSONL view as records (what a user reading the run directory sees)."""
        return read_view(self.path, name, cls)


def view_lines(path: str | Path) -> Iterator[bytes]:
    """The non-empty lines of a JSONL file, one at a time (nothing if it does not exist): a
    view of any size read in bounded memory."""
    path = Path(path)
    if path.exists():
        with open(path, "rb") as f:
            for line in f:
                if line.strip():
                    yield line


def iter_view(run_dir: str | Path, name: str, cls: type[T]) -> Iterator[T]:
    """A JSONL view as records, one line at a time."""
    return (from_json(cls, line) for line in view_lines(Path(run_dir) / f"{name}.jsonl"))


def read_view(run_dir: str | Path, name: str, cls: type[T]) -> list[T]:
    """A JSONL view of a run directory as records, without opening its store."""
    return list(iter_view(run_dir, name, cls))


def content_hash(path: str | Path) -> str:
    """sha256 over the relative names and bytes of every file under `path` (a model or adapter
    directory); 32 hex chars. Big directories are hashed once per (path, size, mtime) set and
    remembered under the persd cache, so a resumed run does not reread gigabytes of weights."""
    root = Path(path).resolve()
    files = sorted(p for p in root.rglob("*") if p.is_file() and "checkpoint" not in p.parts)
    stat = [(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    memo = None
    if sum(s for _, s, _ in stat) > (64 << 20):
        from engine.models import cache_root

        memo = cache_root() / "content-hashes" / f"{fingerprint(str(root), stat)}.txt"
        if memo.exists():
            return memo.read_text().strip()
    h = hashlib.sha256()
    for p, (rel, _, _) in zip(files, stat):
        h.update(rel.encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        h.update(b"\0")
    digest = h.hexdigest()[:32]
    if memo is not None:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(digest)
        os.replace(tmp, memo)
    return digest
