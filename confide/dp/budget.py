# Math notation (σ, α, ρ, δ, ε) in docstrings cites the papers' formulas as written.
# ruff: noqa: RUF002, RUF003
"""The privacy cost of one round at one site, on both layers, and its RDP composition.

A round releases one clipped, noised update computed by DP-SGD on the site's dataset.
Two guarantees are tracked per dataset:

- record-level ε (one record added or removed). Two valid RDP bounds hold for the same
  release: DP-SGD's, ρ_rec(α) = T·ρ_SGM(q, σ; α) (Mironov et al. 2019), and the update
  noise's: a record can move the clipped update anywhere in the ball of radius C, so the
  update-level Gaussian has record sensitivity 2C and ρ(α) = α/(2(σ_eff/2)²). Both bound the
  same mechanism at every α, so the round's curve is their pointwise minimum; rounds compose
  by adding curves (Mironov 2017, Prop. 1).
- site-level ε (the site's whole update added or removed): the update-level Gaussian with
  sensitivity C (Dwork & Roth 2014, Section 3.5.3), q = 1, ρ(α) = α/(2σ_eff²) per round
  (Mironov 2017, Prop. 7), σ_eff = z / k with k the sensitivity factor √(m / min(s, m)):
  m shares of std z·C/√m sum to z·C, and s < m survivors to z·C·√(s/m)
  (``confide.dp.update`` adds them). Rounds compose by adding curves, converted to ε with
  Balle et al. 2020. This is the one formula for σ_eff. It assumes the other sites' noise
  stays secret: a coalition of c sites that reveals its own noise lowers σ_eff to
  z·√((s - c)/m).

With secure aggregation the update noise is by default the distributed discrete Gaussian
(``confide.dp.ddg``): its round's curve is Proposition 14 of Kairouz, Liu, Steinke 2021 with
ℓ₂ = 1/σ_eff = Δ₂/(√t·σ) (t summands of N_Z(0, σ²), sensitivity Δ₂ on the integer grid),
ℓ₁ = ℓ₂·(Δ₁/Δ₂), τ and d'; a record moves the rounded vector by at most 2Δ₂ (2Δ₁ in L1),
so the record-level bound doubles ℓ₂ and ℓ₁ as it halves σ_eff for the continuous one. At
τ = 0 both curves are the Gaussian's.

An infinite curve (no noise on a layer) yields ε = ∞, which any finite cap refuses.

A hold-out evaluation (``confide.dp.evaluation``) is an entry of its own with
``evaluation=True``: a Gaussian mechanism on hold-out counts, composed at record level like a
round. It releases no update, so it adds nothing to the site-level curve, which describes
updates only (an evaluation has no finite site-level bound: it reveals the hold-out's size).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from confide.dp.accountant import SampledGaussian, rdp_curve
from confide.dp.ddg import DdgParams, scaled_rdp, sum_tau
from confide.dp.rdp import DEFAULT_ORDERS, epsilon_from_rdp

__all__ = [
    "RecordCost",
    "RoundCost",
    "UpdateCost",
    "cumulative_epsilon",
    "discrete_update_cost",
    "record_curve",
    "round_cost",
    "site_curve",
    "update_cost",
]


@dataclasses.dataclass(frozen=True, slots=True)
class RecordCost:
    """DP-SGD inside the worker for one round: q, σ, T local steps, and the job's δ."""

    sample_rate: float
    noise_multiplier: float
    steps: int
    delta: float


@dataclasses.dataclass(frozen=True, slots=True)
class UpdateCost:
    """The daemon's update noise for one round: z, and the sensitivity factor k >= 1.

    The sum carries noise multiplier σ_eff = z / k (k = 1 without secure aggregation). A
    discrete (DDG) round also sets ``dim`` = d' >= 1, ``tau`` = τ and ``l1_ratio`` = Δ₁/Δ₂
    (Proposition 14); ``dim`` = 0 marks the continuous Gaussian.
    """

    noise_multiplier: float
    sensitivity_factor: float = 1.0
    tau: float = 0.0
    dim: int = 0
    l1_ratio: float = 0.0

    @property
    def effective_noise_multiplier(self) -> float:
        """σ_eff = z / k."""
        return self.noise_multiplier / self.sensitivity_factor


@dataclasses.dataclass(frozen=True, slots=True)
class RoundCost:
    """What one round costs a dataset: its parameters, and the ε this round alone adds.

    ``epsilon`` is record-level and ``update_epsilon`` site-level, both at ``delta``; they are
    for display. The ledger recomposes from the parameters, never from these numbers.
    ``evaluation``: the entry is a hold-out evaluation (``record`` holds its Gaussian, q = 1,
    T = 1), counted at record level only.
    """

    record: RecordCost | None
    update: UpdateCost | None
    epsilon: float
    update_epsilon: float
    delta: float
    evaluation: bool = False


