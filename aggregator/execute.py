"""Carrying out the round machine's actions: queue tasks, persist, audit, aggregate.

``rounds.advance`` decides; ``Executor.execute`` does, under the coordinator's lock. Kept
apart from ``aggregator.coordinator`` so each stays one concept (events in, actions out).

SecAgg+ actions: ``RoundStarted`` of a secure job validates the job's SecAgg+ parameters for
the sites actually selected (``confide.secagg.choose_params``) and opens a fresh in-memory
``SecureRound``; ``CloseStage`` closes a stage there and queues each next-stage site its own
task; ``Aggregate`` unmasks the sum. A ``RoundAborted`` (or invalid parameters) is fed back
as ``SecAggAborted``, so the round fails and is retried like a plaintext round. No action
logs or stores any site's input: logs carry counts, the store gets metadata and the model.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import structlog

from aggregator import rounds as r
from aggregator.blobs import BlobStore
from aggregator.jobs import Job
from aggregator.secure import SecureRound, params_for
from aggregator.sites import SiteRegistry
from aggregator.store import AuditNote, ModelRow, Store
from confide import secagg
from confide.errors import ConfigError, Reason

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
    r.RoundPhase.MASKED_INPUT: secagg.ServerStage.MASKED_INPUT,
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
                    "round_failed",
                    "aggregator",
                    now,
                    job_id,
                    a.round,
                    a.reason.value,
                    f"attempt {a.attempt}; retry={a.retry}",
                ),
            )
            log.warning("round_failed", job=job_id, round=a.round, attempt=a.attempt, retry=a.retry)
        elif isinstance(a, r.FinishJob):
            final = job.final_metrics()
            state = _JOB_STATE[a.phase]
            if a.phase is not r.RoundPhase.DONE:
                # A cancelled or failed job's open round ends too (a done round stays done).
                self.store.set_round_state(job_id, job.state.round, state, at=now)
            self.store.set_job_state(
                job_id,
                state,
                error=a.error,
                final_metrics=final,
                audit=AuditNote(
                    f"job_{state}", "aggregator", now, job_id, job.state.round, a.reason, a.error
                ),
            )
            log.info("job_finished", job=job_id, state=state, reason=a.reason, error=a.error)
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
                "job_failed", "aggregator", now, job_id, rnd, Reason.INTERNAL.value, error
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
                "round_started", "aggregator", now, job_id, a.round, "", ",".join(a.sites)
            ),
        )
        log.info("round_started", job=job_id, round=a.round, attempt=a.attempt, sites=len(a.sites))
        if not job.spec.secure_aggregation.enabled:
            return
        try:
            params = params_for(job.spec, n=len(a.sites))
        except ConfigError as exc:
            # Validated for min_sites at submit; more sites may not fit (e.g. bits headroom).
            log.warning("secagg_params_refused", job=job_id, round=a.round, error=str(exc))
            self.feed(job_id, r.SecAggAborted(a.round, a.attempt, str(exc)))
            return
        job.secure = SecureRound.start(
            round_id=f"{self.federation}/{job_id}/{a.round}", params=params, shapes=job.shapes
        )
        log.info(
            "secagg_started",
            job=job_id,
            round=a.round,
            threshold=params.threshold,
            neighbours=params.neighbours,
        )

    def _close_stage(self, job_id: str, job: Job, a: r.CloseStage) -> None:
        if job.secure is None:  # parameters were refused; SecAggAborted already fed
            return
        try:
            tasks = job.secure.close(_SERVER_STAGE[a.closing])
        except secagg.RoundAborted as exc:
            log.warning(
                "secagg_aborted", job=job_id, round=a.round, stage=a.closing.value, error=str(exc)
            )
            self.feed(job_id, r.SecAggAborted(a.round, a.attempt, str(exc)))
            return
        log.info(
            "secagg_stage_closed",
            job=job_id,
            round=a.round,
            stage=a.closing.value,
            sites=len(a.sites),
        )
        for site, payload in tasks.items():
            self.sites.send(site, job.stage_task(a, payload))

    def _aggregate(self, job_id: str, job: Job, a: r.Aggregate) -> None:
        t0 = time.perf_counter()
        sha, opt_sha = job.aggregate(self.blobs)
        now = self.clock()
        self.store.complete_round(
            job_id,
            a.round,
            model=ModelRow(job_id, job.version_no, sha, opt_sha, now),
            metrics=job.round_metrics(updates=len(a.sites), now=now),
            audit=AuditNote("round_completed", "aggregator", now, job_id, a.round, "", sha),
        )
        log.info(
            "round_completed",
            job=job_id,
            round=a.round,
            model_version=sha,
            updates=len(a.sites),
            aggregate_ms=round(1000 * (time.perf_counter() - t0), 1),
        )
        self.feed(job_id, r.ModelStored(a.round, sha))
