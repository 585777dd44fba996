"""The glue between RPCs, the pure round state machine, the store and the per-site queues.

Each event (a site connects, an update arrives, a deadline passes) is fed to
``rounds.advance`` under one lock; the returned actions are carried out in order (queue tasks,
reset or apply the running sum, persist, audit). One timer thread waits on a condition
variable until the earliest round deadline or site timeout (no polling) and feeds
``DeadlinePassed`` / disconnects.

Extension point for SecAgg+: new ``rounds`` phases and events are fed the same way through
``_feed``; new actions get a branch in ``_execute`` (e.g. ``SendTask`` with SHARE_KEYS carrying
the forwarded keys, an ``Unmask`` action reconstructing masks). Masked inputs arrive through
``accept_update`` with ``stage=MASKED_INPUT``; only ``UploadTarget`` and the sum type change.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace

import structlog

from aggregator import rounds as r
from aggregator.blobs import BlobStore
from aggregator.jobs import Job, UploadTarget, new_job
from aggregator.sites import SiteConn, SiteRegistry
from aggregator.store import AuditNote, ModelRow, SiteRow, Store
from confide.errors import PeerError, Reason, ReplayedMessage
from confide.v1 import common_pb2, federation_pb2
from confide.wire.blob import NamedArrays

__all__ = ["Coordinator", "UploadTarget"]

log = structlog.get_logger("aggregator.coordinator")

_JOB_STATE = {
    r.RoundPhase.DONE: "done",
    r.RoundPhase.FAILED: "failed",
    r.RoundPhase.CANCELLED: "cancelled",
}


class Coordinator:
    """Owns active jobs, site queues and the deadline timer.

    Args:
        store, blobs: persistence.
        heartbeat_interval_s: told to sites at register.
        site_timeout_s: a site silent this long is disconnected.
        max_retries: failed attempts of a round before its job fails.
        clock: unix-seconds clock (a parameter for tests).
    """

    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        *,
        heartbeat_interval_s: float,
        site_timeout_s: float,
        max_retries: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.blobs = store, blobs
        self.heartbeat_interval_s = heartbeat_interval_s
        self.site_timeout_s = site_timeout_s
        self.max_retries = max_retries
        self.clock = clock
        self.sites = SiteRegistry()
        self._cond = threading.Condition(threading.RLock())
        self._jobs: dict[str, Job] = {}
        self._stopping = False
        self._timer = threading.Thread(target=self._run_timer, name="round-timer", daemon=True)

    # ----- life cycle -----

    def start(self) -> None:
        """Resume every running job from the store, then start the timer thread."""
        for row in self.store.jobs():
            if row.state == "running":
                self._restore(row.id, row.spec, row.signed_job, row.signer_cert)
        self._timer.start()

    def stop(self) -> None:
        """Stop the timer and end every task stream."""
        with self._cond:
            self._stopping = True
            for conn in self.sites.all():
                self.sites.disconnect(conn.site, conn.conn_id)
            self._cond.notify_all()
        if self._timer.is_alive():
            self._timer.join(timeout=5)

    def _restore(self, job_id: str, spec_bytes: bytes, signed: bytes, cert: bytes) -> None:
        spec = common_pb2.JobSpec.FromString(spec_bytes)
        models = self.store.models(job_id)
        last = models[-1]
        job = self._new_job(
            job_id,
            spec,
            common_pb2.Envelope.FromString(signed),
            cert,
            model_version=last.sha256,
            version_no=last.version_no,
        )
        if last.optimizer_state:
            job.optimizer.load_state(self.blobs.load(last.optimizer_state))
        done = last.version_no
        if done >= spec.rounds:
            job.state = r.RoundState(
                job.state.params,
                phase=r.RoundPhase.AGGREGATING,
                round=done,
                model_version=last.sha256,
            )
            event: r.Event = r.ModelStored(done, last.sha256)
        else:
            attempt = next((x.attempt for x in self.store.rounds(job_id) if x.round == done + 1), 1)
            job.state = r.RoundState(
                job.state.params, round=done + 1, attempt=attempt, model_version=last.sha256
            )
            event = r.Resume()
        with self._cond:
            self._jobs[job_id] = job
            log.info("job_resumed", job=job_id, round=job.state.round)
            self._feed(job_id, event)

    def _new_job(
        self,
        job_id: str,
        spec: common_pb2.JobSpec,
        signed: common_pb2.Envelope,
        cert: bytes,
        *,
        model_version: str,
        version_no: int,
    ) -> Job:
        eligible = frozenset(c.site for c in self.sites.all() if spec.dataset.name in c.datasets)
        return new_job(
            job_id,
            spec,
            signed,
            cert,
            model_version=model_version,
            version_no=version_no,
            max_retries=self.max_retries,
            eligible=eligible,
        )

    # ----- sites -----

    def register(self, site: str, req: federation_pb2.RegisterRequest) -> None:
        """Record a site's registration (datasets, device)."""
        now = self.clock()
        self.store.upsert_site(
            SiteRow(site, list(req.datasets), req.device, req.agent_version, now),
            audit=AuditNote("site_registered", site, now, detail=",".join(req.datasets)),
        )

    def open_stream(self, site: str) -> SiteConn:
        """Connect ``site``: its queue receives its tasks from now on.

        Raises:
            PeerError: the site never registered (reason UNKNOWN_SITE).
        """
        row = self.store.site(site)
        if row is None:
            raise PeerError(f"{site!r} must Register first", reason=Reason.UNKNOWN_SITE)
        with self._cond:
            old = self.sites.get(site)
            conn = self.sites.connect(site, frozenset(row.datasets), now=self.clock())
            for job_id, job in list(self._jobs.items()):
                if old is not None:
                    self._feed(job_id, r.SiteDisconnected(site))
                if job.spec.dataset.name in conn.datasets:
                    self._feed(job_id, r.SiteConnected(site))
            self._cond.notify_all()
        return conn

    def close_stream(self, conn: SiteConn) -> None:
        """The site's stream ended (or was replaced): it is no longer eligible."""
        with self._cond:
            if self.sites.disconnect(conn.site, conn.conn_id) is None:
                return
            log.info("site_disconnected", site=conn.site)
            for job_id in list(self._jobs):
                self._feed(job_id, r.SiteDisconnected(conn.site))
        self.store.set_heartbeat(conn.site, conn.last_seen)

    def heartbeat(self, site: str, hb: federation_pb2.Heartbeat) -> None:
        """Note that the site is alive (and what it is doing)."""
        with self._cond:
            conn = self.sites.get(site)
            if conn is not None:
                conn.last_seen = self.clock()
                conn.current_task = hb.current_task
                conn.resources = hb.resources
                self._cond.notify_all()

    # ----- jobs -----

    def add_job(
        self,
        job_id: str,
        spec: common_pb2.JobSpec,
        signed: common_pb2.Envelope,
        cert: bytes,
        *,
        model_version: str,
    ) -> None:
        """Start running a job that the store already holds (with its version 0)."""
        with self._cond:
            job = self._new_job(
                job_id, spec, signed, cert, model_version=model_version, version_no=0
            )
            self._jobs[job_id] = job
            self._feed(job_id, r.Resume())

    def cancel(self, job_id: str) -> bool:
        """Cancel an active job; False when it is not active."""
        with self._cond:
            if job_id not in self._jobs:
                return False
            self._feed(job_id, r.Cancel())
            return True

    def connected(self) -> dict[str, SiteConn]:
        """A snapshot of every connected site's stream (copies, safe to read)."""
        with self._cond:
            return {c.site: replace(c) for c in self.sites.all()}

    def live_state(self, job_id: str) -> r.RoundState | None:
        """The in-memory round state of an active job."""
        with self._cond:
            job = self._jobs.get(job_id)
            return job.state if job else None

    # ----- uploads and reports -----

    def upload_target(self, job_id: str) -> UploadTarget:
        """The round, stage and model an upload for ``job_id`` must match.

        Raises:
            PeerError: the job is not active (reason UNKNOWN_JOB).
        """
        with self._cond:
            job = self._job(job_id)
            return job.upload_target()

    def check_update(self, site: str, job_id: str, rnd: int, task: str) -> None:
        """Refuse early an update the round would refuse (before its bytes arrive).

        Raises:
            ReplayedMessage, Unauthorized, PeerError: see ``rounds.check_update``.
        """
        with self._cond:
            job = self._job(job_id)
            r.check_update(job.state, site=site, round=rnd)
            expected = r.task_id(job_id, rnd, job.state.attempt, r.TaskKind.TRAIN)
            if task != expected:
                raise ReplayedMessage(f"task {task!r} is not the current task {expected!r}")

    def accept_update(
        self,
        site: str,
        job_id: str,
        rnd: int,
        header: federation_pb2.UpdateHeader,
        arrays: NamedArrays,
    ) -> None:
        """Add a verified update into the round's running sum and advance the round.

        Raises:
            ReplayedMessage, Unauthorized, MalformedMessage: the round refuses it.
        """
        with self._cond:
            self.check_update(site, job_id, rnd, header.task_id)
            job = self._jobs[job_id]
            job.running.add(arrays, num_samples=int(header.num_samples))
            job.add_update_metrics(header)
            now = self.clock()
            self.store.record_site(
                job.update_row(site, rnd, header),
                audit=AuditNote("update_accepted", site, now, job_id, rnd),
            )
            self._feed(job_id, r.UpdateReceived(site, rnd))

    def report(self, site: str, job_id: str, rnd: int, rep: federation_pb2.TaskReport) -> None:
        """Record a site's task report and advance the round.

        Raises:
            PeerError: the job is not active.
            ReplayedMessage: the report names another task.
        """
        with self._cond:
            job = self._job(job_id)
            kind = (
                r.TaskKind.EVALUATE
                if rep.kind == federation_pb2.TASK_KIND_EVALUATE
                else r.TaskKind.TRAIN
            )
            expected = r.task_id(job_id, rnd, job.state.attempt, kind)
            if rep.task_id != expected or rnd != job.state.round:
                raise ReplayedMessage(f"report for {rep.task_id!r}; current is {expected!r}")
            ok = rep.outcome == common_pb2.OUTCOME_OK
            outcome = common_pb2.Outcome.Name(rep.outcome).removeprefix("OUTCOME_").lower()
            now = self.clock()
            final = kind is r.TaskKind.EVALUATE
            self.store.record_site(
                job.report_row(site, 0 if final else rnd, rep),
                audit=AuditNote("task_report", site, now, job_id, rnd, rep.reason, outcome),
            )
            if final and ok:
                job.add_final_metrics(rep)
            self._feed(job_id, r.ReportReceived(site, rnd, kind, ok))

    def _job(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise PeerError(f"no active job {job_id!r}", reason=Reason.UNKNOWN_JOB)
        return job

    # ----- the state machine -----

    def _feed(self, job_id: str, event: r.Event) -> None:
        job = self._jobs[job_id]
        job.state, actions = r.advance(job.state, event, now=self.clock())
        for action in actions:
            self._execute(job_id, job, action)
        self._cond.notify_all()

    def _execute(self, job_id: str, job: Job, a: r.Action) -> None:
        now = self.clock()
        if isinstance(a, r.SendTask):
            for site in a.sites:
                self.sites.send(site, job.task(a))
        elif isinstance(a, r.RoundStarted):
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
            log.info(
                "round_started", job=job_id, round=a.round, attempt=a.attempt, sites=len(a.sites)
            )
        elif isinstance(a, r.Aggregate):
            try:
                self._aggregate(job_id, job, a)
            except (OSError, ValueError, ArithmeticError) as exc:
                # Our failure, not the last uploader's: fail the job, keep the server up.
                log.error("aggregation_failed", job=job_id, round=a.round, error=repr(exc))
                job.state = r.RoundState(
                    job.state.params,
                    phase=r.RoundPhase.FAILED,
                    round=a.round,
                    eligible=job.state.eligible,
                )
                self._execute(
                    job_id,
                    job,
                    r.SendTask(
                        r.TaskKind.JOB_DONE, tuple(sorted(job.state.eligible)), a.round, 1, "", 0.0
                    ),
                )
                self._execute(
                    job_id, job, r.FinishJob(r.RoundPhase.FAILED, f"aggregation failed: {exc}")
                )
        elif isinstance(a, r.RoundFailed):
            job.running.reset()
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
            self.store.set_job_state(
                job_id,
                state,
                error=a.error,
                final_metrics=final,
                audit=AuditNote(
                    f"job_{state}", "aggregator", now, job_id, job.state.round, "", a.error
                ),
            )
            log.info("job_finished", job=job_id, state=state, error=a.error)
            del self._jobs[job_id]

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
        self._feed(job_id, r.ModelStored(a.round, sha))

    # ----- timer -----

    def _run_timer(self) -> None:
        with self._cond:
            while not self._stopping:
                now = self.clock()
                for job_id in [
                    j
                    for j, job in self._jobs.items()
                    if job.state.deadline is not None and job.state.deadline <= now
                ]:
                    self._feed(job_id, r.DeadlinePassed())
                for conn in self.sites.expired(now=now, timeout_s=self.site_timeout_s):
                    log.warning("site_timed_out", site=conn.site)
                    self.close_stream(conn)
                wake = [
                    j.state.deadline for j in self._jobs.values() if j.state.deadline is not None
                ]
                nxt = self.sites.next_expiry(timeout_s=self.site_timeout_s)
                if nxt is not None:
                    wake.append(nxt)
                self._cond.wait(max(0.0, min(wake) - self.clock()) if wake else None)
