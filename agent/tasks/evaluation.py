# Math notation (ε, δ, z) in docstrings cites confide.dp.evaluation.
"""What a site releases about its hold-out: each model of a job evaluated once, within caps.

An evaluation answer is a query on the site's hold-out records, and the aggregator chooses the
model: answered freely, crafted models would read out the hold-out's class counts and feature
means. So, for every hold-out figure that leaves (an EVALUATE report, or the figures of the
round's input model that travel with an update):

- the model is one ``agent.admission.lineage`` tied to the job (pinned version; trained on,
  or final);
- one job gets at most ``min(signed evaluation.max_evaluations, policy max_evaluations,
  rounds + 1)`` distinct models evaluated, one slot kept for the final model while it is
  not evaluated yet; past that the task is refused ``evaluation_cap``;
- the figures are the Gaussian mechanism of ``confide.dp.evaluation`` with the job's z, and
  its cost is reserved in the privacy ledger (record level, under the dataset's cap, at the
  job's δ) before they leave; z = 0 (exact figures, ε = ∞) only where the dataset's policy
  sets ``exact_evaluation = true``, and then outside the ledger;
- a code-bundle job's noised figures only where the site trusts bundle code's privacy
  mechanisms (``policy.trust_bundle_dp``, ``agent.privacy.counted``): its code runs next to
  the counting and could make the counts depend on every record; refused ``unsafe_request``
  otherwise (exact figures stay a matter of ``exact_evaluation``);
- a model asked again gets the very figures released the first time (durably stored), at no
  further cost: fresh noise on a repeated question would average away.

Every decision (released, repeated, refused with its reason) is appended to an evaluation log
in the site's state, next to the ledger, and to the site's hash-chained audit trail
(``agent.local.audit``: events ``evaluation_released``, ``evaluation_repeated``,
``evaluation_refused``, with the model hash, the dataset and the ε charged). ``Evaluations``
also fronts the site's pinned model versions (``pin``), so the task runner asks one
collaborator about models and figures.
"""

from __future__ import annotations

import collections
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from agent.admission.lineage import ModelVersions, PinnedModel, Purpose
from agent.admission.rules import RuleRefusal
from agent.admission.site_policy import DatasetPolicy
from agent.data.declared import declared_sizes
from agent.local.audit import SiteAudit
from agent.privacy.counted import runs_job_code
from agent.privacy.plan import PrivacyPlan
from confide.data.datasets import DatasetDescription
from confide.dp.evaluation import (
    ReleasedEvaluation,
    counts_from_means,
    evaluation_cost,
    release_evaluation,
)
from confide.errors import InternalError, PolicyRefusal, Reason
from confide.statefiles import open_database
from confide.types import JobId
from confide.v1 import common_pb2, federation_pb2
from confide.wire.worker import EvalResult

__all__ = ["EvaluationEvent", "Evaluations"]

log = structlog.get_logger("confide.agent")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS evaluations (
    job_id TEXT NOT NULL,
    model_sha256 TEXT NOT NULL,
    version INTEGER NOT NULL,
    accuracy REAL NOT NULL,
    loss REAL NOT NULL,
    num_samples INTEGER NOT NULL,
    noise_multiplier REAL NOT NULL,
    released_at REAL NOT NULL,
    PRIMARY KEY (job_id, model_sha256)
);
CREATE TABLE IF NOT EXISTS evaluation_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    job_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    model_sha256 TEXT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class EvaluationEvent:
    """One line of the evaluation log: released, repeated, or refused (with its reason)."""

    at: float
    job_id: str
    version: int
    model_sha256: str
    outcome: str
    reason: str


