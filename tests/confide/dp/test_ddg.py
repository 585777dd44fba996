# Math notation follows Kairouz, Liu, Steinke 2021.
# ruff: noqa: RUF002, RUF003
"""The distributed discrete Gaussian's accounting against the paper's formulas (computed here
independently), its continuous limit, and the grid it picks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confide.dp.budget import (
    RoundCost,
    cumulative_epsilon,
    discrete_update_cost,
    record_curve,
    round_cost,
    site_curve,
    update_cost,
)
from confide.dp.ddg import (
    DEFAULT_BETA,
    DEFAULT_WRAP_PROBABILITY,
    MIN_LEVELS,
    ddg_params,
    ddg_rdp,
    rounded_norm_bound_sq,
    scaled_rdp,
    sum_tau,
    wrap_probability,
)
from confide.dp.rdp import DEFAULT_ORDERS


def _tau(sigma: float, n: int) -> float:
    """τ of Theorem 1 / Proposition 14, term by term."""
    return 10.0 * sum(math.exp(-2.0 * math.pi**2 * sigma**2 * k / (k + 1)) for k in range(1, n))


def _prop14(alpha: float, *, l2: float, l1: float, sigma: float, n: int, d: int) -> float:
    """Proposition 14's bound on D_α(Z ‖ Z + Δ), written out from the paper."""
    tau = _tau(sigma, n)
    a = alpha * l2**2 / (2 * n * sigma**2) + tau * d
    b = alpha / 2 * (l2**2 / (n * sigma**2) + 2 * l1 * tau / (math.sqrt(n) * sigma) + tau**2 * d)
    c = alpha / 2 * (l2 / (math.sqrt(n) * sigma) + tau * math.sqrt(d)) ** 2
    return min(a, b, c)


def test_rounded_norm_bound_is_theorem_1():
    """Δ₂² = min{c² + d/4 + √(2 ln 1/β)(c + √d/2), (c + √d)²}, worked by hand."""
    # c = 10, d = 16, β = e^-1/2: min{100 + 4 + 1·(10 + 2), 14²} = min{116, 196}.
    assert rounded_norm_bound_sq(norm=10, dim=16, beta=DEFAULT_BETA) == pytest.approx(116.0)
    assert rounded_norm_bound_sq(norm=10, dim=16, beta=0.0) == 196.0
    # A tiny β makes the first bound exceed the sure one, which then applies.
    assert rounded_norm_bound_sq(norm=1, dim=1, beta=1e-300) == 4.0
    with pytest.raises(ValueError):
        rounded_norm_bound_sq(norm=1, dim=1, beta=1.0)


@pytest.mark.parametrize(("sigma", "n"), [(0.5, 2), (0.5, 50), (1.0, 10), (3.0, 100)])
def test_tau_is_the_papers_sum(sigma, n):
    """τ = 10 Σ_{k<n} exp(−2π²σ²k/(k+1)); it vanishes for one summand."""
    assert sum_tau(sigma=sigma, summands=n) == pytest.approx(_tau(sigma, n), rel=1e-12)
    assert sum_tau(sigma=sigma, summands=1) == 0.0
    with pytest.raises(ValueError):
        sum_tau(sigma=0.4, summands=2)


