# Math notation in docstrings follows the papers.
"""Daemon-side update protection: clipping and calibrated noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.stats import chi2

from confide.dp.update import add_noise, clip, noise_std, system_rng
from confide.errors import NonFiniteValue


@settings(max_examples=200, deadline=None)
@given(
    delta=hnp.arrays(
        dtype=st.sampled_from([np.float32, np.float64]),
        shape=hnp.array_shapes(max_dims=3, max_side=20),
        elements=st.floats(-1e6, 1e6, width=32),
    ),
    c=st.floats(1e-6, 1e3),
)
def test_clip_never_exceeds_c(delta, c):
    """The clipped update's L2 norm never exceeds C, in float32 or float64."""
    out, norm = clip(delta, clip_norm=c)
    assert out.shape == delta.shape and out.dtype == delta.dtype
    assert float(np.linalg.norm(out.astype(np.float64).ravel())) <= c
    assert norm == pytest.approx(float(np.linalg.norm(delta.astype(np.float64).ravel())))


def test_clip_leaves_small_updates_alone():
    """An update already inside the ball is returned unchanged."""
    x = np.array([0.3, 0.4], dtype=np.float64)
    out, norm = clip(x, clip_norm=1.0)
    assert norm == pytest.approx(0.5)
    np.testing.assert_array_equal(out, x)


def test_clip_refuses_non_finite_and_bad_c():
    """NaN in the update raises NonFiniteValue; C <= 0 raises ValueError."""
    with pytest.raises(NonFiniteValue):
        clip(np.array([1.0, np.nan]), clip_norm=1.0)
    with pytest.raises(ValueError):
        clip(np.array([1.0]), clip_norm=0.0)


def test_noise_std_distributed_and_local():
    """Distributed shares are z·C/√m so m of them sum to z·C; local noise is z·C."""
    assert noise_std(clip_norm=2.0, noise_multiplier=1.5, min_sites=4, distributed=True) == 1.5
    assert noise_std(clip_norm=2.0, noise_multiplier=1.5, min_sites=4, distributed=False) == 3.0


def test_added_noise_has_calibrated_std():
    """Noise added over d=200k coordinates has the asked std within 6 chi-square std errors."""
    d, std = 200_000, 0.37
    rng = np.random.default_rng(20240601)
    x = np.zeros(d)
    noise = add_noise(x, std=std, rng=rng) - x
    stat = float(np.sum((noise / std) ** 2))  # ~ chi-square with d degrees of freedom
    assert abs(stat - chi2.mean(d)) <= 6 * chi2.std(d)
    assert abs(float(noise.mean())) <= 6 * std / math.sqrt(d)


def test_shares_sum_to_the_planned_noise():
    """m distributed shares sum to noise with std z·C (fixed seed, chi-square tolerance)."""
    m, d, z, c = 5, 100_000, 1.2, 0.5
    rng = np.random.default_rng(7)
    share = noise_std(clip_norm=c, noise_multiplier=z, min_sites=m, distributed=True)
    total = sum(add_noise(np.zeros(d), std=share, rng=rng) for _ in range(m))
    stat = float(np.sum((total / (z * c)) ** 2))
    assert abs(stat - d) <= 6 * math.sqrt(2 * d)


def test_system_rng_is_unpredictable():
    """Two system generators draw different streams."""
    assert system_rng().normal() != system_rng().normal()
