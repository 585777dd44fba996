"""The round engine: the one owner of the active jobs, the sites, a lock and an event queue.

Everything that moves a round goes through one loop (cf. the flat loop of httpx
``_send_handling_auth``). A caller (an RPC, the timer) takes the lock, checks what it brings
and queues an event (a site connects, an update arrives, a deadline passes); ``_drain`` then
takes events off the queue one at a time, feeds each to the pure ``rounds.advance`` and
carries out the actions it returns in order (queue tasks, reset or apply the running sum,
persist, audit). Carrying out an action returns follow-up events (``ModelStored`` after an
aggregate, ``SecAggAborted`` or ``SecAggDropped`` after closing a SecAgg+ stage); they go to
the front of the same queue, and an action never calls back into the loop that runs it.
Since the actions after one that returned events were decided on a state those events move
on, they are dropped (``advance`` never puts an action after one that returns events).

The engine alone holds the jobs, the site registry and the queue; its collaborators call its
methods. The servicers call it per RPC; ``aggregator.timer`` asks it for its next deadline
(``next_deadline``) and to fire what is due (``fire_due``); ``aggregator.restore`` builds and
rebuilds ``Job`` objects from the store for it, from a snapshot of the connected sites.

SecAgg+ stage messages arrive through ``secagg`` (AdvertiseKeys, ShareKeys, SharesChecked,
ConsistencySignature, UnmaskShares) and masked inputs through ``accept_update`` (stage
MASKED_INPUT, added into the ``ServerRound``'s modular sum and dropped); each accepted
message is fed as ``SecAggReceived``. A site whose task stream ends during a SecAgg+ stage
is dropped from that stage at once (``SiteDisconnected``), so the stage does not wait for its
deadline: its secrets live only in its memory anyway.

SecAgg+ actions: ``RoundStarted`` of a secure job opens a fresh in-memory ``SecureRound``
with the job's rules (validated at submit; the parameters are taken for the sites that
advertise); ``CloseStage`` closes a stage there and queues each next-stage site its own
task; ``Aggregate`` unmasks the sum. A ``RoundAborted`` comes back as ``SecAggAborted``, so
the round fails and is retried like a plaintext round; sites a close leaves out come back as
``SecAggDropped``. Closing the share check audits every rejected share
(``secagg_share_rejected``, naming the sender) and records a failed row, with the reason,
for each site left out, so ``confide job status`` names it. No action logs or stores any
site's input: logs carry counts, the store gets metadata and the model.

Site links: a site registers (datasets, device, datasets it found unusable), then opens its
task stream; every open and close is fed to each active job (``SiteConnected``,
``SiteDisconnected``). A second agent presenting a connected site's identity is refused; a
stream whose certificate a reloaded CRL revokes (or that expired) is closed.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable

import structlog

from aggregator import rounds as r
from aggregator.admission import Declared, check_claims
from aggregator.failures import (
    clean_problems,
    failure_summary,
    record_report,
    record_silent,
    unusable_summary,
)
from aggregator.jobs import KIND_OF, Job, UploadTarget
from aggregator.restore import build_job, mark_failed, rebuild_job
from aggregator.secure import DropoutObserver, SecureRound, rules_for, stage_message
from aggregator.sites import SiteConn, SiteProblem, SiteRegistry
from aggregator.store import AuditNote, BlobStore, ModelRow, SiteRow, Store
from aggregator.timer import DeadlineTimer
from confide import secagg
from confide.errors import PeerError, Reason, ReplayedMessage, Unauthorized
from confide.pki import BadCertificate, CertInfo
from confide.secagg.encoding import secure_encoding
from confide.secagg.rotation import rotation_seed
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


class Coordinator:
    """The round engine: owns the active jobs, the site queues, the event queue and the timer.

    Every public method takes the one lock; none hands out a job or the registry (a snapshot
    or a copy at most).

    Args:
        store, blobs: persistence.
        site_timeout_s: a site silent this long is disconnected.
        max_retries: failed attempts of a round before its job fails.
        retry_backoff_s: the wait before retrying a round a site refused (doubling).
        federation: the federation name (part of every SecAgg+ round id).
        clock: unix-seconds clock (a parameter for tests).
        on_dropouts: told each SecAgg+ stage's dropouts as it closes (the metrics).
    """

    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        *,
        site_timeout_s: float,
        max_retries: int,
        retry_backoff_s: float = 0.0,
        federation: str = "",
        clock: Callable[[], float] = time.time,
        on_dropouts: DropoutObserver | None = None,
    ) -> None:
        self.store, self.blobs = store, blobs
        self._on_dropouts = on_dropouts
        self.site_timeout_s = site_timeout_s
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        self.federation = federation
        self.clock = clock
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._sites = SiteRegistry()
        self._events: deque[tuple[str, r.Event]] = deque()
        self._timer = DeadlineTimer(
            fire=self.fire_due, next_deadline=self.next_deadline, clock=clock
        )

    # ----- life cycle -----

    def start(self) -> None:
        """Resume every running job from the store, then start the timer thread."""
        for row in self.store.jobs():
            if row.state != "running":
                continue
            try:
                with self._lock:
                    job, event = rebuild_job(
                        self.store,
                        self.blobs,
                        self._connected_datasets(),
                        row,
                        max_retries=self.max_retries,
                        retry_backoff_s=self.retry_backoff_s,
                    )
                    self._jobs[row.id] = job
                    log.info("job_resumed", job=row.id, round=job.state.round)
                    self._feed(row.id, event)
            except Exception as exc:
                # One job that cannot be rebuilt must not keep the aggregator down.
                with self._lock:
                    self._jobs.pop(row.id, None)
                self.fail_stored_job(row.id, exc)
        self._timer.start()

    def stop(self) -> None:
        """Stop the timer and end every task stream."""
        with self._lock:
            for conn in self._sites.all():
                self._sites.disconnect(conn.site, conn.conn_id)
        self._timer.stop()

    def fail_stored_job(self, job_id: str, exc: BaseException) -> None:
        """Mark a stored job FAILED because it cannot run (logged with its traceback, audited).

        Args:
            job_id: the job, already in the store.
            exc: why it cannot run; a ``ConfideError`` gives its reason, anything else
                ``internal``.
        """
        mark_failed(self.store, job_id, exc, clock=self.clock)

    # ----- the timer's questions -----

    def next_deadline(self) -> float | None:
        """Unix seconds of the earliest round deadline or site timeout (None: neither)."""
        with self._lock:
            wake = [j.state.deadline for j in self._jobs.values() if j.state.deadline is not None]
            nxt = self._sites.next_expiry(timeout_s=self.site_timeout_s)
            if nxt is not None:
                wake.append(nxt)
            return min(wake, default=None)

    def fire_due(self) -> None:
        """Feed ``DeadlinePassed`` to each job past its deadline; disconnect each silent site."""
        now = self.clock()
        with self._lock:
            due = [
                job_id
                for job_id, job in self._jobs.items()
                if job.state.deadline is not None and job.state.deadline <= now
            ]
            for job_id in due:
                job = self._jobs.get(job_id)
                if job is None:
                    continue
                try:
                    self._feed(job_id, r.DeadlinePassed())
                except Exception as exc:
                    self._fail_job(job_id, job, exc, action="DeadlinePassed")
            closed = []
            for conn in self._sites.expired(now=now, timeout_s=self.site_timeout_s):
                log.warning("site_timed_out", site=conn.site)
                if self._disconnect(conn):
                    closed.append(conn)
        for conn in closed:
            self.store.set_heartbeat(conn.site, conn.last_seen)

    # ----- sites -----

    def register(self, site: str, req: federation_pb2.RegisterRequest) -> None:
        """Record a site's registration (datasets, device, datasets it found unusable).

        Raises:
            Unauthorized: another agent holds the site's identity (IDENTITY_IN_USE).
        """
        now = self.clock()
        sizes = {d.name: (int(d.train_records), int(d.holdout_records)) for d in req.dataset_sizes}
        names = ",".join(req.datasets)
        detail = f"{len(req.datasets)} datasets: {names[:200]}"
        detail += "..." if len(names) > 200 else ""
        unusable = clean_problems(req.unusable)
        with self._lock:
            self._check_holder(site, req.instance)
            self._sites.set_unusable(site, unusable)
        for p in unusable:
            log.warning("site_dataset_unusable", site=site, dataset=p.dataset, reason=p.reason)
        self.store.upsert_site(
            SiteRow(
                id=site,
                datasets=list(req.datasets),
                device=req.device,
                agent_version=req.agent_version,
                last_heartbeat=now,
                sizes=sizes,
            ),
            audit=AuditNote(event="site_registered", actor=site, at=now, detail=detail),
        )

    def open_stream(self, site: str, *, cert_pem: bytes = b"", instance: str = "") -> SiteConn:
        """Connect ``site``: its queue receives its tasks from now on.

        Args:
            cert_pem: the certificate the site opened the stream with (see ``drop_invalid``).
            instance: the agent process's instance id (a reconnect of the same agent
                replaces its stream; another agent's is refused while this one is open).

        Raises:
            PeerError: the site never registered (reason UNKNOWN_SITE).
            Unauthorized: another agent holds the site's identity (IDENTITY_IN_USE).
        """
        row = self.store.site(site)
        if row is None:
            raise PeerError(f"{site!r} must Register first", reason=Reason.UNKNOWN_SITE)
        with self._lock:
            self._check_holder(site, instance)
            old = self._sites.get(site)
            conn = self._sites.connect(
                site,
                frozenset(row.datasets),
                now=self.clock(),
                cert_pem=cert_pem,
                instance=instance,
            )
            for job_id, job in self._jobs.items():
                if old is not None:
                    self._events.append((job_id, r.SiteDisconnected(site)))
                if job.spec.dataset.name in conn.datasets:
                    self._events.append((job_id, r.SiteConnected(site)))
            self._drain()
            self._timer.poke()  # the new stream has a timeout
        return conn

    def close_stream(self, conn: SiteConn) -> None:
        """The site's stream ended (or was replaced): it is no longer eligible."""
        with self._lock:
            if not self._disconnect(conn):
                return
        self.store.set_heartbeat(conn.site, conn.last_seen)

    def drop_invalid(self, check: Callable[[bytes], None], *, site: str | None = None) -> None:
        """End the task stream of every site (or just ``site``) whose certificate is refused.

        Args:
            check: raises ``BadCertificate`` for a certificate no longer valid (revoked by
                a reloaded CRL, or expired).
            site: check only this site's stream (on its heartbeat); None: every stream.
        """
        with self._lock:
            conns = [c for c in self._sites.all() if c.cert_pem and site in (None, c.site)]
        for conn in conns:
            try:
                check(conn.cert_pem)
            except BadCertificate as exc:
                log.warning("site_certificate_invalid", site=conn.site, error=str(exc))
                self.store.audit(
                    AuditNote(
                        event="site_stream_closed",
                        actor=conn.site,
                        at=self.clock(),
                        reason=exc.reason.value,
                        detail=str(exc),
                    )
                )
                self.close_stream(conn)

    def heartbeat(self, site: str, hb: federation_pb2.Heartbeat) -> None:
        """Note that the site is alive (and what it is doing).

        The timer is not poked: a heartbeat only moves the site's timeout later, and a timer
        that wakes for the earlier one finds nothing due and asks again.
        """
        with self._lock:
            conn = self._sites.get(site)
            if conn is not None:
                conn.last_seen = self.clock()
                conn.current_task = hb.current_task
                conn.resources = hb.resources

    def connected(self) -> dict[str, SiteConn]:
        """A snapshot of every connected site's stream (copies, safe to read)."""
        with self._lock:
            return {c.site: dataclasses.replace(c) for c in self._sites.all()}

    def unusable(self, dataset: str | None = None) -> list[SiteProblem]:
        """(site, problem) for each site that reported ``dataset`` (None: any) unusable."""
        with self._lock:
            return self._sites.unusable_reports(dataset)

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
        with self._lock:
            job = build_job(
                self._connected_datasets(),
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
        with self._lock:
            if job_id not in self._jobs:
                return False
            self._feed(job_id, r.Cancel())
            return True

    def live_state(self, job_id: str) -> r.RoundState | None:
        """The in-memory round state of an active job (frozen, safe to read)."""
        with self._lock:
            job = self._jobs.get(job_id)
            return job.state if job else None

    # ----- uploads, reports and SecAgg+ messages -----

    def upload_target(self, job_id: str) -> UploadTarget:
        """The round, stage and model an upload for ``job_id`` must match.

        Raises:
            PeerError: the job is not active (reason UNKNOWN_JOB).
        """
        with self._lock:
            return self._job(job_id).upload_target()

    def check_update(self, site: str, job_id: str, rnd: int, task: str) -> None:
        """Refuse early an update the round would refuse (before its bytes arrive).

        Raises:
            ReplayedMessage, Unauthorized, PeerError: see ``rounds.check_update``.
        """
        with self._lock:
            self._check_update(site, job_id, rnd, task)

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
        with self._lock:
            self._check_update(site, job_id, rnd, header.task_id)
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
        with self._lock:
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
        with self._lock:
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

    # ----- helpers (all called under the lock) -----

    def _job(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise PeerError(f"no active job {job_id!r}", reason=Reason.UNKNOWN_JOB)
        return job

    def _check_update(self, site: str, job_id: str, rnd: int, task: str) -> None:
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

    def _declared(self, site: str, job: Job) -> Declared | None:
        """The record counts ``site`` declared for the job's dataset at register (None: none)."""
        row = self.store.site(site)
        sizes = row.sizes.get(job.spec.dataset.name) if row is not None else None
        return Declared(*sizes) if sizes is not None else None

    def _connected_datasets(self) -> dict[str, frozenset[str]]:
        """Each connected site's registered datasets (a snapshot for ``aggregator.restore``)."""
        return {c.site: c.datasets for c in self._sites.all()}

    def _check_holder(self, site: str, instance: str) -> None:
        """Refuse a second agent process presenting ``site``'s identity while one is connected.

        Without this, two agents with one certificate replace each other's stream about twice
        a second, each reconnecting at once, and neither ever finishes a round.

        Raises:
            Unauthorized: IDENTITY_IN_USE.
        """
        conn = self._sites.get(site)
        if conn is None or not conn.instance or not instance or conn.instance == instance:
            return
        raise Unauthorized(
            f"another agent is connected as {site!r} (heard from "
            f"{max(0.0, self.clock() - conn.last_seen):.0f} s ago); a second agent with the "
            "same identity is refused until that connection ends",
            reason=Reason.IDENTITY_IN_USE,
        )

    def _disconnect(self, conn: SiteConn) -> bool:
        """End ``conn`` if it is still the site's stream and tell every job; False if not."""
        if self._sites.disconnect(conn.site, conn.conn_id) is None:
            return False
        log.info("site_disconnected", site=conn.site)
        self._events.extend((job_id, r.SiteDisconnected(conn.site)) for job_id in self._jobs)
        self._drain()
        return True

    # ----- the loop -----

    def _feed(self, job_id: str, event: r.Event) -> None:
        """Queue ``event`` for ``job_id`` and run the loop until the queue is empty."""
        self._events.append((job_id, event))
        self._drain()

    def _drain(self) -> None:
        """The one loop: advance each queued event, carry out its actions, queue their events.

        An action that fails unexpectedly (our bug or our disk) fails its job, never the
        caller (an RPC whose message was accepted, or the timer) and never the other jobs.
        ``advance`` itself raises only for an event its caller already checked; should it,
        the queue is emptied and the error reaches that caller. The timer is poked only when
        a job got a new deadline: one that went away or a job that ended never makes the
        timer's next wake-up earlier.
        """
        moved = False
        try:
            while self._events:
                job_id, event = self._events.popleft()
                job = self._jobs.get(job_id)
                if job is None:
                    continue  # the job ended (done, cancelled or failed) on an earlier event
                before = job.state.deadline
                job.state, actions = r.advance(job.state, event, now=self.clock())
                moved |= job.state.deadline is not None and job.state.deadline != before
                for action in actions:
                    try:
                        follow = self._execute(job_id, job, action)
                    except Exception as exc:
                        self._fail_job(job_id, job, exc, action=type(action).__name__)
                        break
                    if follow:
                        # First in line, so a job's consequences come before the next
                        # queued event; the rest of ``actions`` was decided on a state
                        # these events move on.
                        self._events.extendleft((job_id, e) for e in reversed(follow))
                        break
        finally:
            self._events.clear()
            if moved:
                self._timer.poke()

    def _execute(self, job_id: str, job: Job, a: r.Action) -> list[r.Event]:
        """Carry out one action of ``job``; the events it produced, to be fed next."""
        now = self.clock()
        if isinstance(a, r.SendTask):
            for site in a.sites:
                self._sites.send(site, job.task(a))
        elif isinstance(a, r.RoundStarted):
            self._round_started(job_id, job, a, now)
        elif isinstance(a, r.CloseStage):
            return self._close_stage(job_id, job, a)
        elif isinstance(a, r.Aggregate):
            try:
                return [self._aggregate(job_id, job, a)]
            except secagg.RoundAborted as exc:
                log.warning("secagg_aborted", job=job_id, round=a.round, error=str(exc))
                return [r.SecAggAborted(a.round, job.state.attempt, str(exc))]
            # Anything else (disk, a bug) is our failure, not the last uploader's: it reaches
            # ``_drain``, which fails the job with ``_fail_job`` and keeps the server up.
        elif isinstance(a, r.RoundFailed):
            self._round_failed(job_id, job, a, now)
        elif isinstance(a, r.FinishJob):
            self._finish_job(job_id, job, a, now)
        return []

    def _fail_job(self, job_id: str, job: Job, exc: BaseException, *, action: str) -> None:
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
        self._jobs.pop(job_id, None)
        done = r.SendTask(r.TaskKind.JOB_DONE, tuple(sorted(job.state.eligible)), rnd, 1, "", 0)
        for site in done.sites:
            self._sites.send(site, job.task(done))
        try:
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
        except Exception as store_exc:
            log.error("job_fail_failed", job=job_id, exc_info=store_exc)

    # ----- actions -----

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
            sites=a.sites,
            on_dropouts=self._on_dropouts,
        )
        log.info("secagg_started", job=job_id, round=a.round, sites=len(a.sites))

    def _close_stage(self, job_id: str, job: Job, a: r.CloseStage) -> list[r.Event]:
        if job.secure is None:  # parameters were refused; SecAggAborted already fed
            return []
        sec = job.secure
        if a.closing is r.RoundPhase.CHECK_SHARES:
            self._audit_rejections(job_id, sec, a)
        try:
            tasks, left = sec.close(_SERVER_STAGE[a.closing])
        except secagg.RoundAborted as exc:
            log.warning(
                "secagg_aborted", job=job_id, round=a.round, stage=a.closing.value, error=str(exc)
            )
            return [r.SecAggAborted(a.round, a.attempt, str(exc))]
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
            self._record_left_out(job_id, job, sec, a, left)
        for site, payload in tasks.items():
            self._sites.send(site, job.stage_task(a, payload))
        if left:
            return [r.SecAggDropped(a.round, a.attempt, tuple(sorted(left)))]
        return []

    def _audit_rejections(self, job_id: str, sec: SecureRound, a: r.CloseStage) -> None:
        """Audit each share a site rejected at the check stage, naming its sender."""
        now = self.clock()
        for rej in sec.rejections:
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
        self, job_id: str, job: Job, sec: SecureRound, a: r.CloseStage, left: frozenset[str]
    ) -> None:
        """Record a failed row for each site the share check left out, with why."""
        now = self.clock()
        against: dict[str, str] = {}
        for rej in sec.rejections:
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

    def _aggregate(self, job_id: str, job: Job, a: r.Aggregate) -> r.ModelStored:
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
        return r.ModelStored(a.round, sha)

    def _round_failed(self, job_id: str, job: Job, a: r.RoundFailed, now: float) -> None:
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

    def _finish_job(self, job_id: str, job: Job, a: r.FinishJob, now: float) -> None:
        final = job.final_metrics()
        state = _JOB_STATE[a.phase]
        error = a.error
        if a.phase is r.RoundPhase.FAILED:
            # Besides the refusals the round named: the sites that failed, or said nothing.
            rnd, attempt = job.state.round, job.state.attempt
            summary = failure_summary(self.store, job_id, rnd, attempt=attempt)
            if not summary:  # none took part: say who has the dataset but cannot use it
                reports = self._sites.unusable_reports(job.spec.dataset.name)
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
        self._jobs.pop(job_id, None)
