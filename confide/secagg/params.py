"""Secure-aggregation parameters: one deterministic function of a job's signed settings and n.

``RoundRules`` is what a job's ``secure_aggregation`` block and ``min_sites`` fix; its
``params(n)`` gives the degree k, threshold t and consistency quorum for a round of n sites.
The aggregator and every site call the same function on the same signed job, and a site
refuses a round whose announced threshold differs from its own result (sites never accept
"any threshold at or above" theirs: the server must not pick).

Monotone threshold. A site plans its update noise for ``planned_threshold`` = t at
n = ``min_sites`` (``agent.privacy.plan.planned_survivors``), so t(n) must never be below it:
``params(n)`` takes the first degree, from the automatic (or configured) one upwards, whose
threshold is at least the planned one and passes the tests of ``confide.secagg.graph``
(raising t to the planned value when the fraction gives less). Rounds with fewer sites than
``min_sites`` (sites lost before advertising) keep the planned t and are checked for
security only.

Quorum (``quorum``). Before revealing any share a site needs signatures from Q sites on the
identical survivor set (``confide.secagg.view``). Two disjoint honest groups can both reach Q
only if 2Q <= n + c (c colluding sites sign both views), so Q = max(t, floor((n + c)/2) + 1).

Submit-time validation (``validate``) covers every round size the job allows: a fractional
threshold tau must lie in ((1 + gamma)/2, 1 - delta) - above it the complete graph, the
fallback of every search, holds for all n beyond ``_closed_form_from`` - and every smaller
n from ``min_sites`` up is checked one by one; a count threshold allows the sizes up to the
first one that fails (``max_sites``), which the aggregator never exceeds when selecting.

Every problem raises ``ConfigError`` naming a key under ``secure_aggregation.``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from confide.errors import ConfigError
from confide.secagg.graph import (
    choose_degree,
    complete_ok,
    rate,
    sparse_ok,
    threshold_count,
)
from confide.secagg.prg import DEFAULT_CIPHER, PrgCipher
from confide.secagg.quantize import DEFAULT_BITS, DEFAULT_CLIP_RANGE, check_headroom
from confide.v1 import common_pb2

__all__ = [
    "DEFAULT_CORRUPT_RATE",
    "DEFAULT_DROPOUT_RATE",
    "DEFAULT_THRESHOLD",
    "MIN_SECURE_SITES",
    "RoundRules",
    "SecAggParams",
    "choose_params",
    "job_params",
    "job_rules",
]

MIN_SECURE_SITES = 3
"""The fewest sites a secure-aggregation round may sum, and so a secure job's least
``min_sites``. With two, the sum the aggregator learns, less one site's own update, is the
other's update: each site would learn the other's. This is the one place the rule lives;
the job-file check (``confide.jobspec``), the aggregator and every site reach it through
``RoundRules.params``."""

DEFAULT_THRESHOLD = 2 / 3
"""t as a fraction of the k + 1 holders: above (1 + gamma)/2, below 1 - delta."""

DEFAULT_DROPOUT_RATE = 0.1
"""delta: the dropout fraction every round is designed to survive."""

DEFAULT_CORRUPT_RATE = 0.05
"""gamma: the fraction of sites that may collude with the server."""

MODULUS = 1 << 32

_COUNT_SCAN = 1024
"""Round sizes past min_sites checked for a count threshold (beyond: refused)."""


@dataclass(frozen=True, slots=True)
class SecAggParams:
    """Validated parameters of one secure-aggregation round of n sites.

    Args:
        n: number of sites in the round (those whose keys were advertised).
        threshold: t, shares needed to reconstruct a secret (2 <= t, 2t > k + 1, t <= k + 1).
        neighbours: k, the graph degree (even, or n - 1 for the complete graph).
        quorum: Q, matching consistency signatures a site needs before it reveals a share.
        clip_range: r, coordinates are clipped to [-r, r].
        bits: b, bits per quantized coordinate.
        modulus: arithmetic modulus, always 2^32.
        cipher: PRG stream cipher.
    """

    n: int
    threshold: int
    neighbours: int
    quorum: int
    clip_range: float
    bits: int
    modulus: int = MODULUS
    cipher: PrgCipher = DEFAULT_CIPHER


@dataclass(frozen=True, slots=True)
class RoundRules:
    """What a job's signed settings fix for every round size; ``params(n)`` applies them.

    Args:
        min_sites: m, the fewest sites a round starts with (t is planned at n = m).
        threshold: fraction in (0, 1] of the k + 1 holders, or a count >= 2.
        neighbours: k; 0 chooses it with ``graph.choose_degree``; a configured k is a floor.
        clip_range: r > 0.
        bits: b in [1, 31].
        dropout_rate: delta.
        corrupt_rate: gamma.
        cipher: PRG cipher.
    """

    min_sites: int
    threshold: float = DEFAULT_THRESHOLD
    neighbours: int = 0
    clip_range: float = DEFAULT_CLIP_RANGE
    bits: int = DEFAULT_BITS
    dropout_rate: float = DEFAULT_DROPOUT_RATE
    corrupt_rate: float = DEFAULT_CORRUPT_RATE
    cipher: PrgCipher = DEFAULT_CIPHER

    @property
    def planned_threshold(self) -> int:
        """t at n = min_sites: what every site plans its noise for.

        Raises:
            ConfigError: the settings are invalid at n = min_sites.
        """
        return self.params(self.min_sites).threshold

    def params(self, n: int) -> SecAggParams:
        """The parameters of a round of n sites (see the module docstring).

        Raises:
            ConfigError: naming ``min_sites`` (fewer than ``MIN_SECURE_SITES``) or
                ``secure_aggregation.{neighbours,threshold,clip_range,bits,dropout_rate,
                corrupt_rate}``.
        """
        return _params(self, n)

    def max_sites(self) -> int:
        """The largest round size this job allows (quantization headroom, count thresholds).

        Raises:
            ConfigError: the settings are invalid at n = min_sites.
        """
        return _max_sites(self)

    def validate(self) -> None:
        """Check the settings for every round size from min_sites to ``max_sites``.

        Raises:
            ConfigError: naming the ``secure_aggregation.`` key at fault.
        """
        top = self.max_sites()
        if _is_fraction(self.threshold):
            tau = rate(self.threshold)
            gamma, delta = rate(self.corrupt_rate), rate(self.dropout_rate)
            if not (1 + gamma) / 2 < tau < 1 - delta:
                raise ConfigError(
                    "secure_aggregation.threshold",
                    f"a fraction must be in ((1 + {float(gamma)})/2, 1 - {float(delta)}): "
                    "above half of the holders plus the colluding sites, below what survives "
                    f"the expected dropouts; got {self.threshold}",
                )
            top = min(top, _closed_form_from(self))
        for n in range(self.min_sites, top + 1):
            self.params(n)


def _is_fraction(threshold: float) -> bool:
    return 0 < threshold <= 1


def _closed_form_from(rules: RoundRules) -> int:
    """An n from which the complete graph provably passes for a fraction threshold.

    With t = ceil(tau*n) <= tau*n + 1 and Q <= (1 + gamma)*n/2 + 1, both t and Q stay at or
    below floor((1 - delta)*n) once n >= 2 / (1 - delta - max(tau, (1 + gamma)/2)), and
    2t - n >= (2*tau - 1)*n > gamma*n >= c for every n; so larger rounds cannot fail.
    """
    tau, gamma, delta = rate(rules.threshold), rate(rules.corrupt_rate), rate(rules.dropout_rate)
    gap = 1 - delta - max(tau, (1 + gamma) / 2)
    return max(rules.min_sites, math.ceil(2 / gap) + 1)


def _quorum(n: int, t: int, corrupt: float) -> int:
    """Q = max(t, floor((n + c)/2) + 1) with c = floor(gamma*n)."""
    c = math.floor(rate(corrupt) * n)
    return max(t, (n + c) // 2 + 1)


def _check_common(rules: RoundRules, n: int) -> None:
    if n < MIN_SECURE_SITES:
        raise ConfigError(
            "min_sites",
            f"secure aggregation needs at least {MIN_SECURE_SITES} sites, got {n}: with two, "
            "the sum reveals each site's update to the other",
        )
    if not 0 <= rules.dropout_rate < 1:
        raise ConfigError("secure_aggregation.dropout_rate", "must be in [0, 1)")
    if not 0 <= rules.corrupt_rate < 1:
        raise ConfigError("secure_aggregation.corrupt_rate", "must be in [0, 1)")
    if not (math.isfinite(rules.clip_range) and rules.clip_range > 0):
        raise ConfigError("secure_aggregation.clip_range", f"must be > 0, got {rules.clip_range}")
    check_headroom(n=n, bits=rules.bits)
    try:
        threshold_count(rules.threshold, degree=2)
    except ValueError as exc:
        raise ConfigError("secure_aggregation.threshold", str(exc)) from exc


def _start_degree(rules: RoundRules, n: int, *, exact: bool) -> int:
    """The first degree tried: the configured k (rounded up to even, capped at n - 1) or auto.

    Raises:
        ConfigError: ``exact`` (n = min_sites) and the configured k is out of range or odd.
    """
    k = rules.neighbours
    if k == 0:
        return choose_degree(
            n=n,
            threshold=rules.threshold,
            dropout_rate=rules.dropout_rate,
            corrupt_rate=rules.corrupt_rate,
        )
    if exact:
        if k < 2 or k >= n:
            raise ConfigError(
                "secure_aggregation.neighbours", f"must be in [2, n-1] = [2, {n - 1}], got {k}"
            )
        if k != n - 1 and k % 2:
            raise ConfigError(
                "secure_aggregation.neighbours", f"must be even or n-1 (Harary graph), got {k}"
            )
    k = max(k, 2)
    if k % 2 and k < n - 1:
        k += 1
    return min(k, n - 1)


@functools.lru_cache(maxsize=256)
def _params(rules: RoundRules, n: int) -> SecAggParams:
    """``RoundRules.params`` (cached: every stage of every round asks for the same n)."""
    _check_common(rules, n)
    m = rules.min_sites
    exact = n == m
    floor = 0 if exact else rules.planned_threshold
    liveness = n >= m
    gamma, delta = rate(rules.corrupt_rate), rate(rules.dropout_rate)
    start = _start_degree(rules, n, exact=exact)
    degrees = [*range(start, n - 1, 2), n - 1] if start < n - 1 else [n - 1]
    why = ""
    for k in degrees:
        t = max(threshold_count(rules.threshold, degree=k), floor)
        q = _quorum(n, t, rules.corrupt_rate)
        if k == n - 1:
            problem = complete_ok(n, t, corrupt=gamma, dropout=delta, liveness=liveness)
        else:
            problem = sparse_ok(n, k, t, corrupt=gamma, dropout=delta, liveness=liveness)
        if problem is None and q > n:
            problem = f"quorum {q} exceeds the {n} sites"
        if problem is None and liveness and q > math.floor((1 - delta) * n):
            problem = f"quorum {q} leaves no room for the expected dropouts of {n}"
        if problem is None:
            return SecAggParams(
                n=n,
                threshold=t,
                neighbours=k,
                quorum=q,
                clip_range=float(rules.clip_range),
                bits=rules.bits,
                cipher=rules.cipher,
            )
        why = problem
        if exact and rules.neighbours:
            break  # a configured degree is what the operator asked for at min_sites
    raise ConfigError("secure_aggregation.threshold", f"no safe graph for {n} sites: {why}")


def _headroom_max(bits: int) -> int:
    """The largest n with n * (2^b - 1) < 2^32."""
    return (MODULUS - 1) // ((1 << bits) - 1)


@functools.lru_cache(maxsize=64)
def _max_sites(rules: RoundRules) -> int:
    """``RoundRules.max_sites``."""
    rules.params(rules.min_sites)
    top = _headroom_max(rules.bits)
    if _is_fraction(rules.threshold):
        return top
    for n in range(rules.min_sites + 1, min(top, rules.min_sites + _COUNT_SCAN) + 1):
        try:
            rules.params(n)
        except ConfigError:
            return n - 1
    return min(top, rules.min_sites + _COUNT_SCAN)


def choose_params(
    *,
    n: int,
    threshold: float = DEFAULT_THRESHOLD,
    neighbours: int = 0,
    clip_range: float = DEFAULT_CLIP_RANGE,
    bits: int = DEFAULT_BITS,
    dropout_rate: float = DEFAULT_DROPOUT_RATE,
    corrupt_rate: float = DEFAULT_CORRUPT_RATE,
    cipher: PrgCipher = DEFAULT_CIPHER,
) -> SecAggParams:
    """The parameters for a round of exactly ``n`` = min_sites sites (see ``RoundRules``).

    Raises:
        ConfigError: naming the ``secure_aggregation.`` key at fault.
    """
    rules = RoundRules(
        min_sites=n,
        threshold=threshold,
        neighbours=neighbours,
        clip_range=clip_range,
        bits=bits,
        dropout_rate=dropout_rate,
        corrupt_rate=corrupt_rate,
        cipher=cipher,
    )
    return rules.params(n)


def job_rules(spec: common_pb2.JobSpec) -> RoundRules:
    """A job's SecAgg+ rules, as the aggregator and every site read them.

    Args:
        spec: a normalized job (``confide.jobspec.normalize``: its defaults filled in; an
            unset threshold, clip range or bits is refused by ``params``, never defaulted).

    Raises:
        ConfigError: naming the ``secure_aggregation.`` key at fault.
    """
    sa = spec.secure_aggregation
    return RoundRules(
        min_sites=int(spec.min_sites),
        threshold=sa.threshold,
        neighbours=int(sa.neighbours),
        clip_range=sa.clip_range,
        bits=sa.bits,
    )


def job_params(spec: common_pb2.JobSpec, *, n: int) -> SecAggParams:
    """A job's SecAgg+ parameters for a round of ``n`` sites (``job_rules(spec).params(n)``).

    Each site plans its update noise for ``n = min_sites`` (the planned threshold).

    Raises:
        ConfigError: naming the ``secure_aggregation.`` key at fault.
    """
    return job_rules(spec).params(n)
