"""The weighted sums of the sites' hold-out figures (aggregator.eval_sums)."""

from __future__ import annotations

import pytest

from aggregator.eval_sums import EvalSums


def test_the_means_are_weighted_by_each_sites_weight():
    """Two sites of weights 1 and 3 give Σ v·acc / Σ v, and the capped counts add up."""
    s = EvalSums()
    s.add(accuracy=0.5, loss=2.0, weight=1.0, samples=10.0)
    s.add(accuracy=0.9, loss=1.0, weight=3.0, samples=30.0)
    assert s.accuracy == pytest.approx((0.5 + 3 * 0.9) / 4)
    assert s.loss == pytest.approx((2.0 + 3 * 1.0) / 4)
    assert (s.weight, s.samples) == (4.0, 40.0)


def test_no_weight_gives_zero_means_and_a_misspelt_figure_is_refused():
    """Without weighted figures the means are 0 (never a division by zero); a figure under
    a name the sums do not have is a TypeError, not a silently new key."""
    s = EvalSums()
    s.add(accuracy=0.7, loss=0.3, weight=0.0, samples=5.0)
    assert (s.accuracy, s.loss, s.samples) == (0.0, 0.0, 5.0)
    with pytest.raises(TypeError):
        s.add(acc=0.7, loss=0.3, weight=1.0, samples=5.0)  # type: ignore[call-arg]
    with pytest.raises(AttributeError):
        s.acc = 1.0  # type: ignore[attr-defined]
