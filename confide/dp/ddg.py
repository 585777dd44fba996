# Math notation (σ, γ, β, τ, Δ, α, ε, ‖·‖) in docstrings cites the paper's formulas as written.
# ruff: noqa: RUF001, RUF002, RUF003
"""The distributed discrete Gaussian mechanism (DDG): its parameters and its privacy curve.

Kairouz, Liu, Steinke 2021, "The Distributed Discrete Gaussian Mechanism for Federated
Learning with Secure Aggregation" (ICML; arXiv 2102.06387). Symbols, on the integer grid
unless said otherwise:

- c: the L2 clip norm (``C`` in ``confide.dp.update``), in model units;
- γ: the granularity; a site's update is scaled by 1/γ onto the integer grid;
- d: coordinates of the update; d' = 2^⌈log₂ d⌉ after padding for the rotation;
- β ∈ [0, 1): the conditional-rounding bias;
- σ: each site's discrete Gaussian noise parameter, an integer (σγ in model units);
- n: sites whose noise is in the sum (a site plans with the SecAgg threshold t);
- Δ₂, Δ₁: the L2 and L1 norm bounds of one site's rounded vector.

One site (Section 4, Algorithm 1 of the paper): clip x to ‖x‖₂ <= c and scale by 1/γ; rotate
(``confide.secagg.rotation``); round each coordinate up with probability its fractional
part, independently, and repeat until ‖x̃‖₂² <= Δ₂², where (Theorem 1, Eq. 2)

    Δ₂² = min{ c²/γ² + d'/4 + √(2 ln(1/β))·(c/γ + √d'/2),  (c/γ + √d')² };

add N_Z(0, σ²) to every coordinate (``confide.dp.discrete``) and reduce mod 2^32 for SecAgg.
A try fails with probability at most β (the second bound never fails). Here Δ₂² is floored
to an integer (``norm_bound_sq``) and the test ‖x̃‖₂² <= ⌊Δ₂²⌋ is exact integer arithmetic,
so every released vector obeys the bound the accounting uses; and Δ₁ = Δ₂·min(√d', Δ₂),
since ‖v‖₁ <= √d'·‖v‖₂ and, for integers, |v_j| <= v_j².

Privacy (Proposition 14): for X_1, …, X_n independent with i.i.d. N_Z(0, σ²) coordinates,
σ >= 1/2, Z = Σ X_i, every Δ ∈ Z^{d'} and α >= 1,

    D_α(Z ‖ Z + Δ) <= min{ α‖Δ‖₂²/(2nσ²) + τd',
                          (α/2)·(‖Δ‖₂²/(nσ²) + 2‖Δ‖₁τ/(√n·σ) + τ²d'),
                          (α/2)·(‖Δ‖₂/(√n·σ) + τ√d')² },
    τ = 10·Σ_{k=1}^{n−1} exp(−2π²σ²·k/(k + 1)).

With ‖Δ‖₂ <= Δ₂ and ‖Δ‖₁ <= Δ₁ this is the RDP curve of one release of the sum, for adding
or removing one site (its x̃ is a random vector of norm <= Δ₂; the mixture over it is
handled by quasi-convexity of Rényi divergence, as in the paper's proof of Theorem 1).
Since α·ρ + τd' <= α·(ρ + τd') for α >= 1, it implies ½ε²-zCDP with
ε = min{√(Δ₂²/(nσ²) + 2τd'), Δ₂/(√n·σ) + τ√d'}. At τ = 0 it is the Gaussian mechanism's
α·Δ₂²/(2nσ²) exactly (Mironov 2017, Prop. 7), the continuous limit.

Modular range (Section 4.4 of the paper, adapted): coordinate j of the sum of n sites is a
subgaussian signal part (proxy (n·c/γ)²/d': ‖Σx‖₂ <= nc, and the rotation, see its module),
a rounding part (|·| < n, each site moves a coordinate by less than 1) and the noise (proxy
nσ²: N_Z(0, σ²) is subgaussian with proxy σ², Canonne, Kamath, Steinke 2020, Section 2). The
centered lift decodes it exactly while |S_j| <= H = 2^31 − 1, so a wrap has probability at
most 2d'·exp(−(H − n)²/(2P²)), P² = (n·c/γ)²/d' + nσ² (Hoeffding, union over d'). γ is the
finest granularity keeping this below ``DEFAULT_WRAP_PROBABILITY`` for the most sites one
sum may hold, and σ = ⌊σ_model/γ⌋ (γ then re-set to σ_model/σ, so σγ is exactly the planned
noise std).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from confide.dp.discrete import MAX_SIGMA
from confide.dp.rdp import DEFAULT_ORDERS

__all__ = [
    "DEFAULT_BETA",
    "DEFAULT_WRAP_PROBABILITY",
    "MIN_LEVELS",
    "DdgParams",
    "ddg_params",
    "ddg_rdp",
    "rounded_norm_bound_sq",
    "scaled_rdp",
    "sum_tau",
    "wrap_probability",
]

DEFAULT_BETA = math.exp(-0.5)
"""β = e^−½, the paper's choice in its experiments (Section 6): √(2 ln(1/β)) = 1."""