class Evaluations:
    """The hold-out figures a site has released per job, and the gate new ones pass.

    Args:
        path: the SQLite file (the agent uses its ledger file); ``:memory:`` for tests.
        privacy: the site's ledger and δ rule; without one, noised evaluations are refused
            (there is nowhere to charge them) and only policy-allowed exact ones are given.
        versions: the site's pinned model versions (default: in ``path``).
        audit: the site's audit trail, which gets one entry per decision (None: none).
    """

    def __init__(
        self,
        path: Path | str = ":memory:",
        *,
        privacy: PrivacyPlan | None,
        versions: ModelVersions | None = None,
        audit: SiteAudit | None = None,
    ) -> None:
        self._conn = open_database(path, schema=_SCHEMA, what="the evaluation log")
        self._privacy = privacy
        self.versions = versions if versions is not None else ModelVersions(path)
        self.audit = audit
        self._lock = threading.Lock()
        self._job_locks: collections.defaultdict[str, threading.Lock] = collections.defaultdict(
            threading.Lock
        )

    def close(self) -> None:
        """Close the database connections."""
        self.versions.close()
        with self._lock:
            self._conn.close()

    def pin(
        self, task: federation_pb2.Task, *, spec: common_pb2.JobSpec, purpose: Purpose
    ) -> PinnedModel:
        """``ModelVersions.pin``; the refusal of an EVALUATE also goes to the evaluation log.

        Raises:
            PolicyRefusal: UNTIED_MODEL (see ``agent.admission.lineage``).
        """
        try:
            return self.versions.pin(task, spec=spec, purpose=purpose)
        except PolicyRefusal as exc:
            if purpose is Purpose.EVALUATE:
                self._log(
                    task.job_id,
                    task.lineage.version,
                    task.model_version[:64],
                    "refused",
                    exc.reason.value,
                )
            raise

    def for_update(
        self,
        *,
        spec: common_pb2.JobSpec,
        dataset: DatasetDescription,
        policy: DatasetPolicy,
        model: PinnedModel,
        evaluate: Callable[[float], EvalResult],
        trust_bundle_dp: bool = False,
    ) -> ReleasedEvaluation | None:
        """``release`` for the figures a TRAIN sends with its update; None when withheld
        (the job asks for none, or the gate refuses: the round trains on without them).

        Raises:
            WorkerFailed: the worker failed the evaluation.
        """
        if spec.evaluation.max_evaluations == 0:
            return None
        try:
            return self.release(
                spec=spec,
                dataset=dataset,
                policy=policy,
                model=model,
                evaluate=evaluate,
                trust_bundle_dp=trust_bundle_dp,
            )
        except PolicyRefusal as exc:
            log.info("evaluation_withheld", reason=exc.reason.value, error=exc.message)
            return None

    def release(
        self,
        *,
        spec: common_pb2.JobSpec,
        dataset: DatasetDescription,
        policy: DatasetPolicy,
        model: PinnedModel,
        evaluate: Callable[[float], EvalResult],
        trust_bundle_dp: bool = False,
    ) -> ReleasedEvaluation:
        """The figures this site may release for ``model``, computed, noised and charged once.

        Args:
            spec: the verified job spec (its ``evaluation`` block and δ).
            dataset: the site dataset the job runs on (its hold-out count, declared at
                register, bounds the count released).
            policy: the site's policy for it.
            model: the pinned model (``ModelVersions.pin``).
            evaluate: runs the worker's hold-out evaluation with the given loss clip L; called
                only when the model has no stored release.
            trust_bundle_dp: the site's ``policy.trust_bundle_dp``.

        Raises:
            PolicyRefusal: EVALUATION_CAP (the job asks for none, or its evaluations here are
                spent); UNSAFE_REQUEST (exact figures the policy does not allow, or noised ones
                without a ledger); BUDGET_EXCEEDED (the charge would cross the dataset's cap).
            WorkerFailed: the worker failed the evaluation (nothing is recorded or charged).
        """
        with self._job_locks[model.job_id]:
            try:
                return self._release(spec, dataset, policy, model, evaluate, trust_bundle_dp)
            except PolicyRefusal as exc:
                self._log(
                    model.job_id,
                    model.version,
                    model.sha256,
                    "refused",
                    exc.reason.value,
                    dataset=dataset.name,
                )
                raise

    def released(self, job_id: str) -> dict[str, ReleasedEvaluation]:
        """The figures released for each model of a job, by model hash."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT model_sha256, accuracy, loss, num_samples, noise_multiplier "
                "FROM evaluations WHERE job_id = ?",
                (job_id,),
            ).fetchall()
        return {
            str(sha): ReleasedEvaluation(float(a), float(loss), int(n), float(z))
            for sha, a, loss, n, z in rows
        }

    def history(self, job_id: str) -> list[EvaluationEvent]:
        """The evaluation log of a job, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT at, job_id, version, model_sha256, outcome, reason FROM evaluation_log "
                "WHERE job_id = ? ORDER BY seq",
                (job_id,),
            ).fetchall()
        return [
            EvaluationEvent(float(a), str(j), int(v), str(s), str(o), str(r))
            for a, j, v, s, o, r in rows
        ]

    # ----- the gate -----

    def _release(
        self,
        spec: common_pb2.JobSpec,
        dataset: DatasetDescription,
        policy: DatasetPolicy,
        model: PinnedModel,
        evaluate: Callable[[float], EvalResult],
        trust_bundle_dp: bool,
    ) -> ReleasedEvaluation:
        stored = self.released(model.job_id)
        if model.sha256 in stored:
            self._log(
                model.job_id, model.version, model.sha256, "repeated", "", dataset=dataset.name
            )
            log.info("evaluation_repeated", version=model.version)
            return stored[model.sha256]
        ev = spec.evaluation
        cap = min(int(ev.max_evaluations), int(policy.max_evaluations), int(spec.rounds) + 1)
        final_done = self._has_version(model.job_id, int(spec.rounds))
        keep = 0 if model.final or final_done else 1  # a slot for the final model
        if len(stored) + keep >= cap:
            raise PolicyRefusal(
                f"this job's hold-out evaluations at this site are spent ({len(stored)} of "
                f"{cap}{', one kept for the final model' if keep else ''})",
                reason=Reason.EVALUATION_CAP,
            )
        z, clip = float(ev.noise_multiplier), float(ev.loss_clip)
        if z == 0 and not policy.exact_evaluation:
            raise PolicyRefusal(
                f"the job asks for exact hold-out figures; the policy of dataset {dataset.name!r} "
                "allows only noised ones (exact_evaluation = false)",
                reason=Reason.UNSAFE_REQUEST,
            )
        if z > 0 and runs_job_code(spec) and not trust_bundle_dp:
            raise RuleRefusal(
                "policy.trust_bundle_dp",
                "the job's code bundle runs next to the hold-out counting and could make the "
                "counts depend on every record, so noise would not cover them; this site "
                "releases a bundle job's noised figures only with trust_bundle_dp = true",
                reason=Reason.UNSAFE_REQUEST,
                public=True,
            )
        if z > 0 and self._privacy is None:
            raise PolicyRefusal(
                "this agent has no privacy ledger to charge an evaluation to",
                reason=Reason.UNSAFE_REQUEST,
            )
        result = evaluate(clip)
        counts = counts_from_means(
            accuracy=result.accuracy,
            loss=result.loss,
            num_samples=result.num_samples,
            loss_clip=clip,
        )
        # The hold-out size is public (declared at register, agent.data.declared.declared_sizes):
        # the released count is clamped to it, post-processing with public information.
        declared = declared_sizes([dataset])
        public = declared[0].holdout_records if declared else None
        released = release_evaluation(counts, noise_multiplier=z, loss_clip=clip, max_count=public)
        # Exact figures have ε = ∞; logged as null (JSON has no infinity).
        epsilon = self._charge(spec, dataset, policy, model, z) if z > 0 else None
        self._store(model, released)
        self._log(
            model.job_id,
            model.version,
            model.sha256,
            "released",
            "",
            dataset=dataset.name,
            epsilon=epsilon or 0.0,
            detail=f"noise_multiplier={z:g}" if z > 0 else "exact, outside the ledger",
        )
        log.info(
            "evaluation_released",
            version=model.version,
            noise_multiplier=z,
            epsilon=epsilon,
            used=len(stored) + 1,
            cap=cap,
        )
        return released

    def _charge(
        self,
        spec: common_pb2.JobSpec,
        dataset: DatasetDescription,
        policy: DatasetPolicy,
        model: PinnedModel,
        z: float,
    ) -> float:
        """Count the release in the ledger for good (before it leaves); returns its own ε.

        A reservation left by a crash between this charge and the stored release (which
        therefore never left) covers this release: it is marked sent, not charged twice.
        """
        assert self._privacy is not None
        ledger, name = self._privacy.ledger, dataset.name
        cost = evaluation_cost(noise_multiplier=z, delta=self._privacy.job_delta(spec))
        # Under the job, so in its ε; keyed by the model, so released once per model.
        key = (JobId(model.job_id), model.sha256, model.version)
        try:
            rid = ledger.reserve(
                dataset=name,
                job_id=key[0],
                task_id=key[1],
                round=key[2],
                layer_costs=cost,
                max_epsilon=policy.max_epsilon,
            )
        except PolicyRefusal as exc:
            if exc.reason is not Reason.DENIED:
                raise
            left = [
                e
                for e in ledger.entries(name)
                if e.cost.evaluation and (e.job_id, e.task_id, e.round) == key
            ]
            if not left:
                raise
            rid = left[0].id
        ledger.mark_sent(rid)
        return cost.epsilon

    # ----- storage -----

    def _has_version(self, job_id: str, version: int) -> bool:
        with self._lock:
            row = self._conn.execute(
                "SELECT 1 FROM evaluations WHERE job_id = ? AND version = ?", (job_id, version)
            ).fetchone()
        return row is not None

    def _store(self, model: PinnedModel, r: ReleasedEvaluation) -> None:
        with self._lock:
            try:
                self._conn.execute(
                    "INSERT INTO evaluations VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        model.job_id,
                        model.sha256,
                        model.version,
                        r.accuracy,
                        r.loss,
                        r.num_samples,
                        r.noise_multiplier,
                        time.time(),
                    ),
                )
            except sqlite3.Error as exc:
                raise InternalError(f"cannot record the evaluation: {exc}") from exc

    def _log(
        self,
        job_id: str,
        version: int,
        sha: str,
        outcome: str,
        reason: str,
        *,
        dataset: str = "",
        epsilon: float = 0.0,
        detail: str = "",
    ) -> None:
        if self.audit is not None:
            self.audit.append(
                f"evaluation_{outcome}",
                at=time.time(),
                job=job_id,
                round=version,
                reason=reason,
                model_hash=sha,
                dataset=dataset,
                epsilon=epsilon,
                detail=detail,
            )
        with self._lock:
            try:
                self._conn.execute(
                    "INSERT INTO evaluation_log (at, job_id, version, model_sha256, outcome, "
                    "reason) VALUES (?, ?, ?, ?, ?, ?)",
                    (time.time(), job_id, version, sha, outcome, reason),
                )
            except sqlite3.Error as exc:
                raise InternalError(f"cannot append to the evaluation log: {exc}") from exc
