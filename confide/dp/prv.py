# Math notation (σ, α, ρ, δ, ε) in docstrings cites the papers' formulas as written.
# ruff: noqa: RUF002, RUF003
"""PRV accountant: numerical composition of the Poisson-subsampled Gaussian (NumPy/SciPy).

Gopi, Lee, Wutschitz 2021, "Numerical Composition of Differential Privacy" (NeurIPS), Sections
4-5. Symbols:

- ``q``: Poisson sampling rate; ``σ``: noise multiplier (noise std / L2 sensitivity C);
- ``T``: number of steps (self-compositions); ``δ``: target delta;
- μ0 = N(0, σ²) and μ1 = (1 - q)·N(0, σ²) + q·N(1, σ²), the dominating pair of one step;
- ``Y``: the privacy random variable (PRV) of one step, Y = log(μ1(ω)/μ0(ω)) with ω ~ μ1,
  i.e. Y = log(1 - q + q·exp((2ω - 1)/(2σ²))), supported on (log(1 - q), ∞);
- ``h``: the mesh of the grid, ``L``: the half-width of the truncated domain [-L, L].

For any mechanism with PRV Y, δ(ε) = E[(1 - exp(ε - Y))₊] (Gopi et al. Prop. 3.3/Thm 3.5), and
the PRV of a T-fold composition is the sum of T independent copies. The algorithm:

1. Truncate: mass of Y outside [-L - h/2, L + h/2] is charged to δ (union bound, T·p_out).
   L comes from a Chernoff bound on ΣY through the RDP moments (E[e^{(α-1)Y}] = e^{(α-1)ρ(α)}).
2. Discretize: put each bin's mass at its centre k·h, then shift all points by one constant so
   the discrete mean equals the (truncated) continuous mean (Gopi et al. Section 5.1). The
   per-step coupling error Y - Ỹ then has mean 0 and range width h, so by Hoeffding
   |Σ(Y - Ỹ)| <= s = h·sqrt(T·log(1/η)/2) except with probability η (their Theorem 5.5).
3. Compose: T-fold circular convolution by FFT; mass that wraps around is bounded by the
   Chernoff tail of step 1 and charged to δ.
4. Invert: δ̃(ε) is exact between grid points, so ε̃(δ) is solved in closed form; then
   ε_upper = ε̃(δ - δ_err) + s and ε_lower = ε̃(δ + δ_err) - s.

The mesh is h = eps_error / sqrt(T·log(1/η)/2), so s = eps_error and
ε_lower <= ε_true <= ε_upper with ε_upper - ε̃ ≈ eps_error. For q = 1 the composition is an
exact Gaussian and the analytic formula of Balle & Wang 2018 ("Improving the Gaussian
Mechanism for Differential Privacy", Theorem 8) is used instead.

The pair (μ1 ‖ μ0) is the one Opacus's PRVAccountant and the RDP analysis of Mironov et al.
2019 use; Opacus is this module's test reference.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import numpy.typing as npt
from scipy import fft, integrate, signal  # type: ignore[import-untyped]
from scipy.optimize import brentq  # type: ignore[import-untyped]
from scipy.special import log_ndtr, ndtr  # type: ignore[import-untyped]

from confide.dp.rdp import DEFAULT_ORDERS, rdp

__all__ = ["EpsilonBounds", "prv_epsilon", "prv_epsilon_bounds"]

_MAX_GRID = 1 << 25
"""Largest FFT grid (points) we agree to build; ~0.5 GiB of complex128 at most."""

FloatArray = npt.NDArray[np.float64]


@dataclasses.dataclass(frozen=True, slots=True)
class EpsilonBounds:
    """ε for a δ: a certified lower bound, the numerical estimate, and a certified upper bound."""

    lower: float
    estimate: float
    upper: float


def prv_epsilon(
    *,
    sample_rate: float,
    noise_multiplier: float,
    steps: int,
    delta: float,
    eps_error: float = 0.01,
) -> float:
    """Certified upper bound on ε at δ for T steps of the Poisson-subsampled Gaussian.

    Args:
        sample_rate: q in [0, 1].
        noise_multiplier: σ >= 0.
        steps: T >= 0.
        delta: δ in (0, 1).
        eps_error: the additive slack in ε the discretization may cost (s above).

    Raises:
        ValueError: a parameter is out of range, or the grid it needs is too large.
    """
    return prv_epsilon_bounds(
        sample_rate=sample_rate,
        noise_multiplier=noise_multiplier,
        steps=steps,
        delta=delta,
        eps_error=eps_error,
    ).upper


def prv_epsilon_bounds(
    *,
    sample_rate: float,
    noise_multiplier: float,
    steps: int,
    delta: float,
    eps_error: float = 0.01,
    delta_error: float | None = None,
) -> EpsilonBounds:
    """Lower bound, estimate and upper bound on ε at δ (Gopi et al. 2021, Section 5).

    Args:
        sample_rate: q in [0, 1].
        noise_multiplier: σ >= 0.
        steps: T >= 0.
        delta: δ in (0, 1).
        eps_error: the additive slack s in ε spent on discretization.
        delta_error: the δ slack spent on truncation and coupling; default δ/1000.

    Raises:
        ValueError: a parameter is out of range, or the grid it needs is too large.
    """
    q, sigma = float(sample_rate), float(noise_multiplier)
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"sample_rate must be in [0, 1], got {sample_rate}")
    if not sigma >= 0.0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if not eps_error > 0.0:
        raise ValueError(f"eps_error must be > 0, got {eps_error}")
    d_err = delta / 1000.0 if delta_error is None else float(delta_error)
    if not 0.0 < d_err < delta:
        raise ValueError(f"delta_error must be in (0, delta), got {delta_error}")
    if steps == 0 or q == 0.0:
        return EpsilonBounds(0.0, 0.0, 0.0)
    if sigma == 0.0:
        return EpsilonBounds(math.inf, math.inf, math.inf)
    if q == 1.0:
        eps = _gaussian_epsilon(mu=math.sqrt(steps) / sigma, delta=delta)
        return EpsilonBounds(eps, eps, eps)
    return _prv_bounds(q, sigma, steps, delta, eps_error, d_err)


def _prv_bounds(
    q: float, sigma: float, steps: int, delta: float, eps_error: float, d_err: float
) -> EpsilonBounds:
    eta_h = d_err / 2.0  # Hoeffding coupling failure
    eta_tail = d_err / 4.0  # mass of the composed sum outside [-L, L] (wrap-around)
    eta_trunc = d_err / 4.0  # T · per-step mass outside the grid
    h = eps_error / math.sqrt(steps * math.log(1.0 / eta_h) / 2.0)
    big_l = _domain_half_width(q, sigma, steps, eta_tail) + 2.0 * eps_error
    while True:
        m = math.ceil(big_l / h)
        n = fft.next_fast_len(2 * m + 1, real=True)
        if n > _MAX_GRID:
            raise ValueError(
                f"the PRV grid would need {n} points; raise eps_error (now {eps_error})"
            )
        k_min = -(n // 2)
        edges = (np.arange(n + 1, dtype=np.float64) + k_min - 0.5) * h
        cdf, sf = _cdf(edges, q, sigma), _sf(edges, q, sigma)
        p_out = float(cdf[0] + sf[-1])
        if steps * p_out <= eta_trunc:
            break
        big_l *= 1.5
    # Bin masses, from whichever of CDF and survival function is accurate on that side.
    mass = np.where(cdf[1:] < 0.5, cdf[1:] - cdf[:-1], sf[:-1] - sf[1:])
    mass = np.clip(mass, 0.0, None)
    p_in = float(mass.sum())
    mass /= p_in
    centres = (np.arange(n, dtype=np.float64) + k_min) * h
    mean_cont, mean_err = _truncated_mean(q, sigma, float(edges[0]), float(edges[-1]), p_in)
    shift = mean_cont - float(np.dot(centres, mass))
    # Hoeffding slack, widened by what the mean's quadrature error can add over T steps.
    s = h * math.sqrt(steps * math.log(1.0 / eta_h) / 2.0) + steps * mean_err
    composed = _self_compose(mass, steps, k_min)
    values = centres + steps * shift
    slack = eta_h + eta_tail + eta_trunc
    est = _epsilon_for_delta(values, composed, h, delta)
    upper = _epsilon_for_delta(values, composed, h, delta - slack) + s
    lower = _epsilon_for_delta(values, composed, h, delta + slack) - s
    return EpsilonBounds(max(lower, 0.0), max(est, 0.0), max(upper, 0.0))


def _domain_half_width(q: float, sigma: float, steps: int, eta: float) -> float:
    """L with P(ΣY >= L) <= eta and P(ΣY <= -L) <= eta, by Chernoff through RDP moments.

    Upper: P(ΣY >= L) <= exp((α-1)(T·ρ(α) - L)). Lower: E_{μ1}[e^{-λY}] = e^{(λ-1)D_λ(μ0‖μ1)}
    and D_λ(μ0‖μ1) <= D_λ(μ1‖μ0) = ρ(λ) for the sampled Gaussian (Mironov et al. 2019,
    Theorem 5), so P(ΣY <= -L) <= exp(T(λ-1)ρ(λ) - λL).
    """
    orders = np.asarray(DEFAULT_ORDERS, dtype=np.float64)
    total = rdp(sample_rate=q, noise_multiplier=sigma, steps=steps, orders=DEFAULT_ORDERS)
    log_inv = math.log(1.0 / eta)
    upper = float(np.min(total + log_inv / (orders - 1.0)))
    lower = float(np.min(((orders - 1.0) * total + log_inv) / orders))
    return max(upper, lower, 1.0)


def _omega(t: FloatArray, q: float, sigma: float) -> FloatArray:
    """ω with Y(ω) = t, for t > log(1 - q): σ²·log((e^t - 1 + q)/q) + 1/2."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        small = np.log(np.expm1(np.minimum(t, 0.0)) + q)
        large = t + np.log1p((q - 1.0) * np.exp(-np.maximum(t, 0.0)))
        log_term = np.where(t <= 0.0, small, large)
    return np.asarray(sigma**2 * (log_term - math.log(q)) + 0.5, dtype=np.float64)