DEFAULT_WRAP_PROBABILITY = 1e-9
"""The most a round's modular sum may wrap, over all its coordinates (a utility bound)."""

MIN_LEVELS = 256
"""The fewest grid steps across the clip norm (c/γ) a job may have: below, rounding swamps
the update (a utility bound; the accounting is right at any γ)."""

_HALF_RANGE = (1 << 31) - 1
"""H: the centered lift of a mod-2^32 sum decodes every |S_j| <= H exactly."""

_MAX_NORM = float(1 << 31)
"""c/γ + √d' <= 2^31 keeps ‖x̃‖₂² below 2^62, so the exact int64 norm test cannot overflow."""


@dataclass(frozen=True, slots=True)
class DdgParams:
    """One job's distributed discrete Gaussian parameters (see the module docstring).

    Args:
        clip_norm: c, in model units.
        granularity: γ > 0.
        sigma: σ, each site's noise on the integer grid (0: no noise).
        dim: d', the padded dimension (a power of two).
        beta: β, the conditional-rounding bias.
        norm_bound_sq: ⌊Δ₂²⌋, the exact bound every rounded vector obeys.
        max_summands: the most sites one sum may hold (what the range was sized for).
    """

    clip_norm: float
    granularity: float
    sigma: int
    dim: int
    beta: float
    norm_bound_sq: int
    max_summands: int

    @property
    def l2_sensitivity(self) -> float:
        """Δ₂ = √⌊Δ₂²⌋ on the integer grid."""
        return math.sqrt(self.norm_bound_sq)

    @property
    def l1_sensitivity(self) -> float:
        """Δ₁ = Δ₂·min(√d', Δ₂) on the integer grid."""
        l2 = self.l2_sensitivity
        return l2 * min(math.sqrt(self.dim), l2)

    @property
    def noise_std(self) -> float:
        """σγ: each site's noise std in model units."""
        return self.sigma * self.granularity


def rounded_norm_bound_sq(*, norm: float, dim: int, beta: float) -> float:
    """Δ₂² for a vector of L2 norm <= ``norm`` on the grid, after conditional rounding.

    Theorem 1, Eq. 2 of the paper: min{norm² + d/4 + √(2 ln(1/β))·(norm + √d/2),
    (norm + √d)²}; β = 0 keeps only the second (deterministic) bound.

    Raises:
        ValueError: norm < 0, d < 1 or β outside [0, 1).
    """
    if not (math.isfinite(norm) and norm >= 0.0):
        raise ValueError(f"norm must be a finite number >= 0, got {norm}")
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    sure = (norm + math.sqrt(dim)) ** 2
    if beta == 0.0:
        return sure
    likely = (
        norm**2 + dim / 4.0 + math.sqrt(2.0 * math.log(1.0 / beta)) * (norm + math.sqrt(dim) / 2.0)
    )
    return min(likely, sure)


def sum_tau(*, sigma: float, summands: int) -> float:
    """τ = 10·Σ_{k=1}^{n−1} exp(−2π²σ²·k/(k+1)) (Proposition 14); 0 for n = 1.

    Raises:
        ValueError: σ < 1/2 or n < 1.
    """
    if not sigma >= 0.5:
        raise ValueError(f"sigma must be >= 1/2 (Proposition 14), got {sigma}")
    if summands < 1:
        raise ValueError(f"summands must be >= 1, got {summands}")
    k = np.arange(1, summands, dtype=np.float64)
    return float(10.0 * np.sum(np.exp(-2.0 * math.pi**2 * sigma**2 * k / (k + 1.0))))


def ddg_rdp(
    *,
    l2_sensitivity: float,
    l1_sensitivity: float,
    sigma: float,
    summands: int,
    dim: int,
    orders: Sequence[float] = DEFAULT_ORDERS,
) -> npt.NDArray[np.float64]:
    """The RDP curve of one release of a sum of n discrete Gaussians (Proposition 14).

    Args:
        l2_sensitivity: ‖Δ‖₂ bound on the integer grid.
        l1_sensitivity: ‖Δ‖₁ bound on the integer grid.
        sigma: σ >= 1/2 of each summand's N_Z(0, σ²).
        summands: n >= 1.
        dim: d', the number of coordinates.
        orders: Rényi orders α >= 1.

    Raises:
        ValueError: a parameter is out of range.
    """
    if l2_sensitivity < 0 or l1_sensitivity < 0:
        raise ValueError("sensitivities must be >= 0")
    tau = sum_tau(sigma=sigma, summands=summands)
    scale = math.sqrt(summands) * sigma
    return scaled_rdp(
        l2_scale=l2_sensitivity / scale,
        l1_scale=l1_sensitivity / scale,
        tau=tau,
        dim=dim,
        orders=orders,
    )


