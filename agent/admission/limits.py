# Math notation (σ, ε, δ, q) in docstrings cites the formulas as written in confide.dp.
# ruff: noqa: RUF002, RUF003
"""What one signed job may cost this site: its rounds, its attempts and its ε target.

For privacy the aggregator may be malicious (DESIGN.md, "Trust model"): it chooses which TRAIN
tasks a site receives, and each one it sends could release another update. So the site never
takes its word for how often a round runs. The operator-signed job names its ``rounds``, the
attempts of one round and the retries over the whole job that a site pays for
(``confide.jobspec.attempt_limits``); the site's ``[policy] max_round_attempts`` and
``max_job_retries`` may only lower the last two (``job_limits``). A TRAIN task is then
refused, before anything is trained or reserved, when (``check_charge``):

- its round is outside 1..rounds (``ROUND_NOT_SIGNED``);
- its round already has ``max_round_attempts`` charged attempts, or it is a retry (its round
  already has one) and the job already had ``max_job_retries`` retries
  (``ATTEMPTS_EXCEEDED``). So a job is charged at most A = rounds + max_job_retries times;
- for a ``target_epsilon`` job, the job's record-level ε at the job's δ, with this task in,
  would exceed the target (``BUDGET_EXCEEDED``).

Each refusal names the rule that refused (``RuleRefusal.rule``, in the site's audit trail and
the report to the aggregator): the signed job's key, ``job.rounds``,
``job.max_round_attempts``, ``job.max_job_retries`` or ``job.privacy.sample.target_epsilon``
(the job file's keys), or the site's ``policy.max_round_attempts`` / ``policy.max_job_retries``
where the site's cap is what lowered the limit.

"Charged" means counted by the ledger (reserved or sent, never released): the ledger runs
``check_charge`` inside the same write transaction that reserves the cost, so the count is
durable across restarts and crashes and two tasks cannot race past a cap.

Why both caps and an ε check: ``agent.privacy.plan`` plans σ for A attempts, σ such that
ε(q, σ, A·T) <= target, so A equal-cost attempts never pass the target, however they are
spread over rounds. The ε check catches what a plan cannot foresee (a dataset whose size, so
q and σ, changed mid-job) and is the last word whatever a caller planned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from agent.admission.rules import RuleRefusal
from agent.admission.site_policy import AttemptCaps
from confide.dp.accountant import AccountantKind, epsilon
from confide.dp.budget import RoundCost, cumulative_epsilon
from confide.errors import Reason
from confide.jobspec import attempt_limits
from confide.types import JobId
from confide.v1 import common_pb2

__all__ = ["JobLimits", "check_charge", "check_round", "job_epsilon", "job_limits"]

_FLOAT_SLACK = 1e-9
"""Relative slack on the ε target: A planned rounds composed one by one sum the same RDP
curve A times, which may differ from the planner's A·T product in the last bits."""


@dataclass(frozen=True)
class JobLimits:
    """What one job may cost this site, from its signed spec and the site's caps.

    Args:
        job_id: the job (its entries in the ledger carry it in their ``job_id`` column).
        rounds: the signed number of rounds.
        max_round_attempts: charged attempts of one round, at most.
        max_job_retries: charged attempts beyond one per round, over the whole job.
        target_epsilon: the signed record-level ε of the whole job, or None when it names
            a noise multiplier instead (then the caps alone bound its spend).
        target_delta: the δ the target is stated at (``privacy.sample.delta``).
        accountant: the accountant the job's σ was planned with.
        round_attempts_rule: the rule ``max_round_attempts`` comes from: the job's key, or
            the site's where its cap lowered it.
        job_retries_rule: the same for ``max_job_retries``.
    """

    job_id: JobId
    rounds: int
    max_round_attempts: int
    max_job_retries: int
    target_epsilon: float | None = None
    target_delta: float = 1e-5
    accountant: AccountantKind = AccountantKind.RDP
    round_attempts_rule: str = "job.max_round_attempts"
    job_retries_rule: str = "job.max_job_retries"

    @property
    def max_job_attempts(self) -> int:
        """A = rounds + max_job_retries: the most attempts the job is ever charged."""
        return self.rounds + self.max_job_retries


def job_limits(spec: common_pb2.JobSpec, *, job_id: JobId, caps: AttemptCaps) -> JobLimits:
    """The limits of a verified job at this site: the signed ones, lowered by the site's caps."""
    per_round, retries = attempt_limits(spec)
    per_round_rule, retries_rule = "job.max_round_attempts", "job.max_job_retries"
    if caps.max_round_attempts is not None and caps.max_round_attempts < per_round:
        per_round, per_round_rule = caps.max_round_attempts, "policy.max_round_attempts"
    if caps.max_job_retries is not None and caps.max_job_retries < retries:
        retries, retries_rule = caps.max_job_retries, "policy.max_job_retries"
    rp = spec.record_privacy
    target = float(rp.target_epsilon) if rp.enabled and rp.target_epsilon > 0 else None
    kind = AccountantKind.PRV if rp.accountant == common_pb2.ACCOUNTANT_PRV else AccountantKind.RDP
    return JobLimits(
        job_id=job_id,
        rounds=int(spec.rounds),
        max_round_attempts=per_round,
        max_job_retries=retries,
        target_epsilon=target,
        target_delta=float(rp.delta) if target is not None else 1e-5,
        accountant=kind,
        round_attempts_rule=per_round_rule,
        job_retries_rule=retries_rule,
    )


