"""Run store choice: SQLite (WAL, synchronous=FULL; what engine/run/store.py uses) against JSONL done
right (each batch one write of the jobs' records plus a commit line, fsynced; a torn tail is cut
on open), both durable at every commit.

    python benchmarks/bench_store.py --jobs 2000 --records 10

Prints commits/s for batches of 1 and 64 jobs, the time to open a store of that size and find
every job (a resume), and the ratios SQLite / JSONL, all in this one process.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.run.store import RunStore  # noqa: E402


@dataclass(frozen=True)
class Rec:
    job: str
    i: int
    completion: str


class JsonlStore:
    """The JSONL alternative: records then `{"commit": [job ids]}`, fsynced per batch; on open,
    only records followed by their commit line count, and a torn tail is truncated."""

    def __init__(self, path: Path):
        self.path = path
        self.index: dict[str, list[bytes]] = {}
        if path.exists():
            pending: dict[str, list[bytes]] = {}
            good = 0
            with open(path, "rb") as f:
                for line in f:
                    if not line.endswith(b"\n"):
                        break
                    rec = orjson.loads(line)
                    if "commit" in rec:
                        for j in rec["commit"]:
                            self.index[j] = pending.pop(j, [])
                        good = f.tell()
                    else:
                        pending.setdefault(rec["job"], []).append(line)
            os.truncate(path, good)
        self.f = open(path, "ab")

    def commit(self, jobs: list[tuple[str, list[Rec]]]) -> None:
        data = b"".join(orjson.dumps(r) + b"\n" for _, recs in jobs for r in recs)
        data += orjson.dumps({"commit": [j for j, _ in jobs]}) + b"\n"
        self.f.write(data)
        self.f.flush()
        os.fsync(self.f.fileno())
        for j, recs in jobs:
            self.index[j] = [orjson.dumps(r) for r in recs]

    def lookup(self, job: str) -> list[bytes] | None:
        return self.index.get(job)


def make_jobs(n: int, records: int) -> list[tuple[str, list[Rec]]]:
    text = "def f(x):\n    return x + 1\n" * 12  # ~340 bytes, an attempt's size
    return [(f"task/{j}", [Rec(f"task/{j}", i, text) for i in range(records)]) for j in range(n)]


def bench(jobs, batch: int, root: Path) -> dict[str, float]:
    out = {}
    for kind in ("sqlite", "jsonl"):
        d = root / f"{kind}-{batch}"
        d.mkdir()
        store = RunStore(d) if kind == "sqlite" else JsonlStore(d / "s.jsonl")
        t0 = time.perf_counter()
        for i in range(0, len(jobs), batch):
            chunk = jobs[i:i + batch]
            if kind == "sqlite":
                store.commit("s", [(j, "fp", recs) for j, recs in chunk])
            else:
                store.commit(chunk)
        out[f"{kind} commits/s"] = len(jobs) / batch / (time.perf_counter() - t0)
        if kind == "sqlite":
            store.close()
        t0 = time.perf_counter()
        store = RunStore(d) if kind == "sqlite" else JsonlStore(d / "s.jsonl")
        found = sum((store.lookup("s", j, "fp") if kind == "sqlite" else store.lookup(j))
                    is not None for j, _ in jobs)
        assert found == len(jobs)
        out[f"{kind} resume s"] = time.perf_counter() - t0
        if kind == "sqlite":
            store.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--records", type=int, default=10, help="records per job (n samples)")
    args = ap.parse_args()
    jobs = make_jobs(args.jobs, args.records)
    print(f"{args.jobs} jobs x {args.records} records, load {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        for batch in (1, 64):
            r = bench(jobs[: 300 if batch == 1 else None], batch, Path(tmp))
            print(f"batch {batch:>3}: " + ", ".join(f"{k} {v:.3g}" for k, v in r.items())
                  + f"; commits/s sqlite/jsonl {r['sqlite commits/s'] / r['jsonl commits/s']:.2f}"
                  f"x, resume sqlite/jsonl {r['sqlite resume s'] / r['jsonl resume s']:.2f}x")


if __name__ == "__main__":
    main()
