# Math notation (σ, α, ρ, δ, ε) in docstrings cites the papers' formulas as written.
# ruff: noqa: RUF001, RUF002, RUF003
"""One front door to the accountants: ε for σ, σ for ε, and RDP composition across rounds.

Symbols: q (sample rate), σ (noise multiplier = noise std / sensitivity), T (steps), δ.
``AccountantKind.RDP`` is Rényi DP (Mironov et al. 2019 with the conversion of Balle et al.
2020, see ``confide.dp.rdp``); ``AccountantKind.PRV`` is the numerical composition of Gopi et
al. 2021 (see ``confide.dp.prv``), tighter by 10-20% at the same σ.

Heterogeneous composition (rounds of different jobs on one dataset) uses RDP: curves add
order by order (Mironov 2017, Proposition 1), which is exact RDP composition, unlike adding
per-round epsilons.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from confide.dp.rdp import DEFAULT_ORDERS, epsilon_from_rdp, rdp

__all__ = [
    "AccountantKind",
    "SampledGaussian",
    "compose_rdp",
    "epsilon",
    "noise_multiplier_for",
    "rdp_curve",
]

MAX_NOISE_MULTIPLIER = 1e6
"""σ above which ``noise_multiplier_for`` gives up: the target is unreachable in practice."""


class AccountantKind(enum.Enum):
    """Which accountant turns (q, σ, T) into ε."""

    RDP = "rdp"
    PRV = "prv"


class SampledGaussian(NamedTuple):
    """T steps of the Poisson-sampled Gaussian mechanism with rate q and noise multiplier σ.

    q = 1 is the plain Gaussian mechanism (e.g. one federated round of update noise).
    """

    sample_rate: float
    noise_multiplier: float
    steps: int


def epsilon(
    *, kind: AccountantKind, sample_rate: float, noise_multiplier: float, steps: int, delta: float
) -> float:
    """ε at δ after T steps of the sampled Gaussian mechanism.

    Args:
        kind: the accountant.
        sample_rate: q in [0, 1].
        noise_multiplier: σ >= 0.
        steps: T >= 0.
        delta: δ in (0, 1).

    Raises:
        ValueError: a parameter is out of range.
    """
    if kind is AccountantKind.PRV:
        # Imported here: PRV needs scipy.integrate/signal/optimize (~50 MB of RSS) that the
        # agent daemon should not hold while idle; the RDP path needs only scipy.special.
        from confide.dp.prv import prv_epsilon

        return prv_epsilon(
            sample_rate=sample_rate, noise_multiplier=noise_multiplier, steps=steps, delta=delta
        )
    curve = rdp_curve(SampledGaussian(sample_rate, noise_multiplier, steps))
    return epsilon_from_rdp(orders=DEFAULT_ORDERS, rdp=curve, delta=delta)[0]


def noise_multiplier_for(
    *,
    kind: AccountantKind,
    target_epsilon: float,
    sample_rate: float,
    steps: int,
    delta: float,
    tolerance: float = 0.01,
) -> float:
    """The σ whose ε is within ``tolerance`` below ``target_epsilon``, never above it.

    Bisection on σ keeps the invariant ε(σ_high) <= target; σ_high is returned, so the
    result never overshoots even where the accountant is not exactly monotone.

    Args:
        kind: the accountant.
        target_epsilon: ε > 0 for the whole run at δ.
        sample_rate: q in (0, 1].
        steps: T >= 1.
        delta: δ in (0, 1).
        tolerance: stop once target - ε(σ) <= tolerance (absolute, in ε).

    Raises:
        ValueError: a parameter is out of range or the target needs σ > 1e6.
    """
    if not target_epsilon > 0.0 or math.isinf(target_epsilon):
        raise ValueError(f"target_epsilon must be a finite number > 0, got {target_epsilon}")
    if not tolerance > 0.0:
        raise ValueError(f"tolerance must be > 0, got {tolerance}")

    def eps(sigma: float) -> float:
        return epsilon(
            kind=kind, sample_rate=sample_rate, noise_multiplier=sigma, steps=steps, delta=delta
        )

    if steps == 0 or sample_rate == 0.0:
        eps(1.0)  # validates the remaining parameters
        return 0.0
    lo, hi = 0.0, 1.0
    eps_hi = eps(hi)
    while eps_hi > target_epsilon:
        lo, hi = hi, 2.0 * hi
        if hi > MAX_NOISE_MULTIPLIER:
            raise ValueError(f"target_epsilon {target_epsilon} needs a noise multiplier > 1e6")
        eps_hi = eps(hi)
    while target_epsilon - eps_hi > tolerance and hi - lo > 1e-9 * hi:
        mid = 0.5 * (lo + hi)
        eps_mid = eps(mid)
        if eps_mid <= target_epsilon:
            hi, eps_hi = mid, eps_mid
        else:
            lo = mid
    return hi


def rdp_curve(
    mechanism: SampledGaussian, *, orders: Sequence[float] = DEFAULT_ORDERS
) -> npt.NDArray[np.float64]:
    """The RDP curve ρ(α) of one mechanism at each order (cached per (q, σ) for the ledger)."""
    q, sigma, steps = mechanism
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if steps == 0:
        return np.zeros(len(orders), dtype=np.float64)
    per_step = _per_step_curve(float(q), float(sigma), tuple(float(a) for a in orders))
    return np.asarray(per_step, dtype=np.float64) * float(steps)


def compose_rdp(
    entries: Sequence[SampledGaussian | tuple[float, float, int]], delta: float
) -> float:
    """ε at δ of the adaptive composition of heterogeneous sampled Gaussian mechanisms.

    The RDP curves of the entries are summed order by order (Mironov 2017, Prop. 1) and the
    sum is converted once (Balle et al. 2020, Thm 21); no entries means ε = 0.

    Args:
        entries: (q, σ, T) for each mechanism, e.g. each round of each job on one dataset.
        delta: δ in (0, 1).

    Raises:
        ValueError: a parameter is out of range.
    """
    total = np.zeros(len(DEFAULT_ORDERS), dtype=np.float64)
    for entry in entries:
        total += rdp_curve(SampledGaussian(*entry))
    return epsilon_from_rdp(orders=DEFAULT_ORDERS, rdp=total, delta=delta)[0]


@functools.lru_cache(maxsize=1024)
def _per_step_curve(q: float, sigma: float, orders: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(
        float(x) for x in rdp(sample_rate=q, noise_multiplier=sigma, steps=1, orders=orders)
    )
