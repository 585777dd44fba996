# Math notation in docstrings follows the papers.
# ruff: noqa: RUF002
"""Accountant front door: σ for ε never overshoots, agrees with Opacus, and RDP composition."""

from __future__ import annotations

import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confide.dp.accountant import (
    AccountantKind,
    SampledGaussian,
    compose_rdp,
    epsilon,
    noise_multiplier_for,
)


@pytest.mark.parametrize("case", range(4))
def test_noise_multiplier_matches_opacus_within_one_percent(vectors, case):
    """σ for a target ε is within 1% of Opacus's get_noise_multiplier (pinned values)."""
    v = vectors["noise_multiplier"][case]
    ours = noise_multiplier_for(
        kind=AccountantKind(v["accountant"]),
        target_epsilon=v["target_epsilon"],
        sample_rate=v["sample_rate"],
        steps=v["steps"],
        delta=v["delta"],
    )
    assert ours == pytest.approx(v["noise_multiplier"], rel=0.01)


def test_noise_multiplier_matches_live_opacus(opacus_accountants):
    """σ for ε=2 at q=0.02, T=500 agrees with a live Opacus get_noise_multiplier call."""
    _, utils = opacus_accountants
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = utils.get_noise_multiplier(
            target_epsilon=2.0, target_delta=1e-5, sample_rate=0.02, steps=500, accountant="rdp"
        )
    ours = noise_multiplier_for(
        kind=AccountantKind.RDP, target_epsilon=2.0, sample_rate=0.02, steps=500, delta=1e-5
    )
    assert ours == pytest.approx(theirs, rel=0.01)


@settings(max_examples=10, deadline=None)
@given(
    target=st.floats(0.3, 20.0),
    q=st.floats(1e-3, 1.0),
    steps=st.integers(1, 2000),
    kind=st.sampled_from(list(AccountantKind)),
)
def test_noise_multiplier_never_overshoots(target, q, steps, kind):
    """The returned σ always gives ε <= target, and within tolerance of it."""
    z = noise_multiplier_for(
        kind=kind, target_epsilon=target, sample_rate=q, steps=steps, delta=1e-5
    )
    eps = epsilon(kind=kind, sample_rate=q, noise_multiplier=z, steps=steps, delta=1e-5)
    assert eps <= target
    assert target - eps <= 0.01 or z < 1e-6


def test_noise_multiplier_rejects_bad_target():
    """A non-positive or infinite target raises ValueError."""
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError):
            noise_multiplier_for(
                kind=AccountantKind.RDP, target_epsilon=bad, sample_rate=0.1, steps=10, delta=1e-5
            )


def test_compose_rdp_equals_single_run_when_split():
    """Two runs of T/2 steps compose to exactly the ε of one run of T steps."""
    whole = epsilon(
        kind=AccountantKind.RDP, sample_rate=0.01, noise_multiplier=1.0, steps=1000, delta=1e-5
    )
    split = compose_rdp([(0.01, 1.0, 400), SampledGaussian(0.01, 1.0, 600)], 1e-5)
    assert split == pytest.approx(whole, rel=1e-12)


def test_compose_rdp_is_tighter_than_summing_epsilons():
    """Composing curves of heterogeneous rounds gives less than the sum of per-round ε."""
    entries = [(0.01, 1.0, 100), (1.0, 5.0, 3), (0.05, 2.0, 50)]
    each = sum(compose_rdp([e], 1e-5) for e in entries)
    assert 0 < compose_rdp(entries, 1e-5) < each
    assert compose_rdp([], 1e-5) == 0.0


def test_prv_is_tighter_than_rdp():
    """On the MNIST setting the PRV ε is below the RDP ε."""
    args = {"sample_rate": 256 / 60000, "noise_multiplier": 1.1, "steps": 14062, "delta": 1e-5}
    assert epsilon(kind=AccountantKind.PRV, **args) < epsilon(kind=AccountantKind.RDP, **args)
