# ruff: noqa: RUF002
"""The Gaussian mechanism on hold-out counts: sensitivity, release, clamps and its RDP cost."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from confide.dp.accountant import AccountantKind, epsilon
from confide.dp.budget import RecordCost, cumulative_epsilon, round_cost, update_cost
from confide.dp.evaluation import (
    SENSITIVITY,
    EvalCounts,
    _release_from_parts,
    counts_from_means,
    evaluation_cost,
    release_evaluation,
)

L = 5.0

records = st.lists(
    st.tuples(st.booleans(), st.floats(0.0, 50.0, allow_nan=False)), min_size=1, max_size=40
)


def _vector(rs: list[tuple[bool, float]]) -> np.ndarray:
    """(n, c, S/L) of per-record (correct, loss) with losses clipped to L."""
    return np.array(
        [len(rs), sum(c for c, _ in rs), sum(min(loss, L) for _, loss in rs) / L], dtype=float
    )


@given(records, st.data())
def test_one_record_moves_the_released_vector_by_at_most_sqrt_3(rs, data):
    """Removing any one record moves (n, c, S/L) by at most Δ = √3 in L2 norm."""
    i = data.draw(st.integers(0, len(rs) - 1))
    moved = np.linalg.norm(_vector(rs) - _vector(rs[:i] + rs[i + 1 :]))
    assert moved <= SENSITIVITY + 1e-12


def test_known_noise_draws_give_the_documented_figures():
    """With draws (1, -1, 0.5) and z = 2 the figures follow the post-processing formulas."""
    counts = EvalCounts(num_samples=100, correct=80, loss_sum=40.0)
    std = 2 * math.sqrt(3)
    got = _release_from_parts(counts, noise_multiplier=2.0, loss_clip=L, draws=(1.0, -1.0, 0.5))
    n_hat, c_hat, s_hat = 100 + std, 80 - std, 40.0 / L + 0.5 * std
    assert got.num_samples == round(n_hat)
    assert got.accuracy == pytest.approx(c_hat / n_hat)
    assert got.loss == pytest.approx(L * s_hat / n_hat)
    assert got.noise_multiplier == 2.0


def test_exact_release_is_the_counts_themselves():
    """z = 0 releases c/n, S/n and n; an empty hold-out releases zeros."""
    got = release_evaluation(
        EvalCounts(num_samples=8, correct=6, loss_sum=4.0), noise_multiplier=0.0, loss_clip=L
    )
    assert (got.accuracy, got.loss, got.num_samples) == (0.75, 0.5, 8)
    empty = release_evaluation(EvalCounts(0, 0, 0.0), noise_multiplier=0.0, loss_clip=L)
    assert (empty.accuracy, empty.loss, empty.num_samples) == (0.0, 0.0, 0)


@given(st.floats(-1e6, 1e6, allow_nan=False), st.floats(-1e6, 1e6, allow_nan=False))
def test_figures_stay_in_range_whatever_the_noise(a, b):
    """Noise never pushes accuracy outside [0, 1], loss outside [0, L] or the count below 1."""
    got = _release_from_parts(
        EvalCounts(10, 5, 10.0), noise_multiplier=1.0, loss_clip=L, draws=(a, b, -a)
    )
    assert 0 <= got.accuracy <= 1 and 0 <= got.loss <= L and got.num_samples >= 1


def test_noise_has_std_z_sqrt3_on_each_count():
    """Over many releases the count's noise has std z·√3 (public wrapper, OS randomness)."""
    counts = EvalCounts(num_samples=10_000, correct=5_000, loss_sum=0.0)
    n_hats = [
        release_evaluation(counts, noise_multiplier=3.0, loss_clip=L).num_samples
        for _ in range(4000)
    ]
    assert np.std(n_hats) == pytest.approx(3.0 * math.sqrt(3), rel=0.06)
    assert np.mean(n_hats) == pytest.approx(10_000, abs=0.5)


@pytest.mark.parametrize(
    ("accuracy", "loss", "want_c", "want_s"),
    [
        (5.0, 1.0, 10, 10.0),  # accuracy above 1: c = n
        (-1.0, 1.0, 0, 10.0),
        (float("nan"), float("nan"), 0, 0.0),
        (0.5, 1e9, 5, 50.0),  # loss above L: S = n·L
        (0.5, float("inf"), 5, 0.0),  # non-finite loss: 0
    ],
)
def test_hostile_worker_figures_are_clamped_to_one_hold_out(accuracy, loss, want_c, want_s):
    """Whatever a worker reports, c stays in [0, n] and S in [0, n·L]."""
    got = counts_from_means(accuracy=accuracy, loss=loss, num_samples=10, loss_clip=L)
    assert (got.correct, got.loss_sum) == (want_c, want_s)


def test_cost_is_the_plain_gaussian_at_record_level_only():
    """One evaluation costs the Gaussian mechanism's ε (q = 1, σ = z); nothing site-level."""
    cost = evaluation_cost(noise_multiplier=10.0, delta=1e-5)
    ref = epsilon(
        kind=AccountantKind.RDP, sample_rate=1.0, noise_multiplier=10.0, steps=1, delta=1e-5
    )
    assert cost.evaluation and cost.epsilon == pytest.approx(ref)
    rec, site = cumulative_epsilon([cost] * 6, delta=1e-5)
    six = epsilon(
        kind=AccountantKind.RDP, sample_rate=1.0, noise_multiplier=10.0, steps=6, delta=1e-5
    )
    assert rec == pytest.approx(six) and site == 0.0


def test_evaluations_add_to_a_jobs_record_epsilon_but_not_its_site_epsilon():
    """Composed with rounds, evaluations raise record-level ε and leave site-level ε unchanged."""
    rnd = round_cost(
        record=RecordCost(sample_rate=0.1, noise_multiplier=1.0, steps=50, delta=1e-5),
        update=update_cost(noise_multiplier=1.0, sites_survived=3, min_sites=3, distributed=True),
        delta=1e-5,
    )
    ev = evaluation_cost(noise_multiplier=10.0, delta=1e-5)
    rec0, site0 = cumulative_epsilon([rnd, rnd], delta=1e-5)
    rec1, site1 = cumulative_epsilon([rnd, ev, rnd, ev], delta=1e-5)
    assert rec1 > rec0 and site1 == site0


@pytest.mark.parametrize("z", [0.0, -1.0, math.inf, math.nan])
def test_no_cost_without_finite_positive_noise(z):
    """An evaluation cost needs z > 0 and finite (exact figures have ε = ∞ and no entry)."""
    with pytest.raises(ValueError):
        evaluation_cost(noise_multiplier=z, delta=1e-5)


def test_the_released_count_never_exceeds_a_public_hold_out_size():
    """With the hold-out size public, noise above it is clamped to it (exact releases too)."""
    counts = EvalCounts(num_samples=40, correct=30, loss_sum=20.0)
    up = _release_from_parts(
        counts, noise_multiplier=5.0, loss_clip=L, draws=(3.0, 0.0, 0.0), max_count=40
    )
    down = _release_from_parts(
        counts, noise_multiplier=5.0, loss_clip=L, draws=(-1.0, 0.0, 0.0), max_count=40
    )
    assert up.num_samples == 40 and down.num_samples == round(40 - 5 * math.sqrt(3))
    exact = release_evaluation(counts, noise_multiplier=0.0, loss_clip=L, max_count=35)
    assert exact.num_samples == 35 and exact.accuracy == 0.75
