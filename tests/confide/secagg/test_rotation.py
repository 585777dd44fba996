# ruff: noqa: RUF002
"""The randomized Walsh–Hadamard rotation: orthogonal, inverted exactly by the server, flat."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confide.secagg.prg import expand
from confide.secagg.rotation import padded_dim, rotate, rotation_seed, unrotate

SEED = rotation_seed(federation="fed", attempt="job-1/1/1")


def test_padded_dim_is_the_next_power_of_two():
    """d' = 2^⌈log₂ d⌉ on both sides of each power of two."""
    assert [padded_dim(d) for d in (1, 2, 3, 4, 5, 63, 64, 65)] == [1, 2, 4, 4, 8, 64, 64, 128]
    with pytest.raises(ValueError):
        padded_dim(0)


def test_known_answer_for_four_coordinates():
    """U·x = H·D·x with the 4 × 4 Hadamard matrix / 2 and ξ from the seed's PRG words."""
    x = np.array([1.0, 2.0, 3.0, 4.0])
    xi = 1.0 - 2.0 * (expand(SEED, 4) & 1)
    h = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]]) / 2.0
    np.testing.assert_allclose(rotate(x, seed=SEED), h @ (xi * x), atol=1e-15)


@settings(max_examples=40, deadline=None)
@given(d=st.integers(1, 3000), seed=st.binary(min_size=32, max_size=32))
def test_unrotate_inverts_rotate_and_norms_are_kept(d, seed):
    """Uᵀ·U·x = x (padding dropped) and ‖U·x‖ = ‖x‖ for any length and seed."""
    x = np.random.default_rng(d).normal(size=d)
    y = rotate(x, seed=seed)
    assert y.size == padded_dim(d)
    assert np.linalg.norm(y) == pytest.approx(np.linalg.norm(x), rel=1e-12)
    np.testing.assert_allclose(unrotate(y, seed=seed, dim=d), x, atol=1e-12)


def test_a_spike_is_spread_flat():
    """A vector with all its norm in one coordinate comes out with every coordinate ±‖x‖/√d'."""
    x = np.zeros(1000)
    x[17] = 5.0
    y = rotate(x, seed=SEED)
    np.testing.assert_allclose(np.abs(y), 5.0 / np.sqrt(1024), rtol=1e-12)


def test_the_seed_is_bound_to_federation_and_attempt():
    """Each round attempt (and federation) gets its own ξ; the same attempt the same one."""
    seeds = {
        rotation_seed(federation=f, attempt=a)
        for f in ("fed", "other")
        for a in ("job-1/1/1", "job-1/1/2", "job-1/2/1", "job-2/1/1")
    }
    assert len(seeds) == 8
    assert rotation_seed(federation="fed", attempt="job-1/1/1") == SEED
    x = np.arange(8.0)
    assert not np.allclose(rotate(x, seed=SEED), rotate(x, seed=next(iter(seeds - {SEED}))))


def test_unrotate_refuses_a_wrong_length():
    """A sum whose length is not the padded dimension of d is refused."""
    with pytest.raises(ValueError):
        unrotate(np.zeros(8), seed=SEED, dim=9)
    with pytest.raises(ValueError):
        unrotate(np.zeros(16), seed=SEED, dim=5)
