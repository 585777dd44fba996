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
  sensitivity C, ρ(α) = α/(2σ_eff²), σ_eff = z / k with k the sensitivity factor
  √(m / min(s, m)) (see ``confide.dp.update``).

An infinite curve (no noise on a layer) yields ε = ∞, which any finite cap refuses.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from confide.dp.accountant import SampledGaussian, rdp_curve
from confide.dp.rdp import DEFAULT_ORDERS, epsilon_from_rdp

__all__ = [
    "RecordCost",
    "RoundCost",
    "UpdateCost",
    "cumulative_epsilon",
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

    The sum carries noise multiplier σ_eff = z / k (k = 1 without secure aggregation).
    """

    noise_multiplier: float
    sensitivity_factor: float = 1.0

    @property
    def effective_noise_multiplier(self) -> float:
        """σ_eff = z / k."""
        return self.noise_multiplier / self.sensitivity_factor


@dataclasses.dataclass(frozen=True, slots=True)
class RoundCost:
    """What one round costs a dataset: its parameters, and the ε this round alone adds.

    ``epsilon`` is record-level and ``update_epsilon`` site-level, both at ``delta``; they are
    for display. The ledger recomposes from the parameters, never from these numbers.
    """

    record: RecordCost | None
    update: UpdateCost | None
    epsilon: float
    update_epsilon: float
    delta: float


def update_cost(
    *, noise_multiplier: float, sites_survived: int, min_sites: int, distributed: bool
) -> UpdateCost:
    """The update-level cost for survivors s of m sites planned (plan with s = threshold t).

    Raises:
        ValueError: z < 0, or m or s < 1.
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0.0):
        raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier}")
    if min_sites < 1 or sites_survived < 1:
        raise ValueError("min_sites and sites_survived must be >= 1")
    factor = math.sqrt(min_sites / min(sites_survived, min_sites)) if distributed else 1.0
    return UpdateCost(noise_multiplier=noise_multiplier, sensitivity_factor=factor)


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
        # Record sensitivity is 2C, i.e. noise multiplier σ_eff / 2.
        sigma = update.effective_noise_multiplier / 2.0
        curve = np.minimum(curve, rdp_curve(SampledGaussian(1.0, sigma, 1)))
    return curve


def site_curve(update: UpdateCost | None) -> npt.NDArray[np.float64]:
    """Site-level RDP curve of one round: the Gaussian with σ_eff (∞ without update noise)."""
    if update is None:
        return np.full(len(DEFAULT_ORDERS), np.inf)
    return rdp_curve(SampledGaussian(1.0, update.effective_noise_multiplier, 1))


def cumulative_epsilon(costs: Iterable[RoundCost], *, delta: float) -> tuple[float, float]:
    """(record-level ε, site-level ε) at δ of all the rounds, by summing RDP curves.

    Raises:
        ValueError: δ is not in (0, 1).
    """
    rec = np.zeros(len(DEFAULT_ORDERS))
    site = np.zeros(len(DEFAULT_ORDERS))
    for c in costs:
        rec = rec + record_curve(c.record, c.update)
        site = site + site_curve(c.update)
    return _to_epsilon(rec, delta), _to_epsilon(site, delta)


def _to_epsilon(curve: npt.NDArray[np.float64], delta: float) -> float:
    return epsilon_from_rdp(orders=DEFAULT_ORDERS, rdp=curve, delta=delta)[0]
