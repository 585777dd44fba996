"""Secure-aggregation parameters for one round, validated against the config keys they come from.

Every problem raises ``ConfigError`` naming a key under ``secure_aggregation.``. See
``confide.secagg.graph`` for how k and t are chosen (Bell et al., CCS 2020) and
``confide.secagg.quantize`` for r, b and the headroom rule n * (2^b - 1) < 2^32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from confide.errors import ConfigError
from confide.secagg.graph import choose_degree, threshold_count
from confide.secagg.prg import DEFAULT_CIPHER, PrgCipher
from confide.secagg.quantize import DEFAULT_BITS, DEFAULT_CLIP_RANGE, check_headroom
from confide.v1 import common_pb2

__all__ = ["DEFAULT_THRESHOLD", "SecAggParams", "choose_params", "job_params"]

DEFAULT_THRESHOLD = 2 / 3
"""t as a fraction of the k + 1 share holders: above 1/2 (lying server), below 1 - dropouts."""

MODULUS = 1 << 32


@dataclass(frozen=True, slots=True)
class SecAggParams:
    """Validated parameters of one secure-aggregation round.

    Args:
        n: number of selected sites.
        threshold: t, shares needed to reconstruct a secret (2 <= t, 2t > k + 1, t <= k + 1).
        neighbours: k, the graph degree (even, or n - 1 for the complete graph).
        clip_range: r, coordinates are clipped to [-r, r].
        bits: b, bits per quantized coordinate.
        modulus: arithmetic modulus, always 2^32.
        cipher: PRG stream cipher.
    """

    n: int
    threshold: int
    neighbours: int
    clip_range: float
    bits: int
    modulus: int = MODULUS
    cipher: PrgCipher = DEFAULT_CIPHER


def choose_params(
    *,
    n: int,
    threshold: float = DEFAULT_THRESHOLD,
    neighbours: int = 0,
    clip_range: float = DEFAULT_CLIP_RANGE,
    bits: int = DEFAULT_BITS,
    dropout_rate: float = 0.1,
    corrupt_rate: float = 0.05,
    cipher: PrgCipher = DEFAULT_CIPHER,
) -> SecAggParams:
    """Choose and validate k and t for n sites, and check r and b.

    Args:
        n: number of selected sites (>= 3: with 2 sites the sum reveals the other's input).
        threshold: fraction in (0, 1] of the k + 1 holders, or a count >= 2.
        neighbours: k; 0 chooses it with ``graph.choose_degree``.
        clip_range: r > 0.
        bits: b in [1, 31] with n * (2^b - 1) < 2^32.
        dropout_rate: expected dropout fraction delta, for the automatic k.
        corrupt_rate: colluding-site fraction gamma, for the automatic k.
        cipher: PRG cipher.

    Raises:
        ConfigError: naming ``secure_aggregation.{sites,neighbours,threshold,clip_range,bits,
            dropout_rate,corrupt_rate}``.
    """
    if n < 3:
        raise ConfigError("secure_aggregation.sites", f"need at least 3 sites, got {n}")
    if not 0 <= dropout_rate < 1:
        raise ConfigError("secure_aggregation.dropout_rate", "must be in [0, 1)")
    if not 0 <= corrupt_rate < 1:
        raise ConfigError("secure_aggregation.corrupt_rate", "must be in [0, 1)")
    if not (math.isfinite(clip_range) and clip_range > 0):
        raise ConfigError("secure_aggregation.clip_range", f"must be > 0, got {clip_range}")
    check_headroom(n=n, bits=bits)
    try:
        if neighbours == 0:
            neighbours = choose_degree(
                n=n, threshold=threshold, dropout_rate=dropout_rate, corrupt_rate=corrupt_rate
            )
        t = threshold_count(threshold, degree=min(neighbours, n - 1))
    except ValueError as exc:
        raise ConfigError("secure_aggregation.threshold", str(exc)) from exc
    if neighbours < 2 or neighbours >= n:
        raise ConfigError(
            "secure_aggregation.neighbours", f"must be in [2, n-1] = [2, {n - 1}], got {neighbours}"
        )
    if neighbours != n - 1 and neighbours % 2:
        raise ConfigError(
            "secure_aggregation.neighbours", f"must be even or n-1 (Harary graph), got {neighbours}"
        )
    holders = neighbours + 1
    if t > holders:
        raise ConfigError(
            "secure_aggregation.threshold", f"t={t} exceeds the {holders} share holders"
        )
    if 2 * t <= holders:
        raise ConfigError(
            "secure_aggregation.threshold",
            f"t={t} must exceed half of the {holders} share holders, or a server that lies "
            "about dropouts can recover both masks of one site",
        )
    return SecAggParams(
        n=n,
        threshold=t,
        neighbours=neighbours,
        clip_range=float(clip_range),
        bits=bits,
        cipher=cipher,
    )


def job_params(spec: common_pb2.JobSpec, *, n: int) -> SecAggParams:
    """A job's SecAgg+ parameters for a round of ``n`` selected sites (defaults when unset).

    Both sides call it: the aggregator to run a round, each site to plan its update noise
    for the fewest sites a round may sum (``n = min_sites``).

    Raises:
        ConfigError: naming the ``secure_aggregation.`` key at fault.
    """
    sa = spec.secure_aggregation
    return choose_params(
        n=n,
        threshold=sa.threshold or DEFAULT_THRESHOLD,
        neighbours=int(sa.neighbours),
        clip_range=sa.clip_range or DEFAULT_CLIP_RANGE,
        bits=sa.bits or DEFAULT_BITS,
    )
