"""Harary graph construction and parameter choice."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confide.errors import ConfigError
from confide.secagg import RoundRules, choose_degree, choose_params, harary_graph
from confide.secagg.graph import COMPLETE_MAX


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
    p = choose_params(n=300)
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
        ({"n": 2}, "min_sites"),
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


def test_small_federations_get_the_complete_graph() -> None:
    """Up to COMPLETE_MAX sites the graph is complete and t exceeds (n + c)/2 (issue 8.2)."""
    for n in range(3, COMPLETE_MAX + 1):
        p = choose_params(n=n)
        c = math.floor(0.05 * n + 1e-9)
        assert p.neighbours == n - 1, n
        assert 2 * p.threshold - n > c and p.threshold <= math.floor(0.9 * n), n
        assert p.quorum >= p.threshold and 2 * p.quorum > n + c


@pytest.mark.parametrize("m", [3, 4, 5, 10, 30, 99, 100, 101, 150, 190])
def test_threshold_is_never_below_the_planned_one(m: int) -> None:
    """For every round size a job allows, t(n) >= t(min_sites) (issue 8.3: t(195) < t(190))."""
    rules = RoundRules(min_sites=m)
    planned = rules.planned_threshold
    for n in range(m, m + 60):
        p = rules.params(n)
        assert p.threshold >= planned, (m, n)
        assert p.threshold <= p.neighbours + 1 < 2 * p.threshold


def test_round_parameters_are_a_known_answer() -> None:
    """Exact arithmetic gives the same (k, t, Q) everywhere; these are the reference values."""
    got = {
        n: (p.neighbours, p.threshold, p.quorum)
        for n in (3, 4, 10, 100, 101, 190, 195, 1000)
        for p in [choose_params(n=n)]
    }
    assert got == {
        3: (2, 2, 2),
        4: (3, 3, 3),
        10: (9, 7, 7),
        100: (99, 67, 67),
        101: (32, 22, 54),
        190: (60, 41, 100),
        195: (56, 38, 103),
        1000: (108, 73, 526),
    }


@pytest.mark.parametrize("threshold", [0.51, 0.5, 1.0, 0.9, 0.95])
def test_unsafe_fractions_are_refused_at_submit(threshold: float) -> None:
    """A fraction at or below (1 + gamma)/2, or at or above 1 - delta, is refused at submit."""
    with pytest.raises(ConfigError) as exc:
        RoundRules(min_sites=100, threshold=threshold).validate()
    assert exc.value.key == "secure_aggregation.threshold"


def test_complete_fallback_checks_its_own_conditions() -> None:
    """threshold 0.51 at n = 100 and 1.0 at any n fail the complete graph's own conditions."""
    with pytest.raises(ConfigError):
        choose_params(n=100, threshold=0.51)
    with pytest.raises(ConfigError):
        choose_params(n=10, threshold=1.0)


def test_valid_rules_validate_and_bound_count_thresholds() -> None:
    """The default fraction is valid for every size; a count threshold caps the round size."""
    RoundRules(min_sites=5).validate()
    RoundRules(min_sites=150).validate()
    complete = RoundRules(min_sites=5, threshold=3)
    complete.validate()
    assert complete.max_sites() == 5  # 2t > n stops the complete graph at n = 5 for t = 3
    sparse = RoundRules(min_sites=5, threshold=3, neighbours=4)
    top = sparse.max_sites()
    assert top > 5 and sparse.params(top).neighbours == 4
    with pytest.raises(ConfigError):
        sparse.params(top + 1)


def _model_sums(graph: dict[str, frozenset[str]], t: int, alive: set[str]) -> list[set[str]]:
    """Smallest computable sums when the sites in ``alive`` are U3 and all of them answer.

    Most the server can learn: every dropped site's key is exposed, so only edges inside U3
    hold masks; b_u is exposed iff u and its neighbours in U3 are at least t.
    """
    out, seen = [], set()
    for start in sorted(alive):
        if start in seen:
            continue
        comp, todo = set(), [start]
        while todo:
            v = todo.pop()
            if v not in comp:
                comp.add(v)
                todo.extend((graph[v] & alive) - comp)
        seen |= comp
        if all(len((graph[u] & alive) | {u}) >= t for u in comp):
            out.append(comp)
    return out


@pytest.mark.parametrize("n", range(3, 31))
def test_no_reconstructable_sum_covers_fewer_than_t_inputs(n: int) -> None:
    """Every survivor set the protocol tolerates (|U3| >= quorum) leaves only sums of >= t
    inputs: exhaustively for n <= 12, and for every size of U3 up to 30 (issue 8.2)."""
    p = choose_params(n=n)
    sites = [f"s{i:02d}" for i in range(n)]
    g = harary_graph(sites, degree=p.neighbours, seed=b"any")
    if n <= 12:
        alive_sets = ({s for i, s in enumerate(sites) if mask >> i & 1} for mask in range(1 << n))
    else:  # the complete graph is symmetric: only |U3| matters
        alive_sets = (set(sites[:size]) for size in range(n + 1))
    for alive in alive_sets:
        if len(alive) < p.quorum:
            continue
        sums = _model_sums(dict(g.neighbours), p.threshold, alive)
        assert all(len(c) >= p.threshold for c in sums)


@pytest.mark.parametrize("k", [4, 6])
def test_sparse_graphs_also_never_split_below_t(k: int) -> None:
    """For sparse H(14, k) too, no survivor set yields a computable sum of fewer than t."""
    t = k // 2 + 1
    sites = [f"s{i:02d}" for i in range(14)]
    g = dict(harary_graph(sites, degree=k, seed=b"x").neighbours)
    for mask in range(1 << 14):
        alive = {s for i, s in enumerate(sites) if mask >> i & 1}
        assert all(len(c) >= t for c in _model_sums(g, t, alive))
