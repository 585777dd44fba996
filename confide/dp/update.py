# Math notation (σ, α, ρ, δ, ε) in docstrings cites the papers' formulas as written.
# ruff: noqa: RUF002, RUF003
"""Update-level protection applied by the trusted daemon (never by job code): clip and noise.

Symbols:

- ``Δ``: a site's model update (flattened), ``n``: the number of records in the dataset;
- ``C`` (``clip_norm``): the L2 bound every released update is clipped to (the sensitivity of
  one site's contribution to the sum);
- ``z`` (``noise_multiplier``): noise std of the *sum* divided by C;
- ``m`` (``min_sites``): sites a round is planned for; ``s`` (``sites_survived``): sites whose
  update enters the sum;
- ``σ_eff``: the noise multiplier the sum actually carries; ``T`` (``rounds``); ``δ``.

Mechanism: each site releases clip(Δ) + N(0, std²·I). With secure aggregation on (distributed
DP: Kairouz, Liu, Steinke 2021, "The Distributed Discrete Gaussian Mechanism for Federated
Learning with Secure Aggregation", Section 2, here with continuous noise), each site adds
std = z·C/√m, so a sum of m sites carries std z·C: a Gaussian mechanism with sensitivity C
(Dwork & Roth 2014, Section 3.5.3) and noise multiplier z. If only s < m sites survive, the sum
carries std z·C·√(s/m): σ_eff = z·√(s/m). Without secure aggregation the aggregator sees each
site's update alone, so each site adds the full std z·C and σ_eff = z.

Accounting (``update_epsilon``) is site-level: the adjacency is adding or removing one site's
update, sensitivity C, q = 1, composed over T rounds by RDP of the Gaussian mechanism
(Mironov 2017, Prop. 7: ρ(α) = α/(2σ_eff²) per round) and converted with Balle et al. 2020.
It assumes the other sites' noise stays secret: a coalition of c sites that reveals its own
noise lowers σ_eff to z·√((s - c)/m).

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

from confide.dp.accountant import SampledGaussian, compose_rdp
from confide.errors import ConfigError, NonFiniteValue

__all__ = [
    "add_noise",
    "clip",
    "effective_noise_multiplier",
    "noise_std",
    "system_rng",
    "update_epsilon",
    "validate_record_privacy",
    "validate_update_privacy",
]

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


def effective_noise_multiplier(
    *, noise_multiplier: float, sites_survived: int, min_sites: int, distributed: bool
) -> float:
    """σ_eff, the noise multiplier the released sum carries for one site's update.

    Distributed: z·√(min(s, m)/m). More than m survivors would add noise, but the daemon
    never claims credit for sites beyond the plan. The daemon plans with s = the secure-
    aggregation threshold t (the fewest survivors for which the sum can be unmasked at all),
    so the bound holds however many sites drop. Local: z.

    Raises:
        ValueError: z < 0, m < 1, or s < 1.
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0.0):
        raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier}")
    if min_sites < 1 or sites_survived < 1:
        raise ValueError("min_sites and sites_survived must be >= 1")
    if not distributed:
        return noise_multiplier
    return noise_multiplier * math.sqrt(min(sites_survived, min_sites) / min_sites)


def update_epsilon(
    *,
    noise_multiplier: float,
    rounds: int,
    delta: float,
    sites_survived: int,
    min_sites: int,
    distributed: bool,
) -> float:
    """Site-level ε at δ after T rounds of clipped, noised updates (see the module docstring).

    Args:
        noise_multiplier: z >= 0 asked by the job (0 gives ε = ∞).
        rounds: T >= 0 rounds this site took part in.
        delta: δ in (0, 1).
        sites_survived: s, the survivors to account for; pass the threshold t as the plan.
        min_sites: m, the sites the noise shares were sized for.
        distributed: whether secure aggregation hides single updates.

    Raises:
        ValueError: a parameter is out of range.
    """
    sigma = effective_noise_multiplier(
        noise_multiplier=noise_multiplier,
        sites_survived=sites_survived,
        min_sites=min_sites,
        distributed=distributed,
    )
    return compose_rdp([SampledGaussian(1.0, sigma, rounds)], delta)


def validate_record_privacy(
    *,
    noise_multiplier: float,
    target_epsilon: float,
    max_grad_norm: float,
    delta: float,
    dataset_size: int | None = None,
    prefix: str = "privacy.sample",
) -> None:
    """Check DP-SGD parameters; 0 means "not given" for noise_multiplier and target_epsilon.

    δ must lie in (0, 1) and, when the dataset size n is known, below 1/n: a δ of 1/n or more
    allows a mechanism that publishes one whole record outright ("just release one record at
    random" is (0, 1/n)-DP), so such δ gives no meaningful guarantee (Dwork & Roth 2014, 2.3).

    Raises:
        ConfigError: naming ``<prefix>.<field>`` for the first invalid field.
    """
    z_key, e_key = f"{prefix}.noise_multiplier", f"{prefix}.target_epsilon"
    if not math.isfinite(noise_multiplier) or noise_multiplier < 0.0:
        raise ConfigError(z_key, f"must be a finite number >= 0, got {noise_multiplier}")
    if not math.isfinite(target_epsilon) or target_epsilon < 0.0:
        raise ConfigError(e_key, f"must be a finite number > 0, got {target_epsilon}")
    if noise_multiplier == 0.0 and target_epsilon == 0.0:
        raise ConfigError(z_key, "give one of noise_multiplier and target_epsilon")
    if noise_multiplier > 0.0 and target_epsilon > 0.0:
        raise ConfigError(z_key, "give only one of noise_multiplier and target_epsilon, not both")
    if not math.isfinite(max_grad_norm) or max_grad_norm <= 0.0:
        raise ConfigError(
            f"{prefix}.max_grad_norm", f"must be a finite number > 0, got {max_grad_norm}"
        )
    _check_delta(f"{prefix}.delta", delta, dataset_size)


def validate_update_privacy(
    *,
    clip_norm: float,
    noise_multiplier: float,
    delta: float,
    prefix: str = "privacy.update",
) -> None:
    """Check update-level parameters: C > 0, z >= 0 (0 = clip only), δ in (0, 1).

    Raises:
        ConfigError: naming ``<prefix>.<field>`` for the first invalid field.
    """
    if not math.isfinite(clip_norm) or clip_norm <= 0.0:
        raise ConfigError(f"{prefix}.clip_norm", f"must be a finite number > 0, got {clip_norm}")
    if not math.isfinite(noise_multiplier) or noise_multiplier < 0.0:
        raise ConfigError(
            f"{prefix}.noise_multiplier", f"must be a finite number >= 0, got {noise_multiplier}"
        )
    _check_delta(f"{prefix}.delta", delta, None)


def _check_delta(key: str, delta: float, dataset_size: int | None) -> None:
    if not (math.isfinite(delta) and 0.0 < delta < 1.0):
        raise ConfigError(key, f"must be in (0, 1), got {delta}")
    if dataset_size is not None and dataset_size > 0 and delta >= 1.0 / dataset_size:
        raise ConfigError(
            key, f"must be below 1/n = {1.0 / dataset_size:.3g} for a dataset of {dataset_size}"
        )


def _l2(x: npt.NDArray[Any]) -> float:
    flat = np.asarray(x, dtype=np.float64).ravel()
    scale = float(np.max(np.abs(flat))) if flat.size else 0.0
    if scale == 0.0:
        return 0.0
    return scale * float(np.sqrt(np.dot(flat / scale, flat / scale)))