def _cdf(t: FloatArray, q: float, sigma: float) -> FloatArray:
    """P(Y <= t) = (1-q)Φ(ω/σ) + qΦ((ω-1)/σ) at ω = ω(t); 0 below the support."""
    inside = t > math.log1p(-q)
    w = _omega(np.where(inside, t, 0.0), q, sigma)
    val = (1.0 - q) * ndtr(w / sigma) + q * ndtr((w - 1.0) / sigma)
    return np.asarray(np.where(inside, val, 0.0), dtype=np.float64)


def _sf(t: FloatArray, q: float, sigma: float) -> FloatArray:
    """P(Y > t), computed directly so far-tail masses keep their relative precision."""
    inside = t > math.log1p(-q)
    w = _omega(np.where(inside, t, 0.0), q, sigma)
    val = (1.0 - q) * ndtr(-w / sigma) + q * ndtr((1.0 - w) / sigma)
    return np.asarray(np.where(inside, val, 1.0), dtype=np.float64)


def _truncated_mean(
    q: float, sigma: float, t_lo: float, t_hi: float, p_in: float
) -> tuple[float, float]:
    """E[Y | t_lo <= Y <= t_hi] by quadrature over ω, and a bound on its absolute error."""
    log_q, log_1mq = math.log(q), math.log1p(-q)

    def integrand(w: float) -> float:
        y = float(np.logaddexp(log_1mq, log_q + (2.0 * w - 1.0) / (2.0 * sigma**2)))
        dens = (1.0 - q) * math.exp(-0.5 * (w / sigma) ** 2) + q * math.exp(
            -0.5 * ((w - 1.0) / sigma) ** 2
        )
        return y * dens / (sigma * math.sqrt(2.0 * math.pi))

    far = 40.0 * sigma + 1.0
    lo = float(_omega(np.array([t_lo]), q, sigma)[0]) if t_lo > log_1mq else -far
    hi = float(_omega(np.array([t_hi]), q, sigma)[0])
    lo, hi = max(lo, -far), min(hi, far + 1.0)
    z0 = sigma**2 * math.log(1.0 / q - 1.0) + 0.5
    pts = sorted({p for p in (0.0, 0.5, 1.0, z0) if lo < p < hi})
    val, err = integrate.quad(
        integrand, lo, hi, points=pts or None, limit=500, epsabs=1e-15, epsrel=1e-12
    )
    return float(val) / p_in, float(err) / p_in + 1e-15


