# Math notation follows Canonne, Kamath, Steinke 2020.
# ruff: noqa: RUF002
"""The exact discrete Gaussian sampler: known answers from a literal reference of the paper's
algorithms, and its distribution against the exact probability mass function."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from scipy import stats

from confide.dp.discrete import (
    MAX_SIGMA,
    _bernoulli_exp,
    _discrete_gaussian_from_parts,
    _discrete_laplace,
    discrete_gaussian,
)
from tests.confide.dp import dgauss_reference as ref

# Fixed generators throughout: the statistical tests are deterministic (no flaky runs), and
# each threshold below is one an exact sampler passes with probability > 1 - 1e-4.
P_MIN = 1e-4


def _vectors() -> Any:
    return json.loads(ref.VECTORS.read_text("utf-8"))


def _pmf(sigma: float, support: np.ndarray) -> np.ndarray:
    """exp(−x²/(2σ²)) / Σ_y exp(−y²/(2σ²)), the normaliser summed to 40σ (the rest < 1e-300)."""
    span = np.arange(-int(40 * sigma) - 1, int(40 * sigma) + 2)
    norm = math.fsum(np.exp(-(span.astype(np.float64) ** 2) / (2 * sigma**2)))
    return np.exp(-(support.astype(np.float64) ** 2) / (2 * sigma**2)) / norm


def _chi_square_p(samples: np.ndarray, pmf, cut: int) -> float:
    """Goodness of fit on the bins −cut..cut, with both tails pooled into one bin."""
    support = np.arange(-cut, cut + 1)
    expected = pmf(support) * samples.size
    observed = np.array([np.count_nonzero(samples == k) for k in support], dtype=np.float64)
    tail = samples.size - observed.sum()
    expected_tail = samples.size - expected.sum()
    obs = np.append(observed, tail)
    exp = np.append(expected, expected_tail)
    return float(stats.chisquare(obs, exp).pvalue)


def test_the_reference_reproduces_the_known_answers():
    """The literal reference of CKS Algorithms 1-3 gives the pinned samples (the vector file
    says what the paper's algorithm draws from a fixed generator)."""
    for case in _vectors()["cases"]:
        rng = ref.generator(int(case["seed"]))
        got = [ref.discrete_gaussian(int(case["sigma"]), rng) for _ in range(ref.COUNT)]
        assert got == case["samples"]


@pytest.mark.parametrize("case", range(len(ref.SIGMAS) * len(ref.SEEDS)))
def test_the_fast_sampler_draws_what_the_reference_draws(case):
    """One draw per call, the vectorised sampler consumes the generator exactly as the literal
    reference does and returns the same integers (σ from 1 to 2^26)."""
    c = _vectors()["cases"][case]
    rng = ref.generator(int(c["seed"]))
    sigma = int(c["sigma"])
    got = [
        int(_discrete_gaussian_from_parts(sigma=sigma, size=1, rng=rng)[0])
        for _ in range(ref.COUNT)
    ]
    assert got == c["samples"]


def test_vectorised_draws_are_pinned():
    """Many draws in one call give the pinned vectorised samples (regression vectors)."""
    for c in _vectors()["vectorised"]:
        rng = ref.generator(int(c["seed"]))
        got = _discrete_gaussian_from_parts(sigma=int(c["sigma"]), size=ref.COUNT, rng=rng)
        assert got.tolist() == c["samples"]


def test_the_reference_matches_one_at_a_time_for_many_draws():
    """Over 300 consecutive single draws at σ = 2 the two implementations never diverge."""
    a, b = ref.generator(7), ref.generator(7)
    fast = [int(_discrete_gaussian_from_parts(sigma=2, size=1, rng=a)[0]) for _ in range(300)]
    slow = [ref.discrete_gaussian(2, b) for _ in range(300)]
    assert fast == slow


@pytest.mark.parametrize("sigma", [1, 2, 5])
def test_samples_follow_the_exact_pmf(sigma):
    """200k vectorised draws fit N_Z(0, σ²)'s probabilities by a chi-square test."""
    x = _discrete_gaussian_from_parts(sigma=sigma, size=200_000, rng=ref.generator(sigma))
    assert x.dtype == np.int64
    assert _chi_square_p(x, lambda k: _pmf(sigma, k), cut=4 * sigma) > P_MIN


def test_a_wrong_sigma_is_told_apart():
    """The same test rejects σ = 5 draws as N_Z(0, 5.2²): it has the power to catch a slip."""
    x = _discrete_gaussian_from_parts(sigma=5, size=200_000, rng=ref.generator(5))
    assert _chi_square_p(x, lambda k: _pmf(5.2, k), cut=20) < 1e-12


def test_large_sigma_moments():
    """At σ = 224704 (the demo's grid) 1e6 draws have mean 0 and std σ within sampling error,
    and are symmetric."""
    sigma = 224_704
    x = _discrete_gaussian_from_parts(sigma=sigma, size=1_000_000, rng=ref.generator(3))
    se = sigma / math.sqrt(x.size)
    assert abs(float(x.mean())) < 5 * se
    assert float(x.std()) == pytest.approx(sigma, rel=5 * math.sqrt(2 / x.size))
    assert abs(int(np.count_nonzero(x > 0)) - int(np.count_nonzero(x < 0))) < 5 * math.sqrt(x.size)


@pytest.mark.parametrize("t", [1, 3])
def test_discrete_laplace_follows_its_pmf(t):
    """Algorithm 2's draws fit P[Y = y] ∝ exp(−|y|/t)."""
    y = _discrete_laplace(t, 200_000, ref.generator(11 + t))

    def pmf(k: np.ndarray) -> np.ndarray:
        norm = (1 + math.exp(-1 / t)) / (1 - math.exp(-1 / t))
        return np.exp(-np.abs(k) / t) / norm

    assert _chi_square_p(y, pmf, cut=6 * t) > P_MIN


@pytest.mark.parametrize(("num", "den"), [(0, 1), (1, 3), (1, 1), (5, 2), (7, 1), (45, 8)])
def test_bernoulli_exp_has_probability_exp_minus_gamma(num, den):
    """Bernoulli(exp(−γ)) for γ = num/den, below and above 1, succeeds with e^−γ (binomial
    test over 100k draws)."""
    n = 100_000
    whole, frac = divmod(num, den)
    hits = _bernoulli_exp(
        np.full(n, whole, dtype=np.int64), np.full(n, frac, dtype=np.int64), den, ref.generator(1)
    )
    p = math.exp(-num / den)
    if p == 1.0:
        assert hits.all()
        return
    assert stats.binomtest(int(hits.sum()), n, p).pvalue > P_MIN


def test_zero_sigma_is_no_noise_and_bad_arguments_raise():
    """σ = 0 draws zeros; σ out of [0, 2^26], a non-integer σ or a negative size raise."""
    assert not discrete_gaussian(sigma=0, size=5).any()
    assert discrete_gaussian(sigma=3, size=0).shape == (0,)
    for bad in (-1, MAX_SIGMA + 1):
        with pytest.raises(ValueError):
            discrete_gaussian(sigma=bad, size=1)
    with pytest.raises(ValueError):
        discrete_gaussian(sigma=2.5, size=1)
    with pytest.raises(ValueError):
        discrete_gaussian(sigma=True, size=1)
    with pytest.raises(ValueError):
        discrete_gaussian(sigma=1, size=-1)


def test_the_public_sampler_draws_fresh_randomness():
    """Two OS-seeded calls differ (the public form never reuses a seed)."""
    a = discrete_gaussian(sigma=1000, size=64)
    b = discrete_gaussian(sigma=1000, size=64)
    assert not np.array_equal(a, b)
