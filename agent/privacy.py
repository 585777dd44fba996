# Math notation (σ, ε, δ, q) in docstrings cites the formulas as written in confide.dp.
# ruff: noqa: RUF002, RUF003
"""The daemon's privacy step for one round: plan it, charge the ledger, protect the update.

Two layers, both decided here by the trusted daemon and never by job code:

- record level, inside the worker: DP-SGD (Abadi et al. 2016) with Poisson rate
  q = batch_size / n_train, T = local_epochs · round(1/q) steps per round, per-record clip
  ``max_grad_norm`` and noise multiplier σ. When the job gives ``target_epsilon`` the daemon
  picks σ so that the job's planned ``rounds · T`` steps spend at most that ε at the job's δ
  (``confide.dp.accountant.noise_multiplier_for``, never overshooting).
- update level, in this process: the worker's delta Δ is clipped to L2 norm C and Gaussian
  noise is added, std = z·C/√m with secure aggregation (distributed DP: the m planned sites'
  shares add up to z·C) or z·C without it (``confide.dp.update``). z is the job's
  ``update_privacy.noise_multiplier`` floored by the site policy's ``min_update_noise``.

The round's cost (both layers) is reserved in the ledger, durably, before the worker trains,
and marked sent just before the update leaves; a worker that fails before producing an
update releases it. A crash in between leaves it counted: never undercounted.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from agent.ledger import Ledger, ReservationId
from agent.worker.protocol import DpSgdParams
from confide.dp.accountant import AccountantKind, noise_multiplier_for
from confide.dp.budget import RecordCost, RoundCost, cumulative_epsilon, round_cost, update_cost
from confide.dp.update import add_noise, clip, noise_std, system_rng, validate_record_privacy
from confide.secagg.params import job_params
from confide.v1 import common_pb2
from confide.wire.blob import NamedArrays

__all__ = ["PrivacyPlan", "RoundPrivacy", "planned_survivors", "protect_update"]


@dataclass(frozen=True)
class RoundPrivacy:
    """What one round at this site does for privacy, and what it costs.

    Args:
        dp: DP-SGD parameters for the worker, or None when the job asks for none.
        cost: the round's cost on both layers (what the ledger reserves).
        clip_norm: C for the update, or None when the job sets no update privacy.
        noise_std: the std of the Gaussian noise this site adds to its update.
    """

    dp: DpSgdParams | None
    cost: RoundCost
    clip_norm: float | None
    noise_std: float


def planned_survivors(spec: common_pb2.JobSpec) -> int:
    """Sites the update noise is planned to survive with: the fewest a round can sum.

    Without secure aggregation a round needs ``min_sites`` updates. With it, the aggregator
    unmasks a sum once t masked inputs arrived, where t is the SecAgg+ threshold count for
    the smallest round the job allows (``choose_params(n=min_sites)``; a fraction threshold
    is of a site's k + 1 share holders, so t can be well below ``min_sites``). If fewer
    sites than ``min_sites`` survive, the sum carries less noise; the site plans for that
    worst case, and refuses a SHARE_KEYS request whose threshold is below it.

    Raises:
        ConfigError: the job's secure-aggregation settings are invalid for ``min_sites``.
    """
    sa = spec.secure_aggregation
    m = max(1, int(spec.min_sites))
    if not sa.enabled:
        return m
    return max(1, min(m, job_params(spec, n=m).threshold))


class PrivacyPlan:
    """Plans rounds and keeps each job's σ (finding σ for a target ε takes a while).

    Args:
        ledger: the site's privacy ledger.
    """

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._sigma: dict[tuple[str, int], float] = {}
        self._lock = threading.Lock()

    def plan(
        self,
        spec: common_pb2.JobSpec,
        *,
        job_id: str,
        num_train: int,
        min_update_noise: float,
    ) -> RoundPrivacy:
        """Decide a round's DP-SGD parameters, update noise and cost.

        Raises:
            ConfigError: the job's privacy parameters do not fit this dataset (e.g. δ not
                below 1/n), naming the job-file key.
        """
        record: RecordCost | None = None
        dp: DpSgdParams | None = None
        rp = spec.record_privacy
        if rp.enabled:
            n = max(1, num_train)
            validate_record_privacy(
                noise_multiplier=rp.noise_multiplier,
                target_epsilon=rp.target_epsilon,
                max_grad_norm=rp.max_grad_norm,
                delta=rp.delta,
                dataset_size=n,
            )
            q = min(1.0, spec.training.batch_size / n)
            steps = max(1, int(spec.training.local_epochs) * max(1, round(1.0 / q)))
            sigma = self._noise_multiplier(spec, job_id=job_id, q=q, steps=steps, n=n)
            dp = DpSgdParams(
                noise_multiplier=sigma, max_grad_norm=rp.max_grad_norm, sample_rate=q, steps=steps
            )
            record = RecordCost(sample_rate=q, noise_multiplier=sigma, steps=steps, delta=rp.delta)
        up = spec.update_privacy
        clip_norm: float | None = None
        std = 0.0
        upd = None
        if up.clip_norm > 0:
            z = max(up.noise_multiplier, min_update_noise)
            distributed = spec.secure_aggregation.enabled
            m = max(1, int(spec.min_sites))
            clip_norm = up.clip_norm
            std = noise_std(
                clip_norm=clip_norm, noise_multiplier=z, min_sites=m, distributed=distributed
            )
            upd = update_cost(
                noise_multiplier=z,
                sites_survived=planned_survivors(spec),
                min_sites=m,
                distributed=distributed,
            )
        cost = round_cost(record=record, update=upd, delta=self.ledger.delta)
        return RoundPrivacy(dp=dp, cost=cost, clip_norm=clip_norm, noise_std=std)

    def _noise_multiplier(
        self, spec: common_pb2.JobSpec, *, job_id: str, q: float, steps: int, n: int
    ) -> float:
        rp = spec.record_privacy
        if rp.target_epsilon <= 0:
            return float(rp.noise_multiplier)
        key = (job_id, n)
        with self._lock:
            if key not in self._sigma:
                kind = (
                    AccountantKind.PRV
                    if rp.accountant == common_pb2.ACCOUNTANT_PRV
                    else AccountantKind.RDP
                )
                self._sigma[key] = noise_multiplier_for(
                    kind=kind,
                    target_epsilon=rp.target_epsilon,
                    sample_rate=q,
                    steps=steps * max(1, int(spec.rounds)),
                    delta=rp.delta,
                )
            return self._sigma[key]

    def reserve(
        self,
        *,
        dataset: str,
        ledger_key: str,
        round: int,
        plan: RoundPrivacy,
        max_epsilon: float | None,
    ) -> ReservationId:
        """Durably reserve the round's cost, or refuse (PolicyRefusal BUDGET_EXCEEDED)."""
        return self.ledger.reserve(
            dataset=dataset,
            job_id=ledger_key,
            round=round,
            layer_costs=plan.cost,
            max_epsilon=max_epsilon,
        )

    def job_epsilon(self, *, dataset: str, job_id: str) -> tuple[float, float]:
        """Cumulative (record-level, site-level) ε this job has spent on this dataset."""
        costs = [
            e.cost
            for e in self.ledger.entries(dataset)
            if e.job_id.startswith(job_id + "/")  # ledger keys are "<job_id>/<task_id>"
        ]
        return cumulative_epsilon(costs, delta=self.ledger.delta)

    def forget(self, job_id: str) -> None:
        """Drop a finished job's cached σ."""
        with self._lock:
            for key in [k for k in self._sigma if k[0] == job_id]:
                del self._sigma[key]


def protect_update(
    delta: NamedArrays, plan: RoundPrivacy, *, rng: np.random.Generator | None = None
) -> NamedArrays:
    """Clip the whole update to L2 norm C and add this site's Gaussian noise share.

    Args:
        delta: the worker's checked float32 update.
        plan: the round's plan (C and the noise std).
        rng: randomness for the noise; a fresh OS-seeded generator when None.
    """
    if plan.clip_norm is None:
        return delta
    flat = np.concatenate([np.asarray(a, dtype=np.float32).ravel() for _, a in delta])
    clipped, _norm = clip(flat, clip_norm=plan.clip_norm)
    noisy = (
        add_noise(clipped, std=plan.noise_std, rng=rng if rng is not None else system_rng())
        if plan.noise_std > 0
        else clipped
    )
    out: NamedArrays = []
    offset = 0
    for name, a in delta:
        size = int(np.prod(a.shape))
        part = np.asarray(noisy[offset : offset + size], dtype=np.float32).reshape(a.shape)
        out.append((name, part))
        offset += size
    return out