def check_round(limits: JobLimits, round: int) -> None:
    """Refuse a round the signed job does not have.

    Raises:
        RuleRefusal: ROUND_NOT_SIGNED (rule ``job.rounds``) when ``round`` is not in
            1..rounds.
    """
    if not 1 <= round <= limits.rounds:
        raise RuleRefusal(
            "job.rounds",
            f"job {limits.job_id} was signed for rounds 1..{limits.rounds}; round {round} "
            "is not one of them",
            reason=Reason.ROUND_NOT_SIGNED,
        )


def check_charge(
    limits: JobLimits,
    *,
    round: int,
    charged: Sequence[tuple[int, RoundCost]],
    cost: RoundCost,
) -> None:
    """Refuse a task whose charge the job does not allow (see the module docstring).

    Args:
        limits: the job's limits at this site.
        round: the task's round.
        charged: (round, cost) of every attempt of this job the ledger counts.
        cost: what this task would cost.

    Raises:
        RuleRefusal: ROUND_NOT_SIGNED, ATTEMPTS_EXCEEDED or BUDGET_EXCEEDED, naming the rule
            (see the module docstring).
    """
    check_round(limits, round)
    in_round = sum(1 for r, _ in charged if r == round)
    if in_round >= limits.max_round_attempts:
        raise RuleRefusal(
            limits.round_attempts_rule,
            f"job {limits.job_id}: round {round} was already charged {in_round} times; this "
            f"site pays for at most {limits.max_round_attempts} attempts of a round",
            reason=Reason.ATTEMPTS_EXCEEDED,
        )
    retries = len(charged) - len({r for r, _ in charged})
    if in_round > 0 and retries >= limits.max_job_retries:
        raise RuleRefusal(
            limits.job_retries_rule,
            f"job {limits.job_id}: {retries} retries were already charged; this site pays "
            f"for at most {limits.max_job_retries} in the job",
            reason=Reason.ATTEMPTS_EXCEEDED,
        )
    if limits.target_epsilon is None:
        return
    costs = [c for _, c in charged]
    eps = job_epsilon([*costs, cost], kind=limits.accountant, delta=limits.target_delta)
    if not eps <= limits.target_epsilon * (1.0 + _FLOAT_SLACK):
        # A target job whose round cost holds no DP-SGD: the site does not count it
        # (agent.privacy.counted), and the update-level layer alone cannot meet the target.
        why = (
            "; its record-level DP-SGD runs in the job's code and is not counted here "
            "(policy.trust_bundle_dp)"
            if cost.record is None and not cost.evaluation
            else ""
        )
        raise RuleRefusal(
            "job.privacy.sample.target_epsilon",
            f"job {limits.job_id}: this round would make the job's ε {eps:.4g}, past the "
            f"{limits.target_epsilon:.4g} it was signed for (δ={limits.target_delta:g}){why}",
            reason=Reason.BUDGET_EXCEEDED,
        )


def job_epsilon(costs: Sequence[RoundCost], *, kind: AccountantKind, delta: float) -> float:
    """A job's record-level ε at δ over its rounds: the tightest valid bound at hand.

    Always the RDP composition of the rounds' record curves (``confide.dp.budget``; each
    round's curve is the minimum of its DP-SGD and update-noise bounds). For a PRV job whose
    rounds all ran DP-SGD with the same q and σ, the PRV accountant's ε of the DP-SGD steps
    together (Gopi et al. 2021) is a second valid bound on the same release, and the smaller
    of the two is returned: the job's σ was planned with PRV, and RDP alone would call the
    planned rounds over the target.
    """
    rdp_eps, _ = cumulative_epsilon(costs, delta=delta)
    if kind is not AccountantKind.PRV or not costs:
        return rdp_eps
    records = [c.record for c in costs]
    mechanisms = {(r.sample_rate, r.noise_multiplier) for r in records if r is not None}
    if None in records or len(mechanisms) != 1:
        return rdp_eps
    ((q, sigma),) = mechanisms
    steps = sum(r.steps for r in records if r is not None)
    prv = epsilon(
        kind=AccountantKind.PRV, sample_rate=q, noise_multiplier=sigma, steps=steps, delta=delta
    )
    return min(rdp_eps, prv) if math.isfinite(prv) else rdp_eps
