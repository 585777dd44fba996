"""Carrying out the round machine's actions: queue tasks, persist, audit, aggregate.

``rounds.advance`` decides; ``Executor.execute`` does, under the coordinator's lock. Kept
apart from ``aggregator.coordinator`` so each stays one concept (events in, actions out).

SecAgg+ actions: ``RoundStarted`` of a secure job opens a fresh in-memory ``SecureRound``
with the job's rules (validated at submit; the parameters are taken for the sites that
advertise); ``CloseStage`` closes a stage there and queues each next-stage site its own
task; ``Aggregate`` unmasks the sum. A ``RoundAborted`` is fed back as ``SecAggAborted``, so
the round fails and is retried like a plaintext round; sites a close leaves out are fed
back as ``SecAggDropped``. Closing the share check audits every rejected share
(``secagg_share_rejected``, naming the sender) and records a failed row, with the reason,
for each site left out, so ``confide job status`` names it. No action logs or stores any
site's input: logs carry counts, the store gets metadata and the model.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import structlog

from aggregator import rounds as r
from aggregator.failures import failure_summary, record_silent, unusable_summary
from aggregator.jobs import Job
from aggregator.secure import SecureRound, rules_for
from aggregator.sites import SiteRegistry
from aggregator.store import AuditNote, BlobStore, ModelRow, Store
from confide import secagg
from confide.errors import Reason
from confide.secagg.encoding import secure_encoding
from confide.secagg.rotation import rotation_seed

__all__ = ["Executor"]

log = structlog.get_logger("aggregator.coordinator")

_JOB_STATE = {
    r.RoundPhase.DONE: "done",
    r.RoundPhase.FAILED: "failed",
    r.RoundPhase.CANCELLED: "cancelled",
}
_SERVER_STAGE = {
    r.RoundPhase.ADVERTISE: secagg.ServerStage.ADVERTISE,
    r.RoundPhase.SHARE_KEYS: secagg.ServerStage.SHARE_KEYS,
    r.RoundPhase.CHECK_SHARES: secagg.ServerStage.CHECK_SHARES,
    r.RoundPhase.MASKED_INPUT: secagg.ServerStage.MASKED_INPUT,
    r.RoundPhase.CONSISTENCY: secagg.ServerStage.CONSISTENCY,
}


class Executor:
    """Executes actions for the coordinator (always called under its lock).

    Args:
        store, blobs: persistence.
        sites: the connected sites' task queues.
        jobs: the coordinator's active jobs (a finished job is removed from it).
        federation: the federation name (part of every SecAgg+ round id).
        feed: feeds an event back into a job's state machine (``Coordinator._feed``).
        clock: unix seconds.
    """

    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        sites: SiteRegistry,
        jobs: dict[str, Job],
        *,
        federation: str,
        feed: Callable[[str, r.Event], None],
        clock: Callable[[], float],
    ) -> None:
        self.store, self.blobs, self.sites = store, blobs, sites
        self.jobs = jobs
        self.federation, self.feed, self.clock = federation, feed, clock

    def execute(self, job_id: str, job: Job, a: r.Action) -> None:
        """Carry out one action of ``job``."""
        now = self.clock()
        if isinstance(a, r.SendTask):
            for site in a.sites:
                self.sites.send(site, job.task(a))
        elif isinstance(a, r.RoundStarted):
            self._round_started(job_id, job, a, now)
        elif isinstance(a, r.CloseStage):
            self._close_stage(job_id, job, a)
        elif isinstance(a, r.Aggregate):
            try:
                self._aggregate(job_id, job, a)
            except secagg.RoundAborted as exc:
                log.warning("secagg_aborted", job=job_id, round=a.round, error=str(exc))
                self.feed(job_id, r.SecAggAborted(a.round, job.state.attempt, str(exc)))
            # Anything else (disk, a bug) is our failure, not the last uploader's: it reaches
            # the coordinator, which fails the job with ``fail_job`` and keeps the server up.
        elif isinstance(a, r.RoundFailed):
            job.reset_round()
            self.store.set_round_state(
                job_id,
                a.round,
                "failed",
                at=now,
                audit=AuditNote(
                    event="round_failed",
                    actor="aggregator",
                    at=now,
                    job=job_id,
                    round=a.round,
                    reason=a.reason.value,
                    detail=f"attempt {a.attempt}; retry={a.retry}",
                ),
            )
            record_silent(self.store, job_id, a, now=now)
            log.warning(
                "round_failed",
                job=job_id,
                round=a.round,
                attempt=a.attempt,
                retry=a.retry,
                missing=list(a.missing),
                why=a.why,
            )
        elif isinstance(a, r.FinishJob):
            final = job.final_metrics()
            state = _JOB_STATE[a.phase]
            error = a.error
            if a.phase is r.RoundPhase.FAILED:
                # Besides the refusals the round named: the sites that failed, or said nothing.
                rnd, attempt = job.state.round, job.state.attempt
                summary = failure_summary(self.store, job_id, rnd, attempt=attempt)
                if not summary:  # none took part: say who has the dataset but cannot use it
                    reports = self.sites.unusable_reports(job.spec.dataset.name)
                    summary = unusable_summary(reports, details=False)
                if summary:
                    error = f"{error}; {summary}"
            if a.phase is not r.RoundPhase.DONE:
                # A cancelled or failed job's open round ends too (a done round stays done).
                self.store.set_round_state(job_id, job.state.round, state, at=now)
            self.store.set_job_state(
                job_id,
                state,
                error=error,
                final_metrics=final,
                audit=AuditNote(
                    event=f"job_{state}",
                    actor="aggregator",
                    at=now,
                    job=job_id,
                    round=job.state.round,
                    reason=a.reason,
                    detail=error,
                ),
            )
            log.info("job_finished", job=job_id, state=state, reason=a.reason, error=error)
            self.jobs.pop(job_id, None)

    def fail_job(self, job_id: str, job: Job, exc: BaseException, *, action: str) -> None:
        """Fail ``job`` after an unexpected error while carrying out one of its actions.

        The error is ours (reason ``internal``), never a site's: it is logged with its
        traceback and audited; the round row is marked failed, every eligible site gets
        JOB_DONE and the job leaves memory, so no round stays stuck waiting.

        Args:
            action: the action's name, for the log and the job's error.
        """
        now = self.clock()
        rnd = job.state.round
        error = f"internal error during {action}: {exc!r}"
        log.error("job_action_failed", job=job_id, round=rnd, action=action, exc_info=exc)
        job.state = dataclasses.replace(
            job.state, phase=r.RoundPhase.FAILED, deadline=None, error=error
        )
        job.reset_round()
        self.jobs.pop(job_id, None)
        done = r.SendTask(r.TaskKind.JOB_DONE, tuple(sorted(job.state.eligible)), rnd, 1, "", 0)
        for site in done.sites:
            self.sites.send(site, job.task(done))
        self.store.set_round_state(job_id, rnd, "failed", at=now)
        self.store.set_job_state(
            job_id,
            "failed",
            error=error,
            audit=AuditNote(
                event="job_failed",
                actor="aggregator",
                at=now,
                job=job_id,
                round=rnd,
                reason=Reason.INTERNAL.value,
                detail=error,
            ),
        )

    def _round_started(self, job_id: str, job: Job, a: r.RoundStarted, now: float) -> None:
        job.reset_round()
        self.store.start_round(
            job_id,
            a.round,
            attempt=a.attempt,
            model_in=a.model_version,
            at=now,
            audit=AuditNote(
                event="round_started",
                actor="aggregator",
                at=now,
                job=job_id,
                round=a.round,
                detail=",".join(a.sites),
            ),
        )
        log.info("round_started", job=job_id, round=a.round, attempt=a.attempt, sites=len(a.sites))
        if not job.spec.secure_aggregation.enabled:
            return
        job.secure = SecureRound.start(
            federation=self.federation,
            job_id=job_id,
            round=a.round,
            rules=rules_for(job.spec),
            shapes=job.shapes,
            encoding=secure_encoding(job.spec),
            # The attempt as its task ids name it (job/round/attempt/kind), which sites use too.
            seed=rotation_seed(
                federation=self.federation, attempt=f"{job_id}/{a.round}/{a.attempt}"
            ),
        )
        log.info("secagg_started", job=job_id, round=a.round, sites=len(a.sites))

    def _close_stage(self, job_id: str, job: Job, a: r.CloseStage) -> None:
        if job.secure is None:  # parameters were refused; SecAggAborted already fed
            return
        sec = job.secure
        if a.closing is r.RoundPhase.CHECK_SHARES:
            self._audit_rejections(job_id, job, a)
        try:
            tasks, left = sec.close(_SERVER_STAGE[a.closing])
        except secagg.RoundAborted as exc:
            log.warning(
                "secagg_aborted", job=job_id, round=a.round, stage=a.closing.value, error=str(exc)
            )
            self.feed(job_id, r.SecAggAborted(a.round, a.attempt, str(exc)))
            return
        params = sec.server.params
        log.info(
            "secagg_stage_closed",
            job=job_id,
            round=a.round,
            stage=a.closing.value,
            sites=len(a.sites),
            left_out=len(left),
            threshold=params.threshold if params else 0,
            neighbours=params.neighbours if params else 0,
        )
        if left:
            self._record_left_out(job_id, job, a, left)
        for site, payload in tasks.items():
            self.sites.send(site, job.stage_task(a, payload))
        if left:
            self.feed(job_id, r.SecAggDropped(a.round, a.attempt, tuple(sorted(left))))

    def _audit_rejections(self, job_id: str, job: Job, a: r.CloseStage) -> None:
        """Audit each share a site rejected at the check stage, naming its sender."""
        if job.secure is None:
            return
        now = self.clock()
        for rej in job.secure.rejections:
            log.warning(
                "secagg_share_rejected",
                job=job_id,
                round=a.round,
                site=rej.site,
                sender=rej.sender,
                reason=rej.reason,
            )
            self.store.audit(
                AuditNote(
                    event="secagg_share_rejected",
                    actor=rej.site,
                    at=now,
                    job=job_id,
                    round=a.round,
                    reason=rej.reason,
                    detail=f"share from {rej.sender}",
                )
            )

    def _record_left_out(
        self, job_id: str, job: Job, a: r.CloseStage, left: frozenset[str]
    ) -> None:
        """Record a failed row for each site the share check left out, with why."""
        if job.secure is None:
            return
        now = self.clock()
        against: dict[str, str] = {}
        for rej in job.secure.rejections:
            against.setdefault(rej.sender, rej.reason)
        for site in sorted(left):
            reason = against.get(site, Reason.UNSAFE_REQUEST.value)
            self.store.record_site(
                job.left_out_row(site, a.round, reason),
                audit=AuditNote(
                    event="secagg_site_left_out",
                    actor=site,
                    at=now,
                    job=job_id,
                    round=a.round,
                    reason=reason,
                    detail="too few partners",
                ),
            )

    def _aggregate(self, job_id: str, job: Job, a: r.Aggregate) -> None:
        t0 = time.perf_counter()
        # A secure round's sum covers U3 (the masked inputs), not only the unmask signers.
        updates = len(job.secure.server.survivors) if job.secure is not None else len(a.sites)
        sha, opt_sha = job.aggregate(self.blobs)
        now = self.clock()
        self.store.complete_round(
            job_id,
            a.round,
            model=ModelRow(
                job=job_id,
                version_no=job.version_no,
                sha256=sha,
                optimizer_state=opt_sha,
                created=now,
            ),
            metrics=job.round_metrics(updates=updates, now=now),
            audit=AuditNote(
                event="round_completed",
                actor="aggregator",
                at=now,
                job=job_id,
                round=a.round,
                detail=sha,
            ),
        )
        log.info(
            "round_completed",
            job=job_id,
            round=a.round,
            model_version=sha,
            updates=updates,
            aggregate_ms=round(1000 * (time.perf_counter() - t0), 1),
        )
        self.feed(job_id, r.ModelStored(a.round, sha))