def update_cost(
    *, noise_multiplier: float, sites_survived: int, min_sites: int, distributed: bool
) -> UpdateCost:
    """The update-level cost of one continuous-Gaussian round: z and k = √(m / min(s, m)).

    Distributed (secure aggregation): σ_eff = z / k = z·√(min(s, m)/m). More than m survivors
    would add noise, but the daemon never claims credit for sites beyond the plan; it plans
    with s = the secure-aggregation threshold t (the fewest survivors for which the sum can be
    unmasked at all), so the bound holds however many sites drop. Local (no secure
    aggregation): k = 1, σ_eff = z.

    Args:
        noise_multiplier: z >= 0 asked by the job (0: an infinite curve, ε = ∞).
        sites_survived: s >= 1, the survivors to account for (the threshold t as the plan).
        min_sites: m >= 1, the sites the noise shares were sized for.
        distributed: whether secure aggregation hides single updates.

    Raises:
        ValueError: z < 0, or m or s < 1.
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0.0):
        raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier}")
    if min_sites < 1 or sites_survived < 1:
        raise ValueError("min_sites and sites_survived must be >= 1")
    factor = math.sqrt(min_sites / min(sites_survived, min_sites)) if distributed else 1.0
    return UpdateCost(noise_multiplier=noise_multiplier, sensitivity_factor=factor)


def discrete_update_cost(params: DdgParams, *, summands: int) -> UpdateCost:
    """The update-level cost of one DDG round whose sum holds at least ``summands`` = t sites.

    σ_eff = √t·σ/Δ₂ (no noise: σ_eff = 0, an infinite curve). More sites than t only add
    independent noise, which cannot raise any Rényi divergence (data processing), so a site
    plans with the fewest a sum may hold.

    Raises:
        ValueError: t < 1.
    """
    if summands < 1:
        raise ValueError(f"summands must be >= 1, got {summands}")
    if params.sigma == 0:
        return UpdateCost(noise_multiplier=0.0, dim=params.dim)
    l2 = params.l2_sensitivity
    return UpdateCost(
        noise_multiplier=math.sqrt(summands) * params.sigma / l2,
        tau=sum_tau(sigma=params.sigma, summands=summands),
        dim=params.dim,
        l1_ratio=params.l1_sensitivity / l2,
    )


def round_cost(*, record: RecordCost | None, update: UpdateCost | None, delta: float) -> RoundCost:
    """Build a ``RoundCost``, filling in the ε this round alone adds on each layer at δ."""
    eps = _to_epsilon(record_curve(record, update), delta)
    upd = _to_epsilon(site_curve(update), delta)
    return RoundCost(record=record, update=update, epsilon=eps, update_epsilon=upd, delta=delta)


def record_curve(record: RecordCost | None, update: UpdateCost | None) -> npt.NDArray[np.float64]:
    """Record-level RDP curve of one round: min of the DP-SGD and update-noise bounds."""
    curve = np.full(len(DEFAULT_ORDERS), np.inf)
    if record is not None:
        curve = rdp_curve(
            SampledGaussian(record.sample_rate, record.noise_multiplier, record.steps)
        )
    if update is not None:
        # Record sensitivity is 2C (2Δ₂ and 2Δ₁ on the DDG grid): noise multiplier σ_eff / 2.
        curve = np.minimum(curve, _update_curve(update, sensitivity=2.0))
    return curve


def site_curve(update: UpdateCost | None) -> npt.NDArray[np.float64]:
    """Site-level RDP curve of one round: the Gaussian with σ_eff, or Proposition 14 for a
    discrete round (∞ without update noise)."""
    if update is None:
        return np.full(len(DEFAULT_ORDERS), np.inf)
    return _update_curve(update, sensitivity=1.0)


def _update_curve(update: UpdateCost, *, sensitivity: float) -> npt.NDArray[np.float64]:
    """One round's update-noise curve for ``sensitivity`` times the site-level one."""
    sigma = update.effective_noise_multiplier / sensitivity
    if update.dim == 0 or sigma == 0.0:
        return rdp_curve(SampledGaussian(1.0, sigma, 1))
    # Proposition 14 in units where √t·σ = 1: ℓ₂ = 1/σ_eff, ℓ₁ = ℓ₂·Δ₁/Δ₂. Its τ is that of
    # the grid's σ, carried in the cost (it does not scale with the sensitivity).
    return scaled_rdp(
        l2_scale=1.0 / sigma, l1_scale=update.l1_ratio / sigma, tau=update.tau, dim=update.dim
    )


def cumulative_epsilon(costs: Iterable[RoundCost], *, delta: float) -> tuple[float, float]:
    """(record-level ε, site-level ε) at δ of all the rounds, by summing RDP curves.

    Raises:
        ValueError: δ is not in (0, 1).
    """
    rec = np.zeros(len(DEFAULT_ORDERS))
    site = np.zeros(len(DEFAULT_ORDERS))
    for c in costs:
        rec = rec + record_curve(c.record, c.update)
        if not c.evaluation:
            site = site + site_curve(c.update)
    return _to_epsilon(rec, delta), _to_epsilon(site, delta)


def _to_epsilon(curve: npt.NDArray[np.float64], delta: float) -> float:
    return epsilon_from_rdp(orders=DEFAULT_ORDERS, rdp=curve, delta=delta)[0]
