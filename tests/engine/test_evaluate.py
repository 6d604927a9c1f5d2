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
