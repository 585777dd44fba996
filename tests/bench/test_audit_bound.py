"""The one-run audit's ε lower bound (Steinke, Nasr, Jagielski 2023) on synthetic guesses."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import expit

from bench.audit_bound import audit, epsilon_lower_bound, guess_counts, p_value


def _p_value_reference(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """The theorem's right-hand side with exact binomial sums (slow, small r only)."""
    p = float(expit(eps))

    def f(u: int) -> float:  # P[Binomial(r, p) >= u]
        return sum(math.comb(r, j) * p**j * (1 - p) ** (r - j) for j in range(max(u, 0), r + 1))

    alpha = max(((f(v - i) - f(v)) / i for i in range(1, v + 1)), default=0.0)
    return min(1.0, f(v) + 2 * m * delta * alpha)


@pytest.mark.parametrize(
    ("m", "r", "v", "eps", "delta"),
    [
        (10, 10, 10, 1.0, 0.0),
        (20, 12, 9, 0.5, 1e-3),
        (50, 30, 30, 2.0, 1e-2),
        (40, 20, 3, 0.0, 0.1),
    ],
)
def test_p_value_matches_the_exact_sum(m, r, v, eps, delta):
    """The vectorised p-value equals the theorem's bound summed term by term."""
    got = p_value(canaries=m, guesses=r, correct=v, epsilon=eps, delta=delta)
    assert got == pytest.approx(_p_value_reference(m, r, v, eps, delta), rel=1e-9, abs=1e-15)


def test_perfect_guesses_give_a_bound_that_grows_with_the_canaries():
    """With every guess right, more canaries prove a larger ε (and a positive one)."""
    bounds = [
        epsilon_lower_bound(
            canaries=m, guesses=int(0.9 * m), correct=int(0.9 * m), delta=1e-5, significance=0.05
        )
        for m in (100, 1000, 10000)
    ]
    assert bounds[0] > 2.0
    assert bounds[0] < bounds[1] < bounds[2]


def test_random_guesses_give_no_bound_beyond_the_confidence_level():
    """Scores independent of who is in yield ε > 0 in at most about 5% of audits."""
    rng = np.random.default_rng(7)
    found = [
        audit(rng.normal(size=1000), rng.random(1000) < 0.5, delta=1e-5).epsilon for _ in range(200)
    ]
    # Binomial(200, 0.05) exceeds 20 with probability < 0.1%.
    assert sum(e > 0 for e in found) <= 20
    assert float(np.mean(found)) < 0.05


def test_randomized_response_bound_is_valid_and_nearly_tight():
    """Against ε-DP randomized response (the extremal mechanism) the bound rarely exceeds ε and
    typically comes close to it."""
    rng = np.random.default_rng(11)
    eps0, r = 2.0, 1000
    bounds = [
        epsilon_lower_bound(
            canaries=r,
            guesses=r,
            correct=int(rng.binomial(r, expit(eps0))),
            delta=0.0,
            significance=0.05,
        )
        for _ in range(200)
    ]
    assert sum(b > eps0 for b in bounds) <= 20
    assert float(np.median(bounds)) > eps0 - 0.4


def test_delta_weakens_the_bound():
    """The same guesses prove less against (ε, δ)-DP with a larger δ."""

    def bound(delta: float) -> float:
        return epsilon_lower_bound(
            canaries=1000, guesses=200, correct=190, delta=delta, significance=0.05
        )

    def pv(delta: float) -> float:
        return p_value(canaries=1000, guesses=200, correct=190, epsilon=2.0, delta=delta)

    assert bound(1e-3) < bound(0.0)
    assert pv(1e-4) > pv(0.0)


def test_a_delta_too_large_for_the_canaries_proves_nothing():
    """When 2mδ exceeds the significance level even perfect guesses bound nothing."""
    assert epsilon_lower_bound(
        canaries=1000, guesses=1000, correct=1000, delta=1e-3, significance=0.05
    ) < epsilon_lower_bound(canaries=1000, guesses=1000, correct=1000, delta=0.0, significance=0.05)
    assert (
        epsilon_lower_bound(canaries=100, guesses=2, correct=2, delta=0.1, significance=0.05) == 0.0
    )


@pytest.mark.parametrize(
    "kw",
    [
        {"canaries": 10, "guesses": 5, "correct": 6, "epsilon": 1.0, "delta": 0.0},
        {"canaries": 4, "guesses": 5, "correct": 1, "epsilon": 1.0, "delta": 0.0},
        {"canaries": 10, "guesses": 5, "correct": 1, "epsilon": -0.1, "delta": 0.0},
        {"canaries": 10, "guesses": 5, "correct": 1, "epsilon": math.inf, "delta": 0.0},
        {"canaries": 10, "guesses": 5, "correct": 1, "epsilon": 1.0, "delta": 1.5},
    ],
)
def test_p_value_refuses_out_of_range_parameters(kw):
    """Impossible counts, a negative or infinite ε and δ outside [0, 1] raise ValueError."""
    with pytest.raises(ValueError):
        p_value(**kw)


def test_guess_counts_takes_the_top_k_as_in_and_the_bottom_k_as_out():
    """The k highest scores are guessed in and the k lowest out; the middle abstains."""
    scores = np.array([0.9, 0.1, 0.5, 0.8, 0.2, 0.4])
    included = np.array([True, True, False, False, False, True])
    # top 2: indices 0 (in, right) and 3 (out, wrong); bottom 2: 1 (in, wrong), 4 (out, right)
    assert guess_counts(scores, included, k=2) == (4, 2)
    assert guess_counts(scores, included, k=0) == (0, 0)
    with pytest.raises(ValueError):
        guess_counts(scores, included, k=4)


def test_audit_of_separated_scores_reports_the_bonferroni_level_bound():
    """Scores that separate in from out give the perfect-guess bound at β / (number of k)."""
    rng = np.random.default_rng(3)
    included = rng.random(1000) < 0.5
    out = audit(included.astype(float), included, delta=1e-5, fractions=(0.1, 0.9))
    assert out.correct == out.guesses == 900
    assert out.epsilon == pytest.approx(
        epsilon_lower_bound(canaries=1000, guesses=900, correct=900, delta=1e-5, significance=0.025)
    )