@pytest.mark.parametrize(
    ("l2", "l1", "sigma", "n", "d"),
    [
        (1.0, 1.0, 0.5, 10, 4),  # large τ: the first term wins at small α
        (3.0, 9.0, 0.6, 5, 64),
        (2.0, 4.0, 0.55, 3, 1),
        (40.0, 400.0, 2.0, 20, 1024),  # τ ~ 1e-33: the Gaussian's curve
    ],
)
def test_rdp_is_proposition_14(l2, l1, sigma, n, d):
    """The accountant's curve equals Proposition 14 computed term by term at every order."""
    got = ddg_rdp(l2_sensitivity=l2, l1_sensitivity=l1, sigma=sigma, summands=n, dim=d)
    want = [_prop14(a, l2=l2, l1=l1, sigma=sigma, n=n, d=d) for a in DEFAULT_ORDERS]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_every_term_of_proposition_14_is_used():
    """Each of the three terms is the accountant's value somewhere, so none is dropped or
    mistyped (the third wins only for an L1 bound looser than √d·‖Δ‖₂, which the ledger's
    Δ₁ = Δ₂·min(√d, Δ₂) never is)."""
    winners = set()
    cases = [(1.0, 1.0, 0.5, 10, 4), (0.2, 0.2, 0.6, 4, 1), (1.0, 10.0, 0.6, 5, 4)]
    for l2, l1, sigma, n, d in cases:
        tau = _tau(sigma, n)
        got = ddg_rdp(l2_sensitivity=l2, l1_sensitivity=l1, sigma=sigma, summands=n, dim=d)
        for a, value in zip(DEFAULT_ORDERS, got, strict=True):
            s_n = math.sqrt(n) * sigma
            terms = [
                a * l2**2 / (2 * s_n**2) + tau * d,
                a / 2 * (l2**2 / s_n**2 + 2 * l1 * tau / s_n + tau**2 * d),
                a / 2 * (l2 / s_n + tau * math.sqrt(d)) ** 2,
            ]
            assert value == pytest.approx(min(terms), rel=1e-12)
            winners.add(int(np.argmin(terms)))
    assert winners == {0, 1, 2}


def test_curve_is_within_theorem_1s_concentrated_dp():
    """ρ(α) <= α·ε²/2 with Theorem 1's ε = min{√(Δ²/(nσ²) + 2τd), Δ/(√n σ) + τ√d}."""
    l2, l1, sigma, n, d = 3.0, 9.0, 0.6, 5, 64
    tau = _tau(sigma, n)
    eps = min(
        math.sqrt(l2**2 / (n * sigma**2) + 2 * tau * d),
        l2 / (math.sqrt(n) * sigma) + tau * math.sqrt(d),
    )
    curve = ddg_rdp(l2_sensitivity=l2, l1_sensitivity=l1, sigma=sigma, summands=n, dim=d)
    assert np.all(curve <= np.asarray(DEFAULT_ORDERS) * eps**2 / 2 + 1e-12)


def test_at_tau_zero_it_is_the_gaussian():
    """Without τ every term is α·ℓ₂²/2, the Gaussian mechanism's RDP at σ_eff = 1/ℓ₂."""
    curve = scaled_rdp(l2_scale=0.5, l1_scale=7.0, tau=0.0, dim=100)
    np.testing.assert_allclose(curve, np.asarray(DEFAULT_ORDERS) * 0.25 / 2)


@pytest.mark.parametrize(
    ("z", "m", "t", "d"), [(1.0, 5, 3, 62), (0.5, 10, 7, 1000), (2.0, 3, 3, 4096)]
)
def test_the_continuous_gaussian_is_the_limit(z, m, t, d):
    """On a fine grid the discrete mechanism's ε is the continuous one's at σ_eff = z√(t/m),
    never below it (rounding only inflates the sensitivity)."""
    p = ddg_params(clip_norm=1.0, noise_std=z / math.sqrt(m), dim=d, max_summands=65537)
    cost = round_cost(record=None, update=discrete_update_cost(p, summands=t), delta=1e-5)
    gauss = update_cost(noise_multiplier=z, sites_survived=t, min_sites=m, distributed=True)
    cont = round_cost(record=None, update=gauss, delta=1e-5).update_epsilon
    assert cost.update_epsilon == pytest.approx(cont, rel=1e-4)
    assert cost.update_epsilon >= cont


def test_a_coarse_grid_costs_more_than_the_gaussian():
    """With σ = 1 on the grid and many summands, τ and the rounding make ε visibly larger."""
    p = ddg_params(clip_norm=1.0, noise_std=0.3, dim=64, max_summands=4)
    coarse = type(p)(
        clip_norm=1.0,
        granularity=0.3,
        sigma=1,
        dim=64,
        beta=p.beta,
        norm_bound_sq=math.floor(rounded_norm_bound_sq(norm=1 / 0.3, dim=64, beta=p.beta)),
        max_summands=4,
    )
    fine = round_cost(record=None, update=discrete_update_cost(p, summands=20), delta=1e-5)
    rough = round_cost(record=None, update=discrete_update_cost(coarse, summands=20), delta=1e-5)
    assert rough.update_epsilon > 1.5 * fine.update_epsilon


