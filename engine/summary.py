"""The run summary as records: what `run_distill` returns and `summary.json` holds.

The pipeline fills a `RunSummary` stage by stage; `to_json()` is the document on disk (a section a
run never reached is absent, not null) and `RunSummary.load(run_dir)` reads one back, so the CLI
headline, the report and the quality table read fields, not string keys. Mappings keyed by data
(pass@k names, dataset names, stage names) stay mappings.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path


@dataclass(frozen=True)
class AttemptCounts:
    """Stages 1-2: the student's attempts at the training tasks."""

    tasks: int
    samples: int
    passed: int
    failed: int


@dataclass(frozen=True)
class TeacherCounts:
    """One teacher stage (refine rounds, or StanD): what was asked, answered and verified."""

    calls: int                # requests answered (a request asks for n samples)
    samples: int              # answers used
    cached: int               # ... of which came from the teacher cache
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float           # every answer used, at list price
    extraction_failed: int    # answers without a code block
    unchanged: int            # refinements that were the code the teacher was shown
    verified: int             # answers that pass the task's tests
    this_run: dict            # engine.teacher.Usage of this invocation: failures by reason
    verified_by_round: list[int] | None = None   # refine only


@dataclass(frozen=True)
class TeacherSummary:
    model: str
    identity: str             # the endpoint's identity (a local teacher: its weights' hash)
    price_per_mtok: list[float]
    refine: TeacherCounts
    stand: TeacherCounts
    calls_sent_this_run: int  # requests that reached the endpoint in this invocation
    spent_usd_this_run: float


@dataclass(frozen=True)
class PersonalStats:
    """One dataset's personalisation (engine/stages/personal.py): similarity of each target to the
    student's own attempt, and of the StanD answer and the reference for comparison."""

    examples: int
    target_vs_attempt: dict[str, float | None]   # by measure: text, tokens, ast
    stand_vs_attempt: float | None
    reference_vs_attempt: float | None
    closer_than_stand: float | None               # share of examples, over `with_stand`
    with_stand: int


@dataclass(frozen=True)
class StudentInfo:
    model: str
    model_id: str             # content hash of the weights actually sampled


@dataclass(frozen=True)
class EvalInfo:
    tasks: int
    n: int
    set: str
    without_samples: int


@dataclass(frozen=True)
class OnlineRound:
    """One row of the online table (round 0 is the first pass)."""

    round: int
    tasks: int
    attempts: int
    train_pass_rate: float
    failures: int
    verified_attempts: int    # attempts with a verified refinement
    new_examples: int
    dataset_size: int
    adapter: str
    adapter_id: str
    pass_after: dict[str, float]


@dataclass
class RunSummary:
    """Filled by the pipeline as its stages finish; sections a run did not reach stay None."""

    run_dir: str
    dataset: str                                   # the dataset the adapter trains on
    decontamination: dict | None = None            # engine/tasks/overlap.py's report
    synthesis: dict | None = None                  # data.synthesize: RUN/synthesis/summary.json
    attempts: AttemptCounts | None = None
    personalisation: dict[str, PersonalStats] | None = None
    teacher: TeacherSummary | None = None
    datasets: dict[str, int] | None = None         # examples per dataset
    student: StudentInfo | None = None
    pass_before: dict[str, float] | None = None
    pass_before_per_round: list[dict[str, float]] | None = None
    adapter: str | None = None
    adapter_id: str | None = None
    pass_after: dict[str, float] | None = None
    pass_after_per_round: list[dict[str, float]] | None = None
    online: list[OnlineRound] | None = None
    sandbox: dict | None = None                    # sandbox.pool.PoolStats
    placement: dict | None = None                  # Ray node of the driver, student actors,
                                                   # sandbox and trainer (engine/cluster.py)
    eval: EvalInfo | None = None
    seconds_per_stage: dict[str, float] = field(default_factory=dict)
    jobs: dict[str, dict] = field(default_factory=dict)   # per stage: reused / computed

    # ------------------------------------------------------------------------------- on disk
    def to_json(self) -> dict:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            out[f.name] = _plain(v)
        return out

    def write(self, run_dir: Path) -> Path:
        """summary.json, atomically."""
        path = Path(run_dir) / "summary.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2))
        os.replace(tmp, path)
        return path

    @classmethod
    def from_json(cls, d: dict) -> RunSummary:
        d = dict(d)
        nested = {"attempts": AttemptCounts, "student": StudentInfo, "eval": EvalInfo}
        for key, rec in nested.items():
            if d.get(key) is not None:
                d[key] = rec(**d[key])
        if d.get("teacher") is not None:
            t = dict(d["teacher"])
            t["refine"], t["stand"] = TeacherCounts(**t["refine"]), TeacherCounts(**t["stand"])
            d["teacher"] = TeacherSummary(**t)
        if d.get("personalisation") is not None:
            d["personalisation"] = {k: PersonalStats(**v) for k, v in d["personalisation"].items()}
        if d.get("online") is not None:
            d["online"] = [OnlineRound(**r) for r in d["online"]]
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"summary.json: unknown fields {unknown}")
        return cls(**d)

    @classmethod
    def load(cls, run_dir: str | Path) -> RunSummary:
        path = Path(run_dir) / "summary.json"
        return cls.from_json(json.loads(path.read_text()))

    # ------------------------------------------------------------------------------- views
    def examples(self, name: str | None = None) -> int:
        """Examples in dataset `name` (default: the one trained on)."""
        return (self.datasets or {}).get(name or self.dataset, 0)


def _plain(v):
    if hasattr(v, "__dataclass_fields__"):
        d = {f.name: _plain(getattr(v, f.name)) for f in fields(v)}
        if isinstance(v, TeacherCounts) and v.verified_by_round is None:
            d.pop("verified_by_round")
        return d
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v
