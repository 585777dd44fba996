"""Harary graph construction and parameter choice."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confide.errors import ConfigError
from confide.secagg import choose_degree, choose_params, harary_graph


@settings(max_examples=30, deadline=None)
@given(n=st.integers(3, 60), data=st.data(), seed=st.binary(min_size=1, max_size=8))
def test_harary_is_k_regular_symmetric(n: int, data: st.DataObject, seed: bytes) -> None:
    """Every site has exactly k neighbours, never itself, and adjacency is symmetric."""
    evens = [k for k in range(2, n - 1, 2)]
    k = data.draw(st.sampled_from([*evens, n - 1]))
    sites = [f"s{i}" for i in range(n)]
    g = harary_graph(sites, degree=k, seed=seed)
    for u, nbs in g.neighbours.items():
        assert len(nbs) == k and u not in nbs
        assert all(u in g.neighbours[v] for v in nbs)


def test_graph_is_deterministic_from_seed() -> None:
    """The same seed gives the same graph; another seed a different one."""
    sites = [f"s{i}" for i in range(30)]
    a = harary_graph(sites, degree=4, seed=b"x")
    assert a == harary_graph(list(reversed(sites)), degree=4, seed=b"x")
    assert a != harary_graph(sites, degree=4, seed=b"y")


@pytest.mark.parametrize("k", [1, 3, 0, 10])
def test_graph_degree_limits(k: int) -> None:
    """Odd degrees below n - 1, 0 and degrees >= n are refused."""
    with pytest.raises(ValueError):
        harary_graph([f"s{i}" for i in range(10)], degree=k, seed=b"")


def test_auto_degree_is_sparse_for_large_n() -> None:
    """Large federations get k much smaller than n; small ones a usable graph."""
    assert choose_degree(n=10_000, threshold=2 / 3) < 200
    assert choose_degree(n=5, threshold=2 / 3) <= 4


def test_choose_params_defaults() -> None:
    """Defaults give t > (k+1)/2, t <= k+1, b=16, r=1, modulus 2^32."""
    p = choose_params(n=100)
    assert 2 * p.threshold > p.neighbours + 1 >= p.threshold
    assert (p.bits, p.clip_range, p.modulus) == (16, 1.0, 2**32)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"n": 10, "threshold": 0.5, "neighbours": 9}, "secure_aggregation.threshold"),
        ({"n": 10, "threshold": 5, "neighbours": 9}, "secure_aggregation.threshold"),
        ({"n": 10, "threshold": 11, "neighbours": 9}, "secure_aggregation.threshold"),
        ({"n": 10, "threshold": 1.5}, "secure_aggregation.threshold"),
        ({"n": 10, "neighbours": 10}, "secure_aggregation.neighbours"),
        ({"n": 10, "neighbours": 5}, "secure_aggregation.neighbours"),
        ({"n": 10, "clip_range": 0.0}, "secure_aggregation.clip_range"),
        ({"n": 70_000, "bits": 16}, "secure_aggregation.bits"),
        ({"n": 10, "bits": 32}, "secure_aggregation.bits"),
        ({"n": 2}, "secure_aggregation.sites"),
        ({"n": 10, "dropout_rate": 1.0}, "secure_aggregation.dropout_rate"),
    ],
)
def test_choose_params_errors_name_the_key(kwargs: dict[str, Any], key: str) -> None:
    """Each invalid parameter raises ConfigError naming its secure_aggregation key."""
    with pytest.raises(ConfigError) as exc:
        choose_params(**kwargs)
    assert exc.value.key == key


def test_threshold_just_above_half_is_accepted() -> None:
    """t = 6 of 10 holders (k = 9) passes; t = 5 (exactly half) does not."""
    assert choose_params(n=10, threshold=6, neighbours=9).threshold == 6
    with pytest.raises(ConfigError):
        choose_params(n=10, threshold=5, neighbours=9)
