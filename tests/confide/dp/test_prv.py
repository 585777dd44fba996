# Math notation in docstrings follows the papers.
# ruff: noqa: RUF002
"""PRV accountant: agreement with Opacus's PRVAccountant, its own bounds, and special cases."""

from __future__ import annotations

import warnings

import pytest

from confide.dp.prv import prv_epsilon, prv_epsilon_bounds
from confide.dp.rdp import DEFAULT_ORDERS, epsilon_from_rdp, rdp
from tests.confide.dp.conftest import STANDARD


@pytest.mark.parametrize(("q", "z", "t", "delta"), STANDARD)
def test_matches_opacus_prv_within_one_percent(opacus_accountants, q, z, t, delta):
    """ε from our PRV accountant is within 1% of Opacus's PRVAccountant on standard settings."""
    acc, _ = opacus_accountants
    ref = acc.PRVAccountant()
    ref.history = [(z, q, t)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = ref.get_epsilon(delta=delta)
    ours = prv_epsilon(sample_rate=q, noise_multiplier=z, steps=t, delta=delta)
    assert ours == pytest.approx(theirs, rel=0.01)


@pytest.mark.parametrize("case", range(4))
def test_matches_pinned_vectors(vectors, case):
    """ε matches the Opacus PRV values pinned in tests/vectors/dp_reference.json within 1%."""
    v = vectors["epsilon"][case]
    ours = prv_epsilon(
        sample_rate=v["sample_rate"],
        noise_multiplier=v["noise_multiplier"],
        steps=v["steps"],
        delta=v["delta"],
    )
    assert ours == pytest.approx(v["prv_epsilon"], rel=0.01)


@pytest.mark.parametrize(("q", "z", "t", "delta"), STANDARD)
def test_bounds_bracket_estimate_and_beat_rdp(q, z, t, delta):
    """lower <= estimate <= upper, upper - lower is within 2.5·eps_error, and upper <= RDP's ε."""
    b = prv_epsilon_bounds(sample_rate=q, noise_multiplier=z, steps=t, delta=delta)
    assert b.lower <= b.estimate <= b.upper
    assert b.upper - b.lower <= 2.5 * 0.01
    rdp_eps = epsilon_from_rdp(
        orders=DEFAULT_ORDERS, rdp=rdp(sample_rate=q, noise_multiplier=z, steps=t), delta=delta
    )[0]
    assert b.upper <= rdp_eps


def test_smaller_eps_error_tightens():
    """A smaller eps_error narrows the bracket around the same estimate."""
    coarse = prv_epsilon_bounds(sample_rate=0.02, noise_multiplier=1.0, steps=200, delta=1e-5)
    fine = prv_epsilon_bounds(
        sample_rate=0.02, noise_multiplier=1.0, steps=200, delta=1e-5, eps_error=0.002
    )
    assert fine.upper - fine.lower < coarse.upper - coarse.lower
    assert fine.estimate == pytest.approx(coarse.estimate, abs=0.01)


def test_special_cases():
    """No steps or q=0 cost nothing, σ=0 costs everything, q=1 is the exact Gaussian."""
    assert prv_epsilon(sample_rate=0.1, noise_multiplier=1.0, steps=0, delta=1e-5) == 0.0
    assert prv_epsilon(sample_rate=0.0, noise_multiplier=1.0, steps=9, delta=1e-5) == 0.0
    assert prv_epsilon(sample_rate=0.1, noise_multiplier=0.0, steps=9, delta=1e-5) == float("inf")
    # One Gaussian with μ = 1 at ε = 0 has δ = 2Φ(1/2) - 1 ≈ 0.3829 (Balle & Wang 2018).
    assert prv_epsilon(sample_rate=1.0, noise_multiplier=1.0, steps=1, delta=0.383) == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sample_rate": 1.5},
        {"noise_multiplier": -1.0},
        {"steps": -2},
        {"delta": 0.0},
        {"delta": 1.0},
        {"eps_error": 0.0},
    ],
)
def test_rejects_out_of_range(kwargs):
    """Out-of-range parameters raise ValueError."""
    args = {"sample_rate": 0.1, "noise_multiplier": 1.0, "steps": 10, "delta": 1e-5, **kwargs}
    with pytest.raises(ValueError):
        prv_epsilon(**args)