def scaled_rdp(
    *,
    l2_scale: float,
    l1_scale: float,
    tau: float,
    dim: int,
    orders: Sequence[float] = DEFAULT_ORDERS,
) -> npt.NDArray[np.float64]:
    """Proposition 14's curve with ℓ₂ = ‖Δ‖₂/(√n·σ) and ℓ₁ = ‖Δ‖₁/(√n·σ) given:
    min{αℓ₂²/2 + τd', (α/2)(ℓ₂² + 2ℓ₁τ + τ²d'), (α/2)(ℓ₂ + τ√d')²}.

    Raises:
        ValueError: a negative scale or τ, d' < 1, or an order below 1.
    """
    if l2_scale < 0 or l1_scale < 0 or tau < 0 or dim < 1:
        raise ValueError("scales and tau must be >= 0 and dim >= 1")
    alpha = np.asarray(orders, dtype=np.float64)
    if np.any(alpha < 1.0):
        raise ValueError("Rényi orders must be >= 1")
    first = alpha * l2_scale**2 / 2.0 + tau * dim
    second = alpha / 2.0 * (l2_scale**2 + 2.0 * l1_scale * tau + tau**2 * dim)
    third = alpha / 2.0 * (l2_scale + tau * math.sqrt(dim)) ** 2
    return np.asarray(np.minimum(np.minimum(first, second), third), dtype=np.float64)


def ddg_params(
    *,
    clip_norm: float,
    noise_std: float,
    dim: int,
    max_summands: int,
    beta: float = DEFAULT_BETA,
    wrap: float = DEFAULT_WRAP_PROBABILITY,
) -> DdgParams:
    """Choose γ and σ for a job: the finest grid whose mod-2^32 sum of ``max_summands`` sites
    wraps with probability <= ``wrap`` (see the module docstring).

    Args:
        clip_norm: c > 0 (model units).
        noise_std: each site's noise std in model units (z·c/√m), >= 0.
        dim: d, the unpadded number of coordinates, >= 1.
        max_summands: the most sites one sum may hold, >= 1.
        beta: β in [0, 1).
        wrap: the wrap probability bound, in (0, 1).

    Raises:
        ValueError: a parameter is out of range, or no grid fits ``max_summands`` sites in
            the modulus with at least ``MIN_LEVELS`` steps across the clip norm.
    """
    if not (math.isfinite(clip_norm) and clip_norm > 0.0):
        raise ValueError(f"clip_norm must be a finite number > 0, got {clip_norm}")
    if not (math.isfinite(noise_std) and noise_std >= 0.0):
        raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std}")
    if not 0.0 < wrap < 1.0:
        raise ValueError(f"wrap must be in (0, 1), got {wrap}")
    if max_summands < 1:
        raise ValueError(f"max_summands must be >= 1, got {max_summands}")
    d2 = 1 << (dim - 1).bit_length() if dim >= 1 else 0
    if d2 < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    n = max_summands
    room = _HALF_RANGE - n
    if room <= 0:
        raise ValueError(f"{n} sites' rounding alone exceeds the modulus 2^32")
    k = math.sqrt(2.0 * math.log(2.0 * d2 / wrap))
    spread = math.sqrt(n * n * clip_norm**2 / d2 + n * noise_std**2)
    # 1 + 1e-9: at exactly k·P = H − n the bound equals ``wrap``, and rounding could tip it.
    gamma = max(k * spread / room, clip_norm / (_MAX_NORM - math.sqrt(d2))) * (1.0 + 1e-9)
    if clip_norm / gamma < MIN_LEVELS:
        raise ValueError(
            f"a grid for sums of up to {n} sites leaves {clip_norm / gamma:.3g} steps across "
            f"the clip norm (fewer than {MIN_LEVELS}): allow fewer sites per sum (more bits)"
        )
    sigma = 0
    if noise_std > 0.0:
        sigma = max(1, min(MAX_SIGMA, math.floor(noise_std / gamma)))
        gamma = max(gamma, noise_std / sigma)
    bound = rounded_norm_bound_sq(norm=clip_norm / gamma, dim=d2, beta=beta)
    params = DdgParams(
        clip_norm=float(clip_norm),
        granularity=gamma,
        sigma=sigma,
        dim=d2,
        beta=float(beta),
        norm_bound_sq=math.floor(bound),
        max_summands=n,
    )
    if wrap_probability(params, summands=n) > wrap:
        raise ValueError(f"no grid keeps the sum of {n} sites within the modulus")
    return params


def wrap_probability(params: DdgParams, *, summands: int) -> float:
    """A bound on the chance that the sum of ``summands`` sites leaves [−H, H] in any
    coordinate: 2d'·exp(−(H − n)²/(2P²)), P² = (n·c/γ)²/d' + nσ² (module docstring)."""
    n = summands
    room = _HALF_RANGE - n
    if room <= 0:
        return 1.0
    c = params.clip_norm / params.granularity
    p2 = n * n * c * c / params.dim + n * float(params.sigma) ** 2
    if p2 == 0.0:
        return 0.0
    return min(1.0, 2.0 * params.dim * math.exp(-(room**2) / (2.0 * p2)))
