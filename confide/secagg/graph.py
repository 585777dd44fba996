"""The SecAgg+ neighbour graph: a Harary graph over a random permutation of the sites.

Bell et al. (CCS 2020, Sec. 3 and 4) replace SecAgg's complete graph by a k-regular graph: each
site masks with, and secret-shares to, only its k neighbours. Their instantiation is the Harary
graph H(n, k) (k even): place the n sites on a ring in a random order and join each to the k/2
nearest on either side. The server draws the order from a seed and announces the graph.

Degree k and threshold t (``choose_degree``). Symbols: n sites, k neighbours, holders of a
site's shares = its k neighbours plus itself (k + 1), gamma = fraction of corrupt sites
colluding with the server, delta = dropout fraction, sigma = 40 (security), eta = 30
(correctness). We take the smallest even k such that, by union bounds over all n sites:

1. the graph minus the gamma*n + delta*n bad sites stays connected except with probability
   <= 2^-(sigma+1): disconnecting H(n, k) needs two disjoint runs of k/2 consecutive bad sites
   on the ring, so Pr <= n(n-k-1)/2 * B!(n-k)!/(n!(B-k)!) with B = bad sites (Bell et al.
   Lemma 4.4);
2. privacy against a server that lies about dropouts (it may ask half the holders for b_u
   shares and the other half for s_u shares): with A ~ Hypergeometric(n, gamma*n, k) corrupt
   holders, Pr[A >= 2t - (k + 1)] <= 2^-(sigma+1) / n, i.e. the honest holders alone can never
   be split into two groups that each complete t shares. With gamma = 0 this is 2t > k + 1,
   the "t > (k+1)/2" rule every site also checks;
3. correctness: with S ~ Hypergeometric(n - 1, (1-delta)*n - 1, k) surviving neighbours,
   Pr[S < t] <= 2^-eta / n.

If no k < n - 1 qualifies (small n), the graph is complete (k = n - 1) and the same conditions
hold deterministically: 2t - n > gamma*n and (1 - delta)*n >= t.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Graph", "choose_degree", "harary_graph", "threshold_count"]

SECURITY_BITS = 40
CORRECTNESS_BITS = 30


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
        seed: the server's announced randomness; the same seed gives the same graph.

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


def threshold_count(threshold: float, *, degree: int) -> int:
    """Turn a threshold given as a fraction in (0, 1) or a count >= 2 into a count t.

    A fraction is of the k + 1 holders (neighbours and self), rounded up; 1.0 means all.

    Raises:
        ValueError: a value that is neither.
    """
    if 0 < threshold <= 1:
        return max(2, math.ceil(threshold * (degree + 1) - 1e-9))
    if threshold >= 2 and float(threshold).is_integer():
        return int(threshold)
    raise ValueError(f"threshold must be a fraction in (0, 1] or an integer >= 2: {threshold}")


def _log_hypergeom_pmf(total: int, good: int, draws: int, x: int) -> float:
    """log Pr[X = x] for X ~ Hypergeometric(total, good, draws)."""

    def log_comb(a: int, b: int) -> float:
        return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)

    return log_comb(good, x) + log_comb(total - good, draws - x) - log_comb(total, draws)


def _tail_ge(total: int, good: int, draws: int, x: int) -> float:
    """Pr[X >= x] for X ~ Hypergeometric(total, good, draws)."""
    lo = max(x, 0, draws - (total - good))
    hi = min(good, draws)
    return sum(math.exp(_log_hypergeom_pmf(total, good, draws, i)) for i in range(lo, hi + 1))


def _secure_and_correct(n: int, k: int, t: int, gamma: float, delta: float) -> bool:
    """Check conditions 1-3 of the module docstring for a sparse H(n, k)."""
    if not 2 <= t <= k + 1:
        return False
    corrupt = math.floor(gamma * n + 1e-12)
    bad = corrupt + math.floor(delta * n + 1e-12)
    eps = 2.0 ** -(SECURITY_BITS + 1)
    if k <= bad:
        log_p = (
            math.log(n)
            + math.log(max(n - k - 1, 1))
            - math.log(2)
            + math.lgamma(bad + 1)
            + math.lgamma(n - k + 1)
            - math.lgamma(n + 1)
            - math.lgamma(bad - k + 1)
        )
        if log_p > math.log(eps):
            return False
    if _tail_ge(n, corrupt, k, 2 * t - (k + 1)) > eps / n:
        return False
    survivors = math.ceil((1 - delta) * n - 1e-12) - 1
    p_fail = 1.0 - _tail_ge(n - 1, max(survivors, 0), k, t)
    return p_fail <= 2.0**-CORRECTNESS_BITS / n


def choose_degree(
    *, n: int, threshold: float, dropout_rate: float = 0.1, corrupt_rate: float = 0.0
) -> int:
    """Return the smallest even k for which H(n, k) is secure and correct, else n - 1.

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
    for k in range(2, n - 1, 2):
        t = threshold_count(threshold, degree=k)
        if _secure_and_correct(n, k, t, corrupt_rate, dropout_rate):
            return k
    return n - 1
