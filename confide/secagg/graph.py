"""The SecAgg+ neighbour graph and the exact tests that pick its degree and threshold.

Graph. Bell et al. (CCS 2020, Sec. 3 and 4) replace SecAgg's complete graph by a k-regular
graph: each site masks with, and secret-shares to, only its k neighbours. Their
instantiation is the Harary graph H(n, k) (k even): place the n sites on a ring in a random
order and join each to the k/2 nearest on either side. The ring order here comes from a seed
that no party chooses alone: the round's session id, a hash over every site's signed key
advertisement (``confide.secagg.view.session_id``); every site recomputes it and the graph.

Regimes. Up to ``COMPLETE_MAX`` sites the graph is complete (k = n - 1, Bonawitz et al.,
CCS 2017): cross-silo federations are that small, masking costs a site n PRG streams
(0.15 s at d = 1e6) and recovering a dropout costs the server n streams, and the complete
graph has no ring order to bias. Above it a sparse H(n, k) with k about n / 3 or less
really pays (the server's recovery work drops from delta*n^2 to delta*n*k streams).

Degree k and threshold t (``choose_degree``, ``sparse_ok``, ``complete_ok``). Symbols: n
sites, k neighbours, holders of a site's shares = its k neighbours plus itself (k + 1),
c = floor(gamma*n) corrupt sites colluding with the server, b = c + floor(delta*n) bad sites
(corrupt or dropped), sigma = 40 (security), eta = 30 (correctness). A sparse H(n, k) must
satisfy, by union bounds over all n sites:

1. the graph minus the b bad sites stays connected except with probability
   <= 2^-(sigma+1): disconnecting H(n, k) needs two disjoint runs of k/2 consecutive bad
   sites on the ring, so Pr <= n(n-k-1)/2 * prod_{i<k} (b-i)/(n-i) (Bell et al. Lemma 4.4);
2. with A ~ Hypergeometric(n, c, k) corrupt holders, Pr[A >= 2t - (k + 1)] <= 2^-(sigma+1)/n:
   the honest holders alone can never be split into two groups that each complete t shares
   (with c = 0 this is 2t > k + 1, which every site also checks);
3. correctness: with S ~ Hypergeometric(n - 1, ceil((1-delta)*n) - 1, k) surviving neighbours,
   Pr[S < t] <= 2^-eta / n.

The complete graph must satisfy the same conditions deterministically: 2t - n > c (security)
and t <= floor((1 - delta)*n) (correctness). 1 and 2 are security conditions, 3 and the
complete graph's second one are liveness conditions.

Every probability is compared in exact integer arithmetic (binomial coefficients, no
floating point), and the rates and a fractional threshold are read as fractions with
denominators up to 10^6, so the aggregator and every site compute the same k and t on any
platform: a site refuses a round whose t or graph differs from its own computation.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

__all__ = [
    "COMPLETE_MAX",
    "Graph",
    "choose_degree",
    "complete_ok",
    "harary_graph",
    "rate",
    "sparse_ok",
    "threshold_count",
]

SECURITY_BITS = 40
CORRECTNESS_BITS = 30
COMPLETE_MAX = 100
"""Largest n that gets the complete graph when the degree is automatic."""


@dataclass(frozen=True, slots=True)
class Graph:
    """An undirected neighbour graph; ``neighbours[u]`` excludes u itself.

    Args:
        neighbours: site id -> its neighbours.
        degree: k.
    """

    neighbours: Mapping[str, frozenset[str]]
    degree: int


def harary_graph(sites: Sequence[str], *, degree: int, seed: bytes) -> Graph:
    """Build H(n, k) over ``sites`` ordered on the ring by SHA-256(seed || site id).

    Args:
        sites: distinct site ids, n >= 2.
        degree: k, even and < n - 1, or exactly n - 1 (complete graph).
        seed: the round's session id; the same seed gives the same graph.

    Raises:
        ValueError: duplicate sites, n < 2, or a degree that is not even or n - 1.
    """
    n = len(sites)
    if len(set(sites)) != n or n < 2:
        raise ValueError("need at least 2 distinct sites")
    if degree == n - 1:
        everyone = frozenset(sites)
        return Graph({u: everyone - {u} for u in sites}, degree)
    if degree < 2 or degree % 2 or degree >= n - 1:
        raise ValueError(f"degree must be even in [2, n-2] or n-1; got {degree} for n={n}")
    ring = sorted(sites, key=lambda s: hashlib.sha256(seed + b"\x00" + s.encode("utf-8")).digest())
    half = degree // 2
    nb: dict[str, frozenset[str]] = {}
    for i, u in enumerate(ring):
        nb[u] = frozenset(ring[(i + j) % n] for j in range(-half, half + 1) if j != 0)
    return Graph(nb, degree)


def rate(value: float) -> Fraction:
    """Read a rate or fractional threshold as an exact fraction (denominator <= 10^6)."""
    return Fraction(value).limit_denominator(10**6)


def threshold_count(threshold: float, *, degree: int) -> int:
    """Turn a threshold given as a fraction in (0, 1] or a count >= 2 into a count t.

    A fraction is of the k + 1 holders (neighbours and self), rounded up; 1.0 means all.

    Raises:
        ValueError: a value that is neither.
    """
    if 0 < threshold <= 1:
        return max(2, math.ceil(rate(threshold) * (degree + 1)))
    if threshold >= 2 and float(threshold).is_integer():
        return int(threshold)
    raise ValueError(f"threshold must be a fraction in (0, 1] or an integer >= 2: {threshold}")


def _tail_ge_times(total: int, good: int, draws: int, x: int) -> int:
    """C(total, draws) * Pr[X >= x] for X ~ Hypergeometric(total, good, draws), exactly."""
    lo = max(x, 0, draws - (total - good))
    hi = min(good, draws)
    return sum(math.comb(good, i) * math.comb(total - good, draws - i) for i in range(lo, hi + 1))


def _bad_counts(n: int, corrupt: Fraction, dropout: Fraction) -> tuple[int, int]:
    """(c, b): corrupt sites floor(gamma*n) and bad sites c + floor(delta*n)."""
    c = math.floor(corrupt * n)
    return c, c + math.floor(dropout * n)


def complete_ok(
    n: int, t: int, *, corrupt: Fraction, dropout: Fraction, liveness: bool
) -> str | None:
    """Why the complete graph over n sites with threshold t fails, or None when it holds."""
    c, _ = _bad_counts(n, corrupt, dropout)
    if not 2 <= t <= n:
        return f"t={t} must be in [2, n={n}]"
    if 2 * t - n <= c:
        return (
            f"t={t} must exceed (n + c)/2 = ({n} + {c})/2, or a server that lies about "
            "dropouts (with c colluding sites) can recover both masks of one site"
        )
    if liveness and t > math.floor((1 - dropout) * n):
        return f"t={t} leaves no room for the expected {math.floor(dropout * n)} dropouts of {n}"
    return None


def sparse_ok(
    n: int, k: int, t: int, *, corrupt: Fraction, dropout: Fraction, liveness: bool
) -> str | None:
    """Why H(n, k) with threshold t fails conditions 1-3 of the module docstring, or None."""
    if not 2 <= t <= k + 1 or 2 * t <= k + 1:
        return f"t={t} must be in ((k+1)/2, k+1] for k={k}"
    c, bad = _bad_counts(n, corrupt, dropout)
    sec = 1 << (SECURITY_BITS + 1)
    if k <= bad:
        runs = n * (n - k - 1) * math.prod(bad - i for i in range(k))
        if runs * sec > 2 * math.prod(n - i for i in range(k)):
            return f"H({n}, {k}) may disconnect once {bad} sites are bad"
    if _tail_ge_times(n, c, k, 2 * t - (k + 1)) * sec * n > math.comb(n, k):
        return f"{c} colluding sites may hold t={t} of some site's {k + 1} shares"
    if liveness:
        alive = max(math.ceil((1 - dropout) * n) - 1, 0)
        short = math.comb(n - 1, k) - _tail_ge_times(n - 1, alive, k, t)
        if short * (1 << CORRECTNESS_BITS) * n > math.comb(n - 1, k):
            return f"t={t} of {k + 1} holders may not survive {math.floor(dropout * n)} dropouts"
    return None


def choose_degree(
    *, n: int, threshold: float, dropout_rate: float = 0.1, corrupt_rate: float = 0.05
) -> int:
    """The automatic degree: n - 1 up to ``COMPLETE_MAX``, else the smallest sound even k.

    Args:
        n: number of sites.
        threshold: a fraction of the k + 1 holders, or a count (see ``threshold_count``).
        dropout_rate: delta, expected fraction of sites that drop out.
        corrupt_rate: gamma, fraction of sites that may collude with the server.

    Raises:
        ValueError: n < 2 or rates outside [0, 1).
    """
    if n < 2:
        raise ValueError("n must be >= 2")
    if not (0 <= dropout_rate < 1 and 0 <= corrupt_rate < 1):
        raise ValueError("rates must be in [0, 1)")
    if n <= COMPLETE_MAX:
        return n - 1
    gamma, delta = rate(corrupt_rate), rate(dropout_rate)
    for k in range(2, n - 1, 2):
        t = threshold_count(threshold, degree=k)
        if sparse_ok(n, k, t, corrupt=gamma, dropout=delta, liveness=True) is None:
            return k
    return n - 1
