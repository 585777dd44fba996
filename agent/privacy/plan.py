# Math notation (σ, ε, δ, q) in docstrings cites the formulas as written in confide.dp.
# ruff: noqa: RUF002, RUF003
"""The daemon's privacy step for one round: plan it, charge the ledger, protect the update.

Two layers, both decided here by the trusted daemon and never by job code:

- record level, inside the worker: DP-SGD (Abadi et al. 2016) with Poisson rate
  q = batch_size / n_train, T = local_epochs · round(1/q) steps per round, per-record clip
  ``max_grad_norm`` and noise multiplier σ. When the job gives ``target_epsilon`` the daemon
  picks σ so that A·T steps spend at most that ε at the job's δ
  (``confide.dp.accountant.noise_multiplier_for``, never overshooting), where A = rounds +
  retries is every attempt the job may be charged at this site (``agent.admission.limits``): a
  retried round costs as much as any other, so planning for ``rounds`` alone would overshoot
  the target after the first retry. The ledger refuses any attempt past A, and any that
  would pass the target anyway.
- update level, in this process: the worker's delta Δ is clipped to L2 norm C and noised.
  Without secure aggregation: Gaussian noise of std z·C (``confide.dp.update``), z the job's
  ``update_privacy.noise_multiplier`` floored by the site policy's ``min_update_noise``.
  With it (distributed DP, each site adds a share of std z·C/√m so m shares add up to z·C):
  by default the distributed discrete Gaussian, added when the update is encoded for
  masking (``confide.secagg.encoding``, accounted by Proposition 14 of Kairouz, Liu, Steinke
  2021 in ``confide.dp.budget``); the continuous Gaussian only where the job's clip range
  provably cannot cut it. A floor cannot be met by one site alone here (the sum carries the
  other sites' shares of the job's z), so a secure job below the floor is refused.

What is counted (``agent.privacy.counted``): both layers for a built-in model. A code-bundle
job's DP-SGD runs next to the job's own code, so unless the policy says
``trust_bundle_dp`` the round costs what the update layer alone guarantees: its
record-level curve drops the DP-SGD bound (``confide.dp.budget.record_curve`` with no
``RecordCost``), and the ledger, the caps, the job's signed ε target and the ε reported to the
aggregator all see that cost. The worker still runs the DP-SGD the job asks for.

The round's counted cost is reserved in the ledger, durably, before the worker trains, and
marked sent just before the update leaves; a worker that fails before producing an update
releases it. A crash in between leaves it counted: never undercounted.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from agent.admission.limits import JobLimits
from agent.admission.rules import RuleRefusal, dataset_rule
from agent.admission.site_policy import DatasetPolicy
from agent.privacy.counted import RECORD_NOT_COUNTED, counts_record_layer
from agent.privacy.ledger import Ledger, ReservationId
from confide.dp.accountant import AccountantKind, noise_multiplier_for
from confide.dp.budget import (
    RecordCost,
    RoundCost,
    UpdateCost,
    cumulative_epsilon,
    discrete_update_cost,
    round_cost,
    update_cost,
)
from confide.dp.update import add_noise, clip, noise_std, system_rng
from confide.errors import ConfigError, Reason
from confide.jobspec import attempt_limits
from confide.secagg.encoding import Mechanism, secure_encoding
from confide.secagg.params import job_params
from confide.types import JobId, RoundNo, TaskId
from confide.v1 import common_pb2
from confide.wire.blob import NamedArrays
from confide.wire.worker import DpSgdParams

__all__ = [
    "Charge",
    "PrivacyPlan",
    "RoundPrivacy",
    "Unmetered",
    "dpsgd_schedule",
    "planned_survivors",
    "protect_update",
]


@dataclass(frozen=True)
class RoundPrivacy:
    """What one round at this site does for privacy, and what it costs.

    Args:
        dp: DP-SGD parameters for the worker, or None when the job asks for none.
        cost: the round's cost on both layers (what the ledger reserves).
        clip_norm: C for the update, or None when the job sets no update privacy.
        noise_std: the std of the continuous Gaussian noise ``protect_update`` adds (0 for
            the discrete mechanism, whose noise is added when the update is encoded).
        not_counted: what runs but is not in ``cost`` (``agent.privacy.counted``), for the
            site's records; "" when everything that runs is counted.
    """

    dp: DpSgdParams | None
    cost: RoundCost
    clip_norm: float | None
    noise_std: float
    not_counted: str = ""


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


def dpsgd_schedule(training: common_pb2.TrainingSpec, *, num_train: int) -> tuple[float, int]:
    """The DP-SGD schedule of one round: (q, T) with q = min(1, B / n), T = E · max(1, round(1/q)).

    B is the job's ``training.batch_size`` (validated >= 1, no default: a job file's is 32),
    E its ``local_epochs`` and n the site's training records. Poisson sampling at rate q
    sees each record once per round(1/q) steps in expectation, so T is E epochs (Abadi et al.
    2016, Section 3.1). The one schedule: the daemon computes it here, sends it to the
    worker in ``DpSgdParams`` and charges the ledger for the same numbers.

    Args:
        training: the job's training block.
        num_train: n >= 1, the training records the daemon counted.
    """
    q = min(1.0, training.batch_size / num_train)
    steps = max(1, int(training.local_epochs) * max(1, round(1.0 / q)))
    return q, steps


def _check_delta_fits(delta: float, *, n: int) -> None:
    """The one record-privacy rule only a site can check: δ < 1/n for its n records.

    The job's own rules (``confide.jobspec.validate_job``) ran when the signed job was
    verified; this adds what needs the dataset. A δ of 1/n or more allows a mechanism that
    publishes one whole record outright ("release one record at random" is (0, 1/n)-DP), so
    it gives no meaningful guarantee (Dwork & Roth 2014, Section 2.3).

    Raises:
        ConfigError: ``privacy.sample.delta`` is not below 1/n.
    """
    if delta >= 1.0 / n:
        raise ConfigError(
            "privacy.sample.delta", f"must be below 1/n = {1.0 / n:.3g} for a dataset of {n}"
        )


def _update_noise(
    spec: common_pb2.JobSpec, *, min_update_noise: float, floor_rule: str
) -> tuple[float, UpdateCost]:
    """The continuous noise std ``protect_update`` adds, and the round's update-level cost.

    Raises:
        RuleRefusal: UNSAFE_REQUEST, rule ``floor_rule``: a secure job's z is below
            ``min_update_noise``.
        ConfigError: the job's secure-aggregation encoding is invalid.
    """
    up = spec.update_privacy
    m = max(1, int(spec.min_sites))
    if not spec.secure_aggregation.enabled:
        z = max(up.noise_multiplier, min_update_noise)
        std = noise_std(clip_norm=up.clip_norm, noise_multiplier=z, min_sites=m, distributed=False)
        upd = update_cost(noise_multiplier=z, sites_survived=m, min_sites=m, distributed=False)
        return std, upd
    if up.noise_multiplier < min_update_noise:
        raise RuleRefusal(
            floor_rule,
            f"the job's update noise z = {up.noise_multiplier:g} is below this dataset's floor "
            f"{min_update_noise:g}; under secure aggregation one site cannot make it up alone",
            reason=Reason.UNSAFE_REQUEST,
        )
    t = planned_survivors(spec)
    enc = secure_encoding(spec)
    if enc.mechanism is Mechanism.DISCRETE_GAUSSIAN and enc.ddg is not None:
        return 0.0, discrete_update_cost(enc.ddg, summands=t)
    z = up.noise_multiplier
    std = noise_std(clip_norm=up.clip_norm, noise_multiplier=z, min_sites=m, distributed=True)
    return std, update_cost(noise_multiplier=z, sites_survived=t, min_sites=m, distributed=True)


class PrivacyPlan:
    """Plans rounds and keeps each job's σ (finding σ for a target ε takes a while).

    Args:
        ledger: the site's privacy ledger.
    """

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._sigma: dict[tuple[str, int, int], float] = {}
        self._lock = threading.Lock()

    def plan(
        self,
        spec: common_pb2.JobSpec,
        *,
        job_id: str,
        num_train: int,
        min_update_noise: float,
        attempts: int | None = None,
        count_record: bool = True,
        dataset: str = "",
    ) -> RoundPrivacy:
        """Decide a round's DP-SGD parameters, update noise and cost.

        With ``count_record`` False (a bundle job's DP-SGD at a site that does not trust it,
        ``agent.privacy.counted``) the worker is still told to run the DP-SGD the job asks
        for, σ included: a ``target_epsilon`` job still gets the σ planned for its target,
        since the code may be honest and the operator's model was tuned for that noise. Only
        the cost leaves the DP-SGD out. The job's signed target is then checked against the
        counted (update-level) ε (``agent.admission.limits.check_charge``), so a site never
        reports more than the target it could not vouch for: with too little update noise
        for the target, the job is refused there.

        Args:
            attempts: A, the attempts the job may be charged at this site, which a
                ``target_epsilon`` is spread over (``JobLimits.max_job_attempts``); None:
                the signed job's own ``rounds + max_job_retries``.
            count_record: whether the record-level DP-SGD is in the round's cost.
            dataset: the dataset's name, for the policy rule a refusal names.

        Raises:
            ConfigError: the job's privacy parameters do not fit this dataset (e.g. δ not
                below 1/n), naming the job-file key.
            RuleRefusal: UNSAFE_REQUEST: a secure job's z is below ``min_update_noise``
                (rule ``policy.datasets.<dataset>.min_update_noise``).
        """
        record: RecordCost | None = None
        dp: DpSgdParams | None = None
        rp = spec.record_privacy
        if rp.enabled:
            n = max(1, num_train)
            _check_delta_fits(rp.delta, n=n)
            q, steps = dpsgd_schedule(spec.training, num_train=n)
            if attempts is None:
                attempts = int(spec.rounds) + attempt_limits(spec)[1]
            sigma = self._noise_multiplier(
                spec, job_id=job_id, q=q, steps=steps, n=n, attempts=attempts
            )
            dp = DpSgdParams(
                noise_multiplier=sigma, max_grad_norm=rp.max_grad_norm, sample_rate=q, steps=steps
            )
            # The ledger charges exactly what the worker is told to run: the cost is read
            # back from ``dp``, never recomputed.
            if count_record:
                record = RecordCost(
                    sample_rate=dp.sample_rate,
                    noise_multiplier=dp.noise_multiplier,
                    steps=dp.steps,
                    delta=rp.delta,
                )
        up = spec.update_privacy
        clip_norm: float | None = None
        std = 0.0
        upd = None
        if up.clip_norm > 0:
            clip_norm = up.clip_norm
            floor_rule = (
                dataset_rule(dataset, "min_update_noise") if dataset else "min_update_noise"
            )
            std, upd = _update_noise(spec, min_update_noise=min_update_noise, floor_rule=floor_rule)
        cost = round_cost(record=record, update=upd, delta=self.job_delta(spec))
        note = RECORD_NOT_COUNTED if rp.enabled and not count_record else ""
        return RoundPrivacy(dp=dp, cost=cost, clip_norm=clip_norm, noise_std=std, not_counted=note)

    def _noise_multiplier(
        self,
        spec: common_pb2.JobSpec,
        *,
        job_id: str,
        q: float,
        steps: int,
        n: int,
        attempts: int,
    ) -> float:
        rp = spec.record_privacy
        if rp.target_epsilon <= 0:
            return float(rp.noise_multiplier)
        key = (job_id, n, attempts)
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
                    steps=steps * max(1, attempts),
                    delta=rp.delta,
                )
            return self._sigma[key]

    def plan_for_site(
        self,
        spec: common_pb2.JobSpec,
        *,
        job_id: str,
        dataset: str,
        num_train: int,
        policy: DatasetPolicy,
        attempts: int | None = None,
        trust_bundle_dp: bool = False,
    ) -> RoundPrivacy:
        """``plan`` under the site's policy for ``dataset`` (``attempts`` as in ``plan``).

        Args:
            trust_bundle_dp: the site's ``policy.trust_bundle_dp``: whether a code
                bundle's DP-SGD is counted (``agent.privacy.counted``).

        Raises:
            RuleRefusal: UNSAFE_REQUEST when the policy sets a noise floor and the job sets
                no update clipping (so no update noise at all), or a secure job's z is below
                it (rule ``policy.datasets.<dataset>.min_update_noise``); BUDGET_EXCEEDED
                (rule ``policy.trust_bundle_dp``) when the job's only record-level
                protection is a DP-SGD this site does not count and the dataset's cap is
                finite.
            ConfigError: the job's privacy parameters do not fit this dataset.
        """
        if policy.min_update_noise > 0 and spec.update_privacy.clip_norm <= 0:
            raise RuleRefusal(
                dataset_rule(dataset, "min_update_noise"),
                f"dataset {dataset!r} requires update noise z >= {policy.min_update_noise}, "
                "and this job sets no update clipping",
                reason=Reason.UNSAFE_REQUEST,
                public=True,
            )
        counted = counts_record_layer(spec, trust_bundle_dp=trust_bundle_dp)
        plan = self.plan(
            spec,
            job_id=job_id,
            num_train=num_train,
            min_update_noise=policy.min_update_noise,
            attempts=attempts,
            count_record=counted,
            dataset=dataset,
        )
        cap = self.ledger.default_max_epsilon if policy.max_epsilon is None else policy.max_epsilon
        if plan.not_counted and not math.isfinite(plan.cost.epsilon) and math.isfinite(cap):
            # The ledger would refuse it too, as over the cap; this says why and what to do.
            raise RuleRefusal(
                "policy.trust_bundle_dp",
                f"dataset {dataset!r} caps record-level ε at {cap:g}, and this code-bundle "
                "job's only record-level protection is its DP-SGD, which runs in the job's "
                "own code: this site does not count it, so a round's ε is ∞. To run here, "
                "the job adds update-level noise ([privacy.update] clip_norm and "
                "noise_multiplier > 0), or the site sets policy.trust_bundle_dp = true "
                "after reviewing the bundle's code",
                reason=Reason.BUDGET_EXCEEDED,
                # The aggregator's line is short (confide.disclose); the rule follows it.
                public="bundle DP-SGD is not counted here (it runs in job code): ε = ∞ over "
                "the cap; add [privacy.update] noise to the job, or the site sets "
                "trust_bundle_dp = true",
            )
        return plan

    @contextlib.contextmanager
    def charge(
        self,
        *,
        dataset: str,
        job_id: JobId,
        task_id: TaskId,
        round: RoundNo,
        plan: RoundPrivacy,
        max_epsilon: float | None,
        limits: JobLimits | None = None,
    ) -> Iterator[Charge]:
        """Reserve a round's cost durably for the block, released only if nothing left.

        With ``limits`` the ledger also refuses what the signed job does not allow (rounds,
        attempts, its ε target; ``agent.admission.limits``) in the same durable transaction.

        The block calls ``Charge.mark_sent()`` just before the update leaves; an exception
        before that releases the reservation (the worker produced nothing that was sent),
        one after it keeps the cost counted. A crash anywhere keeps it counted.

        Raises:
            PolicyRefusal: BUDGET_EXCEEDED when the round would cross the cap; DENIED when
                this task was already charged (e.g. re-sent after a reconnect);
                ROUND_NOT_SIGNED or ATTEMPTS_EXCEEDED past the job's signed limits.
        """
        rid = self.ledger.reserve(
            dataset=dataset,
            # One entry per task: a retried round is a new task and a new release, so it is
            # charged again; the same task re-sent after a reconnect is refused.
            job_id=job_id,
            task_id=task_id,
            round=round,
            layer_costs=plan.cost,
            max_epsilon=max_epsilon,
            limits=limits,
        )
        charge = Charge(self, rid, dataset=dataset, job_id=job_id)
        try:
            yield charge
        except BaseException:
            if not charge.sent:
                self.ledger.release_unsent(rid, proof="no update was produced")
            raise

    def job_delta(self, spec: common_pb2.JobSpec) -> float:
        """The δ at which this site states and caps a job's cumulative ε.

        The smallest δ the job names on a layer it uses (``privacy.sample.delta``,
        ``privacy.update.delta``), and never more than the ledger's own δ, so a job cannot
        enlarge a site's budget by naming a large δ. A job naming none gets the ledger's.
        """
        named = [self.ledger.delta]
        if spec.record_privacy.enabled and spec.record_privacy.delta > 0:
            named.append(spec.record_privacy.delta)
        if spec.update_privacy.clip_norm > 0 and spec.update_privacy.delta > 0:
            named.append(spec.update_privacy.delta)
        return min(named)

    def job_epsilon(self, *, dataset: str, job_id: str) -> tuple[float, float]:
        """Cumulative (record-level, site-level) ε of this job's rounds and evaluations on this
        dataset, at the job's δ (``job_delta``)."""
        entries = self.ledger.entries(dataset)
        mine = [e for e in entries if e.job_id == job_id]
        at = min((e.cost.delta for e in mine), default=self.ledger.delta)
        return cumulative_epsilon([e.cost for e in mine], delta=at)

    def forget(self, job_id: str) -> None:
        """Drop a finished job's cached σ."""
        with self._lock:
            for key in [k for k in self._sigma if k[0] == job_id]:
                del self._sigma[key]


class Charge:
    """A reserved round cost; ``mark_sent`` makes it permanent and reports the job's ε."""

    def __init__(self, plan: PrivacyPlan, rid: ReservationId, *, dataset: str, job_id: str) -> None:
        self._plan = plan
        self._rid = rid
        self._dataset = dataset
        self._job_id = job_id
        self.sent = False

    def mark_sent(self) -> tuple[float, float]:
        """Count the cost for good (call just before the update leaves).

        Returns:
            The job's cumulative (record-level, update-level) ε at this site, this round in.
        """
        epsilons = self._plan.job_epsilon(dataset=self._dataset, job_id=self._job_id)
        self._plan.ledger.mark_sent(self._rid)
        self.sent = True
        return epsilons


class Unmetered:
    """The charge of a non-private job run without a ledger (unit tests): nothing to count."""

    sent = False

    def mark_sent(self) -> tuple[float, float]:
        """Nothing is counted; no ε is reported."""
        return 0.0, 0.0


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
