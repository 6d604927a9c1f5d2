"""pass@k estimator against hand-computed values."""
from __future__ import annotations

from math import comb

import pytest

from engine.evaluate import pass_at_k


@pytest.mark.parametrize("n, c, k", [(10, 0, 1), (10, 3, 1), (10, 3, 5), (5, 5, 2), (20, 1, 10),
                                     (1, 1, 1), (1, 0, 1)])
def test_pass_at_k_matches_the_combinatorial_formula(n, c, k):
    expected = 1 - comb(n - c, k) / comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_hand_values():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)  # 1 - C(2,2)/C(4,2)
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_a_task_without_samples_scores_zero_and_too_few_samples_is_an_error():
    from engine.evaluate import summarise
    from engine.records import EvalResult

    results = [EvalResult("a", None, 2, 2), EvalResult("b", None, 0, 0)]
    assert summarise(results, (1,)) == {"pass@1": 0.5}
    with pytest.raises(ValueError, match="pass@2 of task c: only 1 samples"):
        summarise([EvalResult("c", None, 1, 1)], (2,))


def test_samples_the_executor_broke_on_are_no_verdict():
    """A final SANDBOX_FAULT is neither pass nor fail: not in n, and a task with nothing else
    is left out of the mean; nor is such an attempt a failure the teacher is asked about."""
    from engine.evaluate import summarise
    from engine.records import EvalResult, Grade, Status

    results = [EvalResult("a", None, 1, 1, faulted=1),   # 1 of 2 judged: it passed
               EvalResult("b", None, 0, 0, faulted=2),   # no verdict at all: left out
               EvalResult("c", None, 2, 0)]
    assert summarise(results, (1,)) == {"pass@1": 0.5}
    assert summarise(results, (2,)) == {"pass@2": 0.5}   # a: pass@1 of its one judged sample
    fault = Grade("p", Status.SANDBOX_FAULT, (False,), "Sandbox harness did not start", 0.1)
    wrong = Grade("q", Status.FAILED, (False,), "Input: ...", 0.1)
    assert (fault.passed, fault.failed, fault.faulted) == (False, False, True)
    assert (wrong.passed, wrong.failed, wrong.faulted) == (False, True, False)


def test_a_faulted_attempt_is_not_sent_to_the_teacher():
    from engine.pipeline.staged import Attempts
    from engine.records import Attempt, Grade, Status

    atts = {i: Attempt(i, "t", "", "") for i in ("a", "b", "c")}
    grades = {"a": Grade("a", Status.PASSED, (True,), "", 0.1),
              "b": Grade("b", Status.SANDBOX_FAULT, (False,), "", 0.1),
              "c": Grade("c", Status.TIMEOUT, (False,), "", 0.1)}
    assert [a.attempt_id for a in Attempts(atts, grades).failed] == ["c"]


def test_paired_bootstrap_tells_a_change_from_noise():
    from engine.evaluate import paired_bootstrap

    a = {f"t{i}": float(i % 2) for i in range(100)}
    same = paired_bootstrap(a, dict(a))
    assert same["diff"] == 0 and same["ci95"] == [0, 0] and same["within_noise"]
    better = {t: 1.0 for t in a}                       # +50 points on 100 tasks
    up = paired_bootstrap(a, better)
    assert up["diff"] == 0.5 and not up["within_noise"] and 0.38 < up["ci95"][0] < 0.5
    one_flip = dict(a, t0=1.0)                         # +1 point: noise
    assert paired_bootstrap(a, one_flip)["within_noise"]
    assert paired_bootstrap(a, {"t1": 1.0, "x": 0.0})["tasks"] == 1   # only shared tasks count
    with pytest.raises(ValueError, match="share no task"):
        paired_bootstrap(a, {"x": 1.0})
