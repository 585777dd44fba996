# Math notation in docstrings follows the papers.
# ruff: noqa: RUF002
"""RDP accountant: agreement with Opacus, a slow numerical reference, and invariants."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate
from scipy.stats import norm

from confide.dp.rdp import DEFAULT_ORDERS, epsilon_from_rdp, rdp
from tests.confide.dp.conftest import STANDARD


def _eps(q: float, z: float, t: int, delta: float) -> float:
    curve = rdp(sample_rate=q, noise_multiplier=z, steps=t)
    return epsilon_from_rdp(orders=DEFAULT_ORDERS, rdp=curve, delta=delta)[0]


@pytest.mark.parametrize(("q", "z", "t", "delta"), STANDARD)
def test_matches_opacus_rdp_within_one_percent(opacus_accountants, q, z, t, delta):
    """ε from our RDP accountant is within 1% of Opacus's RDPAccountant on standard settings."""
    acc, _ = opacus_accountants
    ref = acc.RDPAccountant()
    ref.history = [(z, q, t)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = ref.get_epsilon(delta=delta)
    ours = _eps(q, z, t, delta)
    assert ours == pytest.approx(theirs, rel=0.01)
    assert ours <= theirs * (1 + 1e-9)  # a superset of orders can only tighten


@pytest.mark.parametrize("case", range(4))
def test_matches_pinned_vectors(vectors, case):
    """ε matches the Opacus values pinned in tests/vectors/dp_reference.json within 1%."""
    v = vectors["epsilon"][case]
    ours = _eps(v["sample_rate"], v["noise_multiplier"], v["steps"], v["delta"])
    assert ours == pytest.approx(v["rdp_epsilon"], rel=0.01)


@pytest.mark.parametrize("q", [0.001, 0.01, 0.3])
@pytest.mark.parametrize("z", [0.8, 1.5, 4.0])
@pytest.mark.parametrize("alpha", [1.1, 1.5, 2.0, 3.7, 8.0, 12.5])
def test_matches_numerical_integration(q, z, alpha):
    """The per-step RDP equals log E_{μ0}[(μ1/μ0)^α]/(α-1) computed by slow quadrature."""
    ours = rdp(sample_rate=q, noise_multiplier=z, steps=1, orders=[alpha])[0]

    def integrand(x: float) -> float:
        ratio = 1 - q + q * math.exp((2 * x - 1) / (2 * z * z))
        return float(norm.pdf(x, 0, z)) * ratio**alpha

    a, _ = integrate.quad(integrand, -30 * z, 30 * z + 1, points=[0, 1], limit=400)
    assert ours == pytest.approx(math.log(a) / (alpha - 1), rel=1e-6, abs=1e-12)


def test_edge_cases():
    """q=0 costs nothing, σ=0 costs everything, q=1 is the Gaussian α/(2σ²), T scales."""
    assert np.all(rdp(sample_rate=0.0, noise_multiplier=1.0, steps=10) == 0)
    assert np.all(np.isinf(rdp(sample_rate=0.1, noise_multiplier=0.0, steps=1)))
    g = rdp(sample_rate=1.0, noise_multiplier=2.0, steps=3, orders=[2.0, 5.5])
    assert g == pytest.approx([3 * 2.0 / 8, 3 * 5.5 / 8])
    one = rdp(sample_rate=0.05, noise_multiplier=1.2, steps=1)
    assert rdp(sample_rate=0.05, noise_multiplier=1.2, steps=7) == pytest.approx(7 * one)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sample_rate": -0.1, "noise_multiplier": 1.0, "steps": 1},
        {"sample_rate": 1.1, "noise_multiplier": 1.0, "steps": 1},
        {"sample_rate": 0.1, "noise_multiplier": -1.0, "steps": 1},
        {"sample_rate": 0.1, "noise_multiplier": 1.0, "steps": -1},
        {"sample_rate": 0.1, "noise_multiplier": 1.0, "steps": 1, "orders": [1.0]},
    ],
)
def test_rejects_out_of_range(kwargs):
    """Out-of-range q, σ, T or orders raise ValueError."""
    with pytest.raises(ValueError):
        rdp(**kwargs)


def test_conversion_rejects_bad_delta_and_lengths():
    """epsilon_from_rdp refuses δ outside (0, 1) and mismatched lengths."""
    with pytest.raises(ValueError):
        epsilon_from_rdp(orders=[2.0], rdp=[1.0], delta=1.0)
    with pytest.raises(ValueError):
        epsilon_from_rdp(orders=[2.0, 3.0], rdp=[1.0], delta=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    q=st.floats(1e-4, 1.0),
    z=st.floats(0.5, 10.0),
    factor=st.floats(1.01, 3.0),
    t=st.integers(1, 5000),
)
def test_epsilon_decreases_in_sigma_and_increases_in_steps(q, z, factor, t):
    """More noise never raises ε, and more steps never lower it."""
    base = _eps(q, z, t, 1e-5)
    assert _eps(q, z * factor, t, 1e-5) <= base + 1e-12
    assert _eps(q, z, t + 1 + t // 3, 1e-5) >= base - 1e-12
