# Math notation in docstrings follows the papers.
# ruff: noqa: RUF002
"""Site-level cost of the daemon's update noise: σ_eff and its ε, against references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confide.dp.accountant import SampledGaussian, compose_rdp, rdp_curve
from confide.dp.budget import cumulative_epsilon, round_cost, site_curve, update_cost


def _site_epsilon(*, z: float, rounds: int, s: int, m: int, distributed: bool) -> float:
    """Site-level ε at δ = 1e-5 of ``rounds`` rounds as the ledger composes them."""
    cost = round_cost(
        record=None,
        update=update_cost(
            noise_multiplier=z, sites_survived=s, min_sites=m, distributed=distributed
        ),
        delta=1e-5,
    )
    return cumulative_epsilon([cost] * rounds, delta=1e-5)[1]


def test_effective_noise_multiplier():
    """Fewer survivors shrink σ_eff by √(s/m); extra survivors earn no credit; local is z."""
    kw = {"noise_multiplier": 2.0, "min_sites": 4}
    assert update_cost(sites_survived=1, distributed=True, **kw).effective_noise_multiplier == 1.0
    assert update_cost(sites_survived=9, distributed=True, **kw).effective_noise_multiplier == 2.0
    assert update_cost(sites_survived=1, distributed=False, **kw).effective_noise_multiplier == 2.0


def test_update_epsilon_is_gaussian_rdp():
    """Site-level ε is the RDP of T Gaussian rounds at σ_eff, larger when fewer survive."""
    full = _site_epsilon(z=4.0, rounds=20, s=4, m=4, distributed=True)
    assert full == pytest.approx(compose_rdp([(1.0, 4.0, 20)], 1e-5))
    fewer = _site_epsilon(z=4.0, rounds=20, s=2, m=4, distributed=True)
    assert fewer == pytest.approx(compose_rdp([(1.0, 4.0 * math.sqrt(0.5), 20)], 1e-5))
    assert fewer > full


def test_site_epsilon_matches_opacus(vectors):
    """T rounds of update noise z without secure aggregation cost what Opacus's RDP
    accountant gives for T full-batch Gaussian steps (pinned reference, q = 1)."""
    v = next(e for e in vectors["epsilon"] if e["sample_rate"] == 1.0)
    ours = _site_epsilon(z=v["noise_multiplier"], rounds=v["steps"], s=3, m=3, distributed=False)
    assert ours == pytest.approx(v["rdp_epsilon"], rel=1e-6)


@settings(max_examples=30, deadline=None)
@given(
    z=st.floats(0.1, 20.0),
    m=st.integers(1, 50),
    s=st.integers(1, 80),
    distributed=st.booleans(),
)
def test_site_curve_is_the_gaussian_at_sigma_eff(z, m, s, distributed):
    """One round's site curve is α/(2σ_eff²) with σ_eff = z·√(min(s, m)/m) when distributed,
    z otherwise (the slow reference written out)."""
    sigma = z * math.sqrt(min(s, m) / m) if distributed else z
    upd = update_cost(noise_multiplier=z, sites_survived=s, min_sites=m, distributed=distributed)
    assert upd.effective_noise_multiplier == pytest.approx(sigma, rel=1e-12)
    np.testing.assert_allclose(
        site_curve(upd), rdp_curve(SampledGaussian(1.0, sigma, 1)), rtol=1e-9
    )


def test_no_update_noise_is_infinite_epsilon():
    """z = 0 (clip only) gives an infinite site-level ε."""
    assert math.isinf(_site_epsilon(z=0.0, rounds=1, s=3, m=3, distributed=True))


@pytest.mark.parametrize(
    "kw",
    [
        {"noise_multiplier": -0.1, "sites_survived": 3, "min_sites": 3},
        {"noise_multiplier": math.nan, "sites_survived": 3, "min_sites": 3},
        {"noise_multiplier": 1.0, "sites_survived": 0, "min_sites": 3},
        {"noise_multiplier": 1.0, "sites_survived": 3, "min_sites": 0},
    ],
)
def test_update_cost_refuses_out_of_range(kw):
    """z < 0 or not finite, or s or m below 1, raise ValueError."""
    with pytest.raises(ValueError):
        update_cost(distributed=True, **kw)
