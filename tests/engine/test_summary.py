"""The run summary record: the document on disk, read back field for field."""
import json

import pytest

from engine.summary import (
    AttemptCounts,
    OnlineRound,
    PersonalStats,
    RunSummary,
    TeacherCounts,
    TeacherSummary,
)


def counts(**kw) -> TeacherCounts:
    base = dict(calls=2, samples=8, cached=1, prompt_tokens=100, completion_tokens=50,
                cost_usd=0.0, extraction_failed=0, unchanged=3, verified=2, this_run={})
    return TeacherCounts(**{**base, **kw})


def test_sections_a_run_never_reached_are_absent_and_it_reads_back(tmp_path):
    s = RunSummary(run_dir=str(tmp_path), dataset="persd-combined")
    s.attempts = AttemptCounts(tasks=3, samples=3, passed=1, failed=2)
    s.teacher = TeacherSummary(model="m", identity="id", price_per_mtok=[0.0, 0.0],
                               refine=counts(verified_by_round=[1, 1]), stand=counts(),
                               calls_sent_this_run=4, spent_usd_this_run=0.0)
    s.personalisation = {"persd": PersonalStats(1, {"text": 0.9, "tokens": None, "ast": 1.0},
                                                None, 0.3, None, 0)}
    s.online = [OnlineRound(0, 3, 3, 0.3333, 2, 1, 1, 1, "a", "aid", {"pass@1": 0.5})]
    s.datasets = {"persd-combined": 4}
    doc = json.loads(json.dumps(s.to_json()))
    assert "pass_after" not in doc and "eval" not in doc          # never reached
    assert "verified_by_round" not in doc["teacher"]["stand"]
    assert doc["teacher"]["refine"]["verified_by_round"] == [1, 1]
    s.write(tmp_path)
    back = RunSummary.load(tmp_path)
    assert back == s
    assert back.examples() == 4 and back.examples("stand") == 0


def test_an_unknown_field_is_an_error():
    with pytest.raises(ValueError, match="unknown fields"):
        RunSummary.from_json({"run_dir": "r", "dataset": "d", "surprise": 1})