def _self_compose(mass: FloatArray, steps: int, k_min: int) -> FloatArray:
    """T-fold circular self-convolution of a pmf on grid indices k_min..k_min+n-1 by FFT."""
    n = mass.size
    spectrum = fft.rfft(np.roll(mass, k_min))
    out = fft.irfft(np.power(spectrum, steps), n=n)
    return np.asarray(np.clip(np.roll(out, -k_min), 0.0, None), dtype=np.float64)


def _epsilon_for_delta(values: FloatArray, pmf: FloatArray, h: float, delta: float) -> float:
    """Solve δ(ε) = Σ_{v>ε} p_v (1 - e^{ε-v}) = delta exactly on a uniform grid of step h.

    With T1_j = Σ_{i>j} p_i and T2_j = Σ_{i>j} p_i e^{v_j - v_i} (a first-order recursion,
    run as an IIR filter), δ(v_j) = T1_j - T2_j, and for ε in [v_j, v_{j+1})
    δ(ε) = T1_j - e^{ε - v_j}·T2_j.
    """
    if delta <= 0.0:
        return math.inf
    rev = pmf[::-1]
    decay = math.exp(-h)
    t1 = np.concatenate([np.cumsum(rev)[:-1][::-1], [0.0]])
    t2_rev = signal.lfilter([0.0, decay], [1.0, -decay], rev)
    t2 = np.asarray(t2_rev[::-1], dtype=np.float64)
    d = t1 - t2
    above = np.nonzero(d > delta)[0]
    if above.size == 0:
        return float(values[0])
    j = int(above[-1])
    if j == values.size - 1 or t2[j] <= 0.0:
        return math.inf
    return float(values[j] + math.log((t1[j] - delta) / t2[j]))


def _gaussian_epsilon(*, mu: float, delta: float) -> float:
    """ε at δ of a Gaussian mechanism with μ = sensitivity/std (Balle & Wang 2018, Thm 8).

    δ(ε) = Φ(-ε/μ + μ/2) - e^ε Φ(-ε/μ - μ/2), solved for ε by bracketing root search.
    """

    def excess(eps: float) -> float:
        a = float(log_ndtr(-eps / mu + mu / 2.0))
        b = eps + float(log_ndtr(-eps / mu - mu / 2.0))
        return math.exp(a) - math.exp(b) - delta if b < a else -delta

    if excess(0.0) <= 0.0:
        return 0.0
    hi = 1.0
    while excess(hi) > 0.0:
        hi *= 2.0
    return float(brentq(excess, 0.0, hi, xtol=1e-12, rtol=1e-12))
