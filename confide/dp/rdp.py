# Math notation (σ, α, ρ, δ, ε) in docstrings cites the papers' formulas as written.
# ruff: noqa: RUF002, RUF003
"""Rényi-DP accountant for the Poisson-sampled Gaussian mechanism (pure NumPy/SciPy).

Symbols used throughout:

- ``q``: sampling rate; each record joins a step's batch independently with probability q.
- ``σ`` (``noise_multiplier``, z): Gaussian noise std divided by the L2 sensitivity C.
- ``T`` (``steps``): number of compositions of the mechanism.
- ``α`` (order): the Rényi order, α > 1.
- ``δ``: the target failure probability of (ε, δ)-DP.

The sampled Gaussian mechanism (SGM) on neighbouring datasets is dominated by the pair
μ0 = N(0, σ²) and μ1 = (1 - q)·N(0, σ²) + q·N(1, σ²). Its Rényi divergence of order α is

    ε_RDP(α) = log(A_α) / (α - 1),   A_α = E_{x~μ0}[(μ1(x) / μ0(x))^α]

(Mironov, Talwar, Zhang 2019, "Rényi Differential Privacy of the Sampled Gaussian Mechanism",
Section 3). For integer α, A_α has the closed binomial form of Section 3.2; for fractional α
it is the two convergent series of Section 3.3 split at z0 = σ²·log(1/q - 1) + 1/2. RDP
composes additively over steps (Mironov 2017, "Rényi Differential Privacy", Prop. 1), and
is converted to (ε, δ)-DP with the improved bound of Balle, Barthe, Gaboardi, Hsu, Sato 2020
("Hypothesis Testing Interpretations and Rényi Differential Privacy", Theorem 21).

This is the same analysis Opacus and TF-Privacy implement; Opacus is used only as the test
reference because importing it imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy.special import gammaln, log_ndtr, logsumexp  # type: ignore[import-untyped]

__all__ = ["DEFAULT_ORDERS", "epsilon_from_rdp", "rdp"]

DEFAULT_ORDERS: tuple[float, ...] = (
    tuple(1.0 + x / 10.0 for x in range(1, 100))
    + tuple(float(a) for a in range(12, 64))
    + (64.0, 80.0, 96.0, 128.0, 192.0, 256.0, 512.0, 1024.0)
)
"""Orders searched by default: Opacus's default set plus a few large orders, which only
help (smaller ε) in the high-noise, small-ε regime."""

_FRAC_CHUNK = 512
_FRAC_MAX_TERMS = 1 << 20


def rdp(
    *,
    sample_rate: float,
    noise_multiplier: float,
    steps: int,
    orders: Sequence[float] = DEFAULT_ORDERS,
) -> npt.NDArray[np.float64]:
    """RDP ε_RDP(α) of T steps of the sampled Gaussian mechanism at each order α.

    Args:
        sample_rate: q in [0, 1].
        noise_multiplier: σ >= 0 (σ = 0 means no privacy: ε_RDP = ∞).
        steps: T >= 0.
        orders: Rényi orders α > 1.

    Raises:
        ValueError: a parameter is out of range.
    """
    q = float(sample_rate)
    sigma = float(noise_multiplier)
    if not 0.0 <= q <= 1.0 or not math.isfinite(q):
        raise ValueError(f"sample_rate must be in [0, 1], got {sample_rate}")
    if not sigma >= 0.0 or math.isnan(sigma):
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    alphas = np.asarray(orders, dtype=np.float64)
    if alphas.ndim != 1 or alphas.size == 0 or not np.all(alphas > 1.0):
        raise ValueError("orders must be a non-empty sequence of numbers > 1")
    per_step = np.array([_rdp_one(q, sigma, float(a)) for a in alphas], dtype=np.float64)
    if steps == 0:
        return np.zeros_like(per_step)
    return per_step * float(steps)


def epsilon_from_rdp(
    *, orders: Sequence[float], rdp: Sequence[float] | npt.NDArray[np.float64], delta: float
) -> tuple[float, float]:
    """Smallest ε over the orders for which the RDP curve gives (ε, δ)-DP, and that order.

    Balle et al. 2020, Theorem 21: an (α, ρ)-RDP mechanism is (ε, δ)-DP with
    ε = ρ + log((α - 1)/α) - (log δ + log α)/(α - 1).
    The result is floored at 0 (a mechanism is always (0, δ)-DP when ρ is small enough).

    Args:
        orders: Rényi orders α > 1.
        rdp: ρ(α) at each order (same length as ``orders``).
        delta: δ in (0, 1).

    Raises:
        ValueError: the lengths differ or δ is not in (0, 1).
    """
    a = np.asarray(orders, dtype=np.float64)
    r = np.asarray(rdp, dtype=np.float64)
    if a.shape != r.shape or a.ndim != 1 or a.size == 0:
        raise ValueError("orders and rdp must be non-empty 1-D sequences of the same length")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    with np.errstate(invalid="ignore", over="ignore"):
        eps = r + np.log((a - 1.0) / a) - (math.log(delta) + np.log(a)) / (a - 1.0)
    if np.all(r == 0.0):
        return 0.0, float(a[-1])  # a mechanism with zero Rényi divergence is (0, 0)-DP
    eps = np.where(np.isnan(eps), np.inf, eps)
    idx = int(np.argmin(eps))
    return max(float(eps[idx]), 0.0), float(a[idx])


def _rdp_one(q: float, sigma: float, alpha: float) -> float:
    """ε_RDP(α) of one step (Mironov et al. 2019, Section 3)."""
    if q == 0.0:
        return 0.0
    if sigma == 0.0 or math.isinf(alpha):
        return math.inf
    if q == 1.0:
        # Plain Gaussian mechanism with sensitivity 1: α / (2σ²) (Mironov 2017, Prop. 7).
        return alpha / (2.0 * sigma**2)
    if float(alpha).is_integer():
        log_a = _log_a_int(q, sigma, int(alpha))
    else:
        log_a = _log_a_frac(q, sigma, alpha)
    return max(log_a, 0.0) / (alpha - 1.0)


def _log_a_int(q: float, sigma: float, alpha: int) -> float:
    """log A_α for integer α (Section 3.2): Σ_k C(α,k)(1-q)^(α-k) q^k exp((k²-k)/(2σ²))."""
    k = np.arange(alpha + 1, dtype=np.float64)
    log_binom = gammaln(alpha + 1.0) - gammaln(k + 1.0) - gammaln(alpha - k + 1.0)
    terms = (
        log_binom + (alpha - k) * math.log1p(-q) + k * math.log(q) + (k * k - k) / (2.0 * sigma**2)
    )
    return float(logsumexp(terms))


def _log_a_frac(q: float, sigma: float, alpha: float) -> float:
    """log A_α for fractional α (Section 3.3), as two generalized-binomial series.

    A_α = Σ_{i>=0} C(α,i) q^i (1-q)^(α-i) exp((i²-i)/(2σ²)) Φ((z0 - i)/σ)
        + Σ_{i>=0} C(α,i) q^(α-i) (1-q)^i exp(((α-i)²-(α-i))/(2σ²)) Φ((α - i - z0)/σ),
    with z0 = σ² log(1/q - 1) + 1/2 and Φ the standard normal CDF. C(α, i) changes sign for
    i > α, so the tail alternates; terms are summed in chunks until they are negligible.
    """
    z0 = sigma**2 * math.log(1.0 / q - 1.0) + 0.5
    log_q = math.log(q)
    log_1mq = math.log1p(-q)
    two_s2 = 2.0 * sigma**2
    floor_a = math.floor(alpha)
    log_mags: list[npt.NDArray[np.float64]] = []
    signs: list[npt.NDArray[np.float64]] = []
    start = 0
    while True:
        i = np.arange(start, start + _FRAC_CHUNK, dtype=np.float64)
        log_binom = gammaln(alpha + 1.0) - gammaln(i + 1.0) - gammaln(alpha - i + 1.0)
        # C(α, i) has max(0, i - ⌊α⌋ - 1) negative factors (α - j for ⌊α⌋ < j < i).
        negatives = np.maximum(i - floor_a - 1.0, 0.0)
        sign = np.where(negatives % 2 == 1, -1.0, 1.0)
        j = alpha - i
        t1 = log_binom + i * log_q + j * log_1mq + (i * i - i) / two_s2 + log_ndtr((z0 - i) / sigma)
        t2 = log_binom + j * log_q + i * log_1mq + (j * j - j) / two_s2 + log_ndtr((j - z0) / sigma)
        log_mags += [t1, t2]
        signs += [sign, sign]
        start += _FRAC_CHUNK
        head = float(logsumexp(np.concatenate(log_mags)))
        tail = max(float(t1[-1]), float(t2[-1]))
        if tail < head - 32.0 or start >= _FRAC_MAX_TERMS:
            break
    total, sgn = logsumexp(np.concatenate(log_mags), b=np.concatenate(signs), return_sign=True)
    if sgn <= 0:  # pragma: no cover - A_α >= 1 mathematically; guard against rounding
        return 0.0
    return float(total)
