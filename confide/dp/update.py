# Math notation (σ, α, ρ, δ, ε) in docstrings cites the papers' formulas as written.
# ruff: noqa: RUF002, RUF003
"""Update-level protection applied by the trusted daemon (never by job code): clip and noise.

Symbols:

- ``Δ``: a site's model update (flattened);
- ``C`` (``clip_norm``): the L2 bound every released update is clipped to (the sensitivity of
  one site's contribution to the sum);
- ``z`` (``noise_multiplier``): noise std of the *sum* divided by C;
- ``m`` (``min_sites``): sites a round is planned for; ``s`` (``sites_survived``): sites whose
  update enters the sum;
- ``σ_eff``: the noise multiplier the sum actually carries.

Mechanism: each site releases clip(Δ) + N(0, std²·I). With secure aggregation on (distributed
DP: Kairouz, Liu, Steinke 2021, "The Distributed Discrete Gaussian Mechanism for Federated
Learning with Secure Aggregation", Section 2, here with continuous noise), each site adds
std = z·C/√m, so a sum of m sites carries std z·C: a Gaussian mechanism with sensitivity C
(Dwork & Roth 2014, Section 3.5.3) and noise multiplier z. If only s < m sites survive, the sum
carries std z·C·√(s/m): σ_eff = z·√(s/m). Without secure aggregation the aggregator sees each
site's update alone, so each site adds the full std z·C and σ_eff = z.

Accounting lives in ``confide.dp.budget`` (``update_cost``, ``site_curve``): one formula for
σ_eff, used by the daemon's ledger and tested there.

Noise is drawn in float64 by NumPy; like Opacus without secure_mode, this is not hardened
against the floating-point attack of Mironov 2012 ("On Significance of the Least Significant
Bits for Differential Privacy"). ``system_rng`` keys a Philox generator from os.urandom.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import numpy.typing as npt

from confide.errors import NonFiniteValue

__all__ = ["add_noise", "clip", "noise_std", "system_rng"]

_TINY = 1e-12


def clip(delta: npt.NDArray[Any], *, clip_norm: float) -> tuple[npt.NDArray[Any], float]:
    """Scale Δ so that ‖Δ‖₂ <= C, and return it with the original norm.

    Δ is scaled by min(1, C/(‖Δ‖ + tiny)) in float64; if rounding to Δ's dtype leaves the
    norm above C(1 - 10⁻¹²), the factor shrinks by one part in 10⁶ until it does not, so
    the returned update never exceeds C.

    Args:
        delta: the update, any shape, a floating dtype.
        clip_norm: C > 0.

    Raises:
        ValueError: C is not a finite number > 0 or Δ is not floating point.
        NonFiniteValue: Δ holds NaN or infinity.
    """
    if not (math.isfinite(clip_norm) and clip_norm > 0.0):
        raise ValueError(f"clip_norm must be a finite number > 0, got {clip_norm}")
    arr = np.asarray(delta)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"update must be floating point, got {arr.dtype}")
    wide = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(wide)):
        raise NonFiniteValue("the update holds NaN or infinity")
    norm = _l2(wide)
    if not math.isfinite(norm):
        raise NonFiniteValue("the update's L2 norm overflows")
    factor = min(1.0, clip_norm / (norm + _TINY))
    out = (wide * factor).astype(arr.dtype)
    # Leave a margin of 1e-12 relative so that any other way of summing the squares (a
    # different order, BLAS) still finds a norm <= C.
    bound = clip_norm * (1.0 - 1e-12)
    while max(_l2(out), float(np.linalg.norm(out.astype(np.float64).ravel()))) > bound:
        factor *= 1.0 - 1e-6
        out = (wide * factor).astype(arr.dtype)
    return out, norm


def noise_std(
    *, clip_norm: float, noise_multiplier: float, min_sites: int, distributed: bool
) -> float:
    """The std of the Gaussian noise one site adds to its clipped update.

    Distributed (secure aggregation on): z·C/√m, so m shares sum to std z·C.
    Local (no secure aggregation): z·C.

    Raises:
        ValueError: C <= 0, z < 0, or m < 1.
    """
    if not (math.isfinite(clip_norm) and clip_norm > 0.0):
        raise ValueError(f"clip_norm must be a finite number > 0, got {clip_norm}")
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0.0):
        raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier}")
    if min_sites < 1:
        raise ValueError(f"min_sites must be >= 1, got {min_sites}")
    total = noise_multiplier * clip_norm
    return total / math.sqrt(min_sites) if distributed else total


def add_noise(
    x: npt.NDArray[Any], *, std: float, rng: np.random.Generator
) -> npt.NDArray[np.float64]:
    """x + N(0, std²·I), computed and returned in float64.

    Args:
        x: the clipped update.
        std: the noise std (from ``noise_std``), >= 0.
        rng: the generator; the daemon passes ``system_rng()``, tests a seeded one.

    Raises:
        ValueError: std is negative or not finite.
    """
    if not (math.isfinite(std) and std >= 0.0):
        raise ValueError(f"std must be a finite number >= 0, got {std}")
    arr = np.asarray(x, dtype=np.float64)
    if std == 0.0:
        return arr.copy()
    return arr + rng.normal(0.0, std, size=arr.shape)


def system_rng() -> np.random.Generator:
    """A Philox generator keyed with 256 bits from os.urandom, for the daemon's noise."""
    seed = np.random.SeedSequence(int.from_bytes(os.urandom(32), "little"))
    return np.random.Generator(np.random.Philox(seed))


def _l2(x: npt.NDArray[Any]) -> float:
    flat = np.asarray(x, dtype=np.float64).ravel()
    scale = float(np.max(np.abs(flat))) if flat.size else 0.0
    if scale == 0.0:
        return 0.0
    return scale * float(np.sqrt(np.dot(flat / scale, flat / scale)))
