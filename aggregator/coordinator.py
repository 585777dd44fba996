"""The glue between RPCs, the pure round state machine, the store and the per-site queues.

Each event (a site connects, an update arrives, a deadline passes) is fed to
``rounds.advance`` under one lock; the returned actions are carried out in order (queue tasks,
reset or apply the running sum, persist, audit) by ``aggregator.execute.Executor``. The
coordinator's collaborators share that lock: ``aggregator.links`` turns site streams into
events, ``aggregator.timer`` fires deadlines and site timeouts, ``aggregator.restore`` builds
and resumes jobs.

SecAgg+ stage messages arrive through ``secagg`` (AdvertiseKeys, ShareKeys, SharesChecked,
ConsistencySignature, UnmaskShares) and masked inputs through ``accept_update`` (stage
MASKED_INPUT, added into the ``ServerRound``'s modular sum and dropped); each accepted
message is fed as
``SecAggReceived``. A site whose task stream ends during a SecAgg+ stage is dropped from that
stage at once (``SiteDisconnected``), so the stage does not wait for its deadline: its
secrets live only in its memory anyway.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from aggregator import rounds as r
from aggregator.admission import Declared, check_claims
from aggregator.execute import Executor
from aggregator.failures import record_report
from aggregator.jobs import KIND_OF, Job, UploadTarget
from aggregator.links import SiteLinks
from aggregator.restore import build_job, mark_failed, rebuild_job
from aggregator.secure import stage_message
from aggregator.sites import SiteConn, SiteProblem, SiteRegistry
from aggregator.store import AuditNote, BlobStore, Store
from aggregator.timer import DeadlineTimer
from confide.errors import PeerError, Reason, ReplayedMessage
from confide.pki import CertInfo
from confide.v1 import common_pb2, federation_pb2
from confide.wire.blob import NamedArrays
from confide.wire.bounds import check_stage_message

__all__ = ["Coordinator", "UploadTarget"]

log = structlog.get_logger("aggregator.coordinator")

_REASONS = frozenset(x.value for x in Reason)

_SECAGG_PHASE = {
    common_pb2.STAGE_ADVERTISE_KEYS: r.RoundPhase.ADVERTISE,
    common_pb2.STAGE_SHARE_KEYS: r.RoundPhase.SHARE_KEYS,
    common_pb2.STAGE_SHARES_CHECKED: r.RoundPhase.CHECK_SHARES,
    common_pb2.STAGE_CONSISTENCY: r.RoundPhase.CONSISTENCY,
    common_pb2.STAGE_UNMASK: r.RoundPhase.UNMASK,
}


class Coordinator:
    """Owns active jobs, site queues and the deadline timer.

    Args:
        store, blobs: persistence.
        heartbeat_interval_s: told to sites at register.
        site_timeout_s: a site silent this long is disconnected.
        max_retries: failed attempts of a round before its job fails.
        retry_backoff_s: the wait before retrying a round a site refused (doubling).
        federation: the federation name (part of every SecAgg+ round id).
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
        retry_backoff_s: float = 0.0,
        federation: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.blobs = store, blobs
        self.heartbeat_interval_s = heartbeat_interval_s
        self.site_timeout_s = site_timeout_s
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        self.clock = clock
        self.sites = SiteRegistry()
        self._cond = threading.Condition(threading.RLock())
        self._jobs: dict[str, Job] = {}
        self._exec = Executor(
            store,
            blobs,
            self.sites,
            self._jobs,
            federation=federation,
            feed=self._feed,
            clock=clock,
        )
        self._links = SiteLinks(
            store, self.sites, self._jobs, self._cond, feed=self._feed, clock=clock
        )
        self._deadlines = DeadlineTimer(
            self._cond,
            self._jobs,
            self.sites,
            feed=self._feed,
            fail_job=self._fail_job,
            close_stream=self._links.close_stream,
            site_timeout_s=site_timeout_s,
            clock=clock,
        )
        self._timer = self._deadlines.thread

    # ----- life cycle -----

    def start(self) -> None:
        """Resume every running job from the store, then start the timer thread."""
        for row in self.store.jobs():
            if row.state == "running":
                try:
                    job, event = rebuild_job(
                        self.store,
                        self.blobs,
                        self.sites,
                        row,
                        max_retries=self.max_retries,
                        retry_backoff_s=self.retry_backoff_s,
                    )
                    with self._cond:
                        self._jobs[row.id] = job
                        log.info("job_resumed", job=row.id, round=job.state.round)
                        self._feed(row.id, event)
                except Exception as exc:
                    # One job that cannot be rebuilt must not keep the aggregator down.
                    with self._cond:
                        self._jobs.pop(row.id, None)
                    self.fail_stored_job(row.id, exc)
        self._timer.start()

    def stop(self) -> None:
        """Stop the timer and end every task stream."""
        with self._cond:
            self._deadlines.stopping = True
            for conn in self.sites.all():
                self.sites.disconnect(conn.site, conn.conn_id)
            self._cond.notify_all()
        if self._timer.is_alive():
            self._timer.join(timeout=5)

    def fail_stored_job(self, job_id: str, exc: BaseException) -> None:
        """Mark a stored job FAILED because it cannot run (logged with its traceback, audited).

        Args:
            job_id: the job, already in the store.
            exc: why it cannot run; a ``ConfideError`` gives its reason, anything else
                ``internal``.
        """
        mark_failed(self.store, job_id, exc, clock=self.clock)

    # ----- sites (see ``aggregator.links``) -----

    def register(self, site: str, req: federation_pb2.RegisterRequest) -> None:
        """Record a site's registration (datasets, device)."""
        self._links.register(site, req)

    def open_stream(self, site: str, *, cert_pem: bytes = b"", instance: str = "") -> SiteConn:
        """Connect ``site``: its queue receives its tasks from now on (``SiteLinks``).

        Raises:
            PeerError: the site never registered (UNKNOWN_SITE).
            Unauthorized: another agent holds the site's identity (IDENTITY_IN_USE).
        """
        return self._links.open_stream(site, cert_pem=cert_pem, instance=instance)

    def close_stream(self, conn: SiteConn) -> None:
        """The site's stream ended (or was replaced): it is no longer eligible."""
        self._links.close_stream(conn)

    def drop_invalid(self, check: Callable[[bytes], None], *, site: str | None = None) -> None:
        """End the task stream of every site (or just ``site``) whose certificate is refused.

        Args:
            check: raises ``BadCertificate`` for a certificate no longer valid (revoked by
                a reloaded CRL, or expired).
            site: check only this site's stream (on its heartbeat); None: every stream.
        """
        self._links.drop_invalid(check, site=site)

    def heartbeat(self, site: str, hb: federation_pb2.Heartbeat) -> None:
        """Note that the site is alive (and what it is doing)."""
        self._links.heartbeat(site, hb)

    def connected(self) -> dict[str, SiteConn]:
        """A snapshot of every connected site's stream (copies, safe to read)."""
        return self._links.connected()

    def unusable(self, dataset: str | None = None) -> list[SiteProblem]:
        """(site, problem) for each site that reported ``dataset`` (None: any) unusable."""
        with self._cond:
            return self.sites.unusable_reports(dataset)

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
            job = build_job(
                self.sites,
                job_id,
                spec,
                signed,
                cert,
                model_version=model_version,
                version_no=0,
                max_retries=self.max_retries,
                retry_backoff_s=self.retry_backoff_s,
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
            if job.spec.secure_aggregation.enabled:
                r.check_secagg(job.state, site=site, round=rnd, phase=r.RoundPhase.MASKED_INPUT)
                kind = r.TaskKind.MASKED_INPUT
            else:
                r.check_update(job.state, site=site, round=rnd)
                kind = r.TaskKind.TRAIN
            expected = r.task_id(job_id, rnd, job.state.attempt, kind)
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
        """Add a verified update (or masked input) into the round's sum and advance the round.

        One transaction: every check runs first, the row and audit entry commit together,
        and the sum changes only with them. A plaintext update is added after the commit
        (``Job.admit`` checked it and allocated the sum, so adding cannot fail); a masked
        input is added inside the transaction, which rolls back if the add refuses it.

        Raises:
            ReplayedMessage, Unauthorized, MalformedMessage: the round refuses it.
            OversizedMessage: counts beyond the site's declaration, or the round is full.
            InternalError, sqlite3.Error: the store failed; the sum is unchanged.
        """
        with self._cond:
            self.check_update(site, job_id, rnd, header.task_id)
            job = self._jobs[job_id]
            now = self.clock()
            if job.secure is not None:
                sec = job.secure
                self.store.record_site(
                    job.accepted_row(site, rnd, sec.info[site]),
                    audit=AuditNote(
                        event="masked_input_accepted", actor=site, at=now, job=job_id, round=rnd
                    ),
                    before_commit=lambda: sec.masked(site, arrays),  # the modular sum; not kept
                )
                self._feed(job_id, r.SecAggReceived(site, rnd, r.RoundPhase.MASKED_INPUT))
                return
            admitted = job.admit(header, arrays, declared=self._declared(site, job))
            self.store.record_site(
                job.accepted_row(site, rnd, header, admitted),
                audit=AuditNote(
                    event="update_accepted",
                    actor=site,
                    at=now,
                    job=job_id,
                    round=rnd,
                    detail=admitted.describe(),
                ),
            )
            job.apply(admitted, header)
            self._feed(job_id, r.UpdateReceived(site, rnd))

    def report(self, site: str, job_id: str, rnd: int, rep: federation_pb2.TaskReport) -> None:
        """Record a site's task report and advance the round.

        Every check comes before any side effect: a retried report, one from an earlier
        phase, or one from a site that already answered is refused, never recorded or
        counted (an EVALUATE report's metrics go into the final means exactly once).

        Raises:
            PeerError: the job is not active.
            ReplayedMessage: the report names another task, a task the current phase does
                not wait for (WRONG_STAGE), or the site already answered.
            Unauthorized: the site was not sent this task (NOT_SELECTED).
        """
        with self._cond:
            job = self._job(job_id)
            kind = KIND_OF.get(rep.kind, r.TaskKind.TRAIN)
            expected = r.task_id(job_id, rnd, job.state.attempt, kind)
            if rep.task_id != expected or rnd != job.state.round:
                raise ReplayedMessage(f"report for {rep.task_id!r}; current is {expected!r}")
            r.check_report(job.state, site=site, round=rnd, kind=kind)
            ok = rep.outcome == common_pb2.OUTCOME_OK
            if kind is r.TaskKind.EVALUATE and ok:
                check_claims(
                    num_samples=int(rep.num_samples),
                    metrics=rep.metrics,
                    declared=self._declared(site, job),
                    eval_key="",
                )
            outcome = common_pb2.Outcome.Name(rep.outcome).removeprefix("OUTCOME_").lower()
            now = self.clock()
            final = kind is r.TaskKind.EVALUATE
            self.store.record_site(
                job.report_row(site, 0 if final else rnd, rep),
                audit=AuditNote(
                    event="task_report",
                    actor=site,
                    at=now,
                    job=job_id,
                    round=rnd,
                    reason=rep.reason,
                    detail=outcome,
                ),
            )
            at = (0 if final else rnd, job.state.attempt)
            record_report(self.store, job_id, at[0], attempt=at[1], site=site, report=rep, now=now)
            if final and ok:
                job.add_final_metrics(rep)
            refusal = ""
            if rep.outcome == common_pb2.OUTCOME_REFUSED:
                # The site's word goes into the job's error: only a known reason, never text.
                refusal = rep.reason if rep.reason in _REASONS else Reason.DENIED.value
            self._feed(job_id, r.ReportReceived(site, rnd, kind, ok, refusal))

    def secagg(self, info: CertInfo, env: common_pb2.Envelope, payload: bytes) -> None:
        """Take one verified SecAgg+ stage message (every stage but the masked input).

        Args:
            info: the sender's verified certificate (its PEM is forwarded with its keys).
            env: the envelope as received (verified and bound by the servicer).
            payload: its verified payload bytes, decoded here after the stage checks.

        Raises:
            PeerError: the job is not active (UNKNOWN_JOB).
            ReplayedMessage: another round, another stage (WRONG_STAGE), a repeat, or a
                message naming another task (round attempt) than the stage's current one.
            Unauthorized: the sender is not selected for this stage (NOT_SELECTED).
            MalformedMessage: the payload does not decode or the SecAgg+ round refuses it.
        """
        with self._cond:
            job = self._job(env.job_id)
            phase = _SECAGG_PHASE.get(env.stage)
            if phase is None or not job.spec.secure_aggregation.enabled:
                raise ReplayedMessage("no such secure-aggregation stage", reason=Reason.WRONG_STAGE)
            r.check_secagg(job.state, site=info.name, round=env.round, phase=phase)
            sec = job.secure
            if sec is None:
                raise ReplayedMessage("no secure round is open", reason=Reason.WRONG_STAGE)
            msg = stage_message(env.stage, payload)
            check_stage_message(msg)
            if isinstance(msg, federation_pb2.AdvertiseKeys):
                job.check_claims(msg, declared=self._declared(info.name, job))
            # The envelope binds job, round and stage but not the attempt: a late message of
            # an earlier attempt (its keys already replaced at the site) must not enter this
            # one, or the masks would not cancel.
            expected = r.task_id(env.job_id, env.round, job.state.attempt, r.STAGE_TASK[phase])
            if msg.task_id != expected:
                raise ReplayedMessage(f"message for task {msg.task_id!r}; current is {expected!r}")
            now = self.clock()
            sec.take(info, env, msg, now=now)
            self.store.audit(
                AuditNote(
                    event=f"secagg_{phase.value}",
                    actor=info.name,
                    at=now,
                    job=env.job_id,
                    round=env.round,
                )
            )
            self._feed(env.job_id, r.SecAggReceived(info.name, env.round, phase))

    def _declared(self, site: str, job: Job) -> Declared | None:
        return self._links.declared(site, job.spec.dataset.name)

    def _job(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise PeerError(f"no active job {job_id!r}", reason=Reason.UNKNOWN_JOB)
        return job

    # ----- the state machine -----

    def _feed(self, job_id: str, event: r.Event) -> None:
        job = self._jobs.get(job_id)
        if job is None:
            return  # the job ended (e.g. failed) while an earlier action was running
        job.state, actions = r.advance(job.state, event, now=self.clock())
        state = job.state
        for action in actions:
            if job.state is not state:
                break  # an action fed an event (e.g. SecAggAborted) that moved the round on
            try:
                self._exec.execute(job_id, job, action)
            except Exception as exc:
                # Our bug or our disk: fail this job, but never the caller (an RPC whose
                # message was accepted, or the timer thread) and never the other jobs.
                self._fail_job(job_id, job, exc, action=type(action).__name__)
                break
        self._cond.notify_all()

    def _fail_job(self, job_id: str, job: Job, exc: BaseException, *, action: str) -> None:
        try:
            self._exec.fail_job(job_id, job, exc, action=action)
        except Exception as store_exc:
            log.error("job_fail_failed", job=job_id, exc_info=store_exc)
            self._jobs.pop(job_id, None)