def test_site_and_record_curves_use_proposition_14():
    """The ledger's site curve is Proposition 14 with (Δ₂, Δ₁) and its record curve with
    (2Δ₂, 2Δ₁), for t summands of the grid's σ."""
    p = ddg_params(clip_norm=1.0, noise_std=0.02, dim=16, max_summands=4)
    coarse = type(p)(
        clip_norm=1.0,
        granularity=0.02,
        sigma=1,
        dim=16,
        beta=p.beta,
        norm_bound_sq=math.floor(rounded_norm_bound_sq(norm=50.0, dim=16, beta=p.beta)),
        max_summands=4,
    )
    t = 6
    upd = discrete_update_cost(coarse, summands=t)
    l2, l1 = coarse.l2_sensitivity, coarse.l1_sensitivity
    site = [_prop14(a, l2=l2, l1=l1, sigma=1, n=t, d=16) for a in DEFAULT_ORDERS]
    rec = [_prop14(a, l2=2 * l2, l1=2 * l1, sigma=1, n=t, d=16) for a in DEFAULT_ORDERS]
    np.testing.assert_allclose(site_curve(upd), site, rtol=1e-9)
    np.testing.assert_allclose(record_curve(None, upd), rec, rtol=1e-9)


def test_fewer_summands_cost_more():
    """Planning with fewer survivors never charges less (more shares only add noise)."""
    p = ddg_params(clip_norm=1.0, noise_std=0.4, dim=100, max_summands=100)
    eps = [
        round_cost(
            record=None, update=discrete_update_cost(p, summands=n), delta=1e-5
        ).update_epsilon
        for n in (2, 3, 5, 10)
    ]
    assert eps == sorted(eps, reverse=True)


def test_no_noise_is_infinite_epsilon():
    """z = 0 (clip only) charges ε = ∞ on the site level."""
    p = ddg_params(clip_norm=1.0, noise_std=0.0, dim=10, max_summands=10)
    assert p.sigma == 0
    cost = round_cost(record=None, update=discrete_update_cost(p, summands=3), delta=1e-5)
    assert math.isinf(cost.update_epsilon)
    total = cumulative_epsilon([cost, cost], delta=1e-5)
    assert math.isinf(total[1])
    assert isinstance(cost, RoundCost)


@settings(max_examples=80, deadline=None)
@given(
    clip=st.floats(1e-3, 1e3),
    z=st.floats(0.0, 20.0),
    m=st.integers(1, 1000),
    d=st.integers(1, 1 << 24),
    bits=st.integers(2, 30),
)
def test_the_grid_never_overshoots_its_range(clip, z, m, d, bits):
    """For any job the chosen grid keeps the wrap bound, the planned noise std and the int64
    exactness of the rounding test, or is refused as too coarse (never with b >= 16)."""
    n_max = ((1 << 32) - 1) // ((1 << bits) - 1)
    std = z * clip / math.sqrt(m)
    try:
        p = ddg_params(clip_norm=clip, noise_std=std, dim=d, max_summands=n_max)
    except ValueError:
        assert bits < 16
        return
    assert clip / p.granularity >= MIN_LEVELS
    assert p.dim >= d and p.dim & (p.dim - 1) == 0 and p.dim < 2 * d
    assert wrap_probability(p, summands=n_max) <= DEFAULT_WRAP_PROBABILITY
    assert wrap_probability(p, summands=max(1, n_max // 2)) <= DEFAULT_WRAP_PROBABILITY
    assert (clip / p.granularity + math.sqrt(p.dim)) ** 2 <= 2.0**62
    want = rounded_norm_bound_sq(norm=clip / p.granularity, dim=p.dim, beta=p.beta)
    assert p.norm_bound_sq == math.floor(want)
    if std > 0:
        assert p.sigma >= 1
        assert p.noise_std >= std * (1 - 1e-12)
        if p.sigma > 1:
            assert p.noise_std == pytest.approx(std, rel=1e-12)


def test_a_coarse_grid_is_refused():
    """Sums of up to 2^24 sites leave a 62-parameter model too few grid steps: refused."""
    with pytest.raises(ValueError, match="steps across"):
        ddg_params(clip_norm=1.0, noise_std=0.1, dim=62, max_summands=(1 << 24) + 1)
