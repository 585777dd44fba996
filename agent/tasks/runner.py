"""Executing the aggregator's tasks: one handler per ``TaskKind``, one outcome report each.

``TaskRunner.run`` looks the task's kind up in ``TaskRunner.handlers`` (a plain dict, so the
SecAgg+ stages SHARE_KEYS, MASKED_INPUT and UNMASK are added with ``register``), runs the
handler under ``bound_contextvars(job, round, site)`` and turns any failure into a signed
``Report(TaskReport{outcome=FAILED|REFUSED, reason})``: a failing job never takes the daemon
down. Policy refusals (untrusted signer, bad job signature, unknown dataset, schema) are
``REFUSED``; everything else (worker crash, download failure) is ``FAILED``.

The worker process is started on a job's first task and reused for every later round; it is
stopped on JOB_DONE, on shutdown, or after it failed (the next task starts a fresh one). A job
that brings its own code gets, as its worker starts, a fresh read-only copy of the archive the
signed job names: downloaded once, checked against the signed hash before anything else, and
unpacked with every check (``agent.workers.bundles``).

Models and evaluation (``agent.admission.lineage``, ``agent.tasks.evaluation``): a task's
model is pinned to its version of the job before it is downloaded, and refused unless the
site can tie it to the job; downloaded bytes must hash to the version named. Hold-out
figures (EVALUATE, and the round's input model with an update) pass ``Evaluations.release``:
capped per job, noised and charged, or exact only where the policy allows; a TRAIN whose
figures are withheld still trains and sends its update without them.

Privacy (``agent.privacy.plan``): before the worker trains, the daemon plans the round (DP-SGD
parameters for the worker, update clip and noise) and reserves its cost in the ledger,
durably; after training it clips and noises the delta itself and marks the reservation sent
just before the update leaves. A worker failure before any update exists releases it.

The signed job, not the aggregator, says how often a site trains for it
(``agent.admission.limits``): a TRAIN task for a round the job does not have is refused before
anything is downloaded, and the reservation is refused past the attempts the job (capped by
the site's policy) allows or past its signed ε target.
"""

from __future__ import annotations

import contextlib
import math
import random
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TypeVar

import structlog
from google.protobuf.message import Message
from structlog.contextvars import bound_contextvars

from agent.admission.approvals import ApprovalMode, Approvals
from agent.admission.binding import JobBindings
from agent.admission.limits import JobLimits, check_round, job_limits
from agent.admission.lineage import Purpose, check_model_bytes
from agent.admission.release import check_delta, released_metrics
from agent.admission.rules import (
    check_code_allowed,
    check_model_size,
    check_time_window,
    exposed_dataset,
)
from agent.admission.signed_job import VerifiedJob, check_job, verify_job
from agent.admission.site_policy import DatasetPolicy, PolicyHolder
from agent.link.backoff import Backoff
from agent.link.transport import Transport
from agent.local.audit import SiteAudit, code_hash
from agent.local.metrics import AgentMetrics
from agent.privacy.plan import Charge, PrivacyPlan, RoundPrivacy, Unmetered, protect_update
from agent.tasks.evaluation import Evaluations
from agent.tasks.types import Handler, JobEpsilon, SecureUpdate, SiteContext, TaskOutcome
from agent.workers.bundles import SiteBundles
from agent.workers.handle import WorkerFailed
from agent.workers.pool import WorkerFactory, WorkerHandle, WorkerPool, start_worker
from confide.data.datasets import DatasetDescription, count_train_records
from confide.disclose import MAX_DETAIL, one_line, public_detail
from confide.errors import (
    ConfideError,
    InternalError,
    PeerError,
    PolicyRefusal,
    Reason,
)
from confide.pki import Identity
from confide.types import JobId, RoundNo, TaskId
from confide.v1 import common_pb2, federation_pb2
from confide.wire import encode_tensors, seal
from confide.wire.blob import NamedArrays
from confide.wire.worker import EvalResult

__all__ = [
    "Handler",
    "JobEpsilon",
    "SecureUpdate",
    "SiteContext",
    "TaskOutcome",
    "TaskRunner",
]

log = structlog.get_logger("confide.agent")

T = TypeVar("T")

_BUSY_WAIT_S = 300.0
"""How long a transfer refused ``server_busy`` is retried when the task names no deadline."""


class TaskRunner:
    """Runs tasks by kind and answers each one; holds the running workers, one per job.

    Args:
        site: this site's identity and exposure.
        start_worker: starts a job's worker (a fake in unit tests).
        clock: unix seconds (signing time and job-signature checks).
        privacy: the site's privacy planner and ledger; without one, jobs that ask for
            privacy are refused (unit tests of non-private jobs run without it).
        job_bindings: where each signed job's first job id is recorded, so a signed job is
            never run under a second id (the daemon always has one).
        audit: the site's audit trail (``agent.local.audit``); an in-memory one when None.
        approvals: under manual approval, the operator's answers (``agent.admission.approvals``);
            None approves every job that passes the policy.
        policy: the owner of the site policy in force; each task runs under the snapshot
            taken when it arrives (``site.with_policy``). None: ``site`` as given.
        evaluations: each job's pinned model versions, released hold-out figures and their
            gate (default: in memory, charging ``privacy``'s ledger; the daemon keeps them in
            its state file).
        rng: uniform [0, 1) numbers for the jitter of transfers retried while the
            aggregator is busy (``served``).
        trust: the CA and CRL in force (``IdentityHolder.trust``), taken at each task so a
            reloaded CRL refuses a revoked job signer from the next task on; None: ``site``'s.
        metrics: where task outcomes, worker starts and training times are counted
            (default: a registry of its own, read by nobody).
        bundles: where code bundles are checked and unpacked for workers (the daemon's
            ``<state>/bundles``); None: bundle jobs are refused ``code_not_allowed``.
    """

    def __init__(
        self,
        site: SiteContext,
        *,
        start_worker: WorkerFactory = start_worker,
        clock: Callable[[], float] = time.time,
        privacy: PrivacyPlan | None = None,
        job_bindings: JobBindings | None = None,
        audit: SiteAudit | None = None,
        approvals: Approvals | None = None,
        policy: PolicyHolder | None = None,
        evaluations: Evaluations | None = None,
        rng: Callable[[], float] = random.random,
        trust: Callable[[], tuple[bytes, bytes | None]] | None = None,
        metrics: AgentMetrics | None = None,
        bundles: SiteBundles | None = None,
    ) -> None:
        self.site = site
        self.trust = trust
        self.metrics = metrics if metrics is not None else AgentMetrics()
        self.policy = policy
        self.privacy = privacy
        self.job_bindings = job_bindings
        self.audit = audit if audit is not None else SiteAudit(":memory:")
        self.approvals = approvals
        self.evaluations = evaluations or Evaluations(privacy=privacy, audit=self.audit)
        self.bundles = bundles
        self._clock = clock
        self._rng = rng
        self._busy_until = 0.0  # the running task's deadline for transfers refused busy
        self.workers = WorkerPool(
            start_worker,
            device=site.device,
            timeout=site.task_timeout_s,
            on_started=self.metrics.worker_started,
        )
        self._abandon = threading.Event()
        self.handlers: dict[int, Handler] = {
            federation_pb2.TASK_KIND_TRAIN: self._train,
            federation_pb2.TASK_KIND_EVALUATE: self._evaluate,
            federation_pb2.TASK_KIND_JOB_DONE: self._job_done,
        }
        self.secure_update: SecureUpdate | None = None

    def register(self, kind: int, handler: Handler) -> None:
        """Add or replace the handler of a task kind (e.g. a SecAgg+ stage)."""
        self.handlers[kind] = handler

    # ----- running -----

    def run(self, task: federation_pb2.Task, transport: Transport) -> TaskOutcome:
        """Run one task and answer it; never raises for a task's own failure.

        Raises:
            ConfideError: only when the failure report itself cannot be sent (the connection
                is gone); the session then reconnects.
        """
        kind = federation_pb2.TaskKind.Name(task.kind)
        with bound_contextvars(
            job=task.job_id, round=task.round, site=self.site.site, task=task.task_id, kind=kind
        ):
            log.info("task_received")
            wait = task.deadline_s if task.deadline_s > 0 else _BUSY_WAIT_S
            self._busy_until = self._clock() + wait
            if self.policy is not None:
                # One snapshot per task; tasks run one at a time on the session thread.
                self.site = self.site.with_policy(self.policy.current())
            if self.trust is not None:
                self.site = self.site.with_trust(*self.trust())
            try:
                self.audit.seen(task, now=self._clock())
                handler = self.handlers.get(task.kind)
                if handler is None:
                    raise PolicyRefusal(f"this agent does not handle {kind} tasks", public=True)
                self._check_abandon()
                handler(task, transport)
            except Exception as exc:
                err = self._as_confide_error(exc)
                outcome = (
                    TaskOutcome.REFUSED if isinstance(err, PolicyRefusal) else TaskOutcome.FAILED
                )
                log.warning(
                    "task_failed",
                    outcome=outcome.value,
                    reason=err.reason.value,
                    error=err.message,
                    exc_info=not isinstance(exc, ConfideError),
                )
                self.metrics.task_ended(task.kind, outcome, err.reason)
                self.audit.ended(
                    task.task_id,
                    outcome=outcome.value,
                    reason=err.reason.value,
                    rule=getattr(err, "rule", ""),
                    now=self._clock(),
                )
                try:
                    self._report_failure(task, transport, outcome, err)
                except ConfideError as report_err:
                    if report_err.reason is Reason.UNAVAILABLE:
                        raise  # the connection is gone: the session reconnects
                    # E.g. the round moved on and the aggregator refuses a stale report: that
                    # is no reason to drop the connection (and every other job's stages).
                    log.warning(
                        "report_refused", reason=report_err.reason.value, error=report_err.message
                    )
                return outcome
            log.info("task_done")
            self.metrics.task_ended(task.kind, TaskOutcome.OK)
            self.audit.ended(task.task_id, outcome=TaskOutcome.OK.value, now=self._clock())
            return TaskOutcome.OK

    def use_identity(self, identity: Identity) -> None:
        """Sign as ``identity`` from now on (a new connection's; called between tasks)."""
        self.site = self.site.with_identity(identity)

    def abandon(self) -> None:
        """Shut down: the current task stops at its next step and every worker is stopped."""
        self._abandon.set()
        self.stop_workers()

    def stop_workers(self) -> None:
        """Stop every running worker (idempotent)."""
        self.workers.stop_all()

    # ----- building blocks (shared with the SecAgg+ handlers) -----

    def admit(self, task: federation_pb2.Task) -> tuple[VerifiedJob, DatasetDescription]:
        """Verify the task's signed job and the site policy for it.

        Raises:
            PolicyRefusal: signer untrusted, signature or binding bad (the peer's reason is
                kept), job invalid (``confide.jobspec.validate_job``), model over
                ``policy.max_model_bytes``, dataset not exposed, schema mismatch, or the dataset
                unusable now.
        """
        try:
            job = verify_job(
                task,
                federation=self.site.federation,
                ca_pem=self.site.ca_pem,
                crl_pem=self.site.crl_pem,
                trusted_signers=self.site.trusted_signers,
                now=self._clock(),
            )
        except PeerError as exc:
            # A forged or altered job is the site refusing it, not the site failing.
            raise PolicyRefusal(
                f"signed job refused: {exc}", reason=exc.reason, public=True
            ) from exc
        facts = {
            "signer": job.signer.name,
            "code_sha256": code_hash(job.spec.model),
            "dataset": job.spec.dataset.name,
        }
        self.audit.identified(task.task_id, **facts)
        job = check_job(job)
        check_code_allowed(
            job.spec.model,
            allowed_models=self.site.allowed_models,
            allowed_bundles=self.site.allowed_bundles,
        )
        check_model_size(job.spec, max_bytes=self.site.max_model_bytes)
        dataset = exposed_dataset(job.spec.dataset, datasets=self.site.datasets)
        if task.kind == federation_pb2.TASK_KIND_TRAIN:
            check_time_window(self.site.time_windows, at=datetime.fromtimestamp(self._clock()))
        if self.site.check_dataset is not None:
            self.site.check_dataset(dataset)
        if self.job_bindings is not None:
            self.job_bindings.bind(task.signed_job, task.job_id)
        if self.approvals is not None and self.site.approval is ApprovalMode.MANUAL:
            self.approvals.check(
                task,
                job.spec,
                signer=job.signer.name,
                now=self._clock(),
                trust_bundle_dp=self.site.trust_bundle_dp,
            )
        self.audit.admitted(task.task_id, **facts)
        return job, dataset

    def worker_for(
        self,
        task: federation_pb2.Task,
        job: VerifiedJob,
        dataset: DatasetDescription,
        transport: Transport,
    ) -> WorkerHandle:
        """The job's running worker, started (or restarted after a crash) when needed.

        Raises:
            WorkerFailed: the worker could not start.
            PolicyRefusal: a code bundle that is not the signed one or is unsafe, or this
                agent runs no bundles.
        """
        if job.spec.model.kind != common_pb2.MODEL_KIND_BUNDLE:
            return self.workers.get(task.job_id, job.spec, dataset)
        bundles, code = self.bundles, job.spec.model.code_sha256
        if bundles is None:
            raise PolicyRefusal(
                "this agent runs no code bundles", reason=Reason.CODE_NOT_ALLOWED, public=True
            )

        def fetch() -> bytes:
            return self.served("bundle download", lambda: transport.download_bundle(task.job_id))

        return self.workers.get(
            task.job_id, job.spec, dataset, bundle=lambda: bundles.unpacked(code, fetch)
        )

    def served(self, what: str, call: Callable[[], T]) -> T:
        """``call()``, a transfer, tried again while the aggregator answers ``server_busy``.

        Busy is the aggregator's shared capacity, not this site's failure, so the task is not
        failed for it: the transfer is tried again after a jittered backoff
        (``agent.link.backoff``) until the task's deadline (``Task.deadline_s`` from its
        arrival), and only then fails ``server_busy``. A download comes before anything is
        spent; an upload sends the same update again (re-signed now), so no second release.

        Args:
            what: the transfer, for the log (``download``, ``upload``, ``masked input``).
            call: the transport call.

        Raises:
            ConfideError: the call's error when it is not ``server_busy`` or the deadline
                would pass; ``round_aborted`` when the agent shuts down while it waits.
        """
        backoff = Backoff(self._rng)
        while True:
            try:
                return call()
            except ConfideError as exc:
                if exc.reason is not Reason.SERVER_BUSY:
                    raise
                delay = backoff.next_delay()
                if self._clock() + delay > self._busy_until:
                    raise
                log.info("aggregator_busy", transfer=what, retry_in_s=round(delay, 3))
                if self._abandon.wait(delay):
                    raise InternalError(
                        "the agent is shutting down", reason=Reason.ROUND_ABORTED
                    ) from exc

    def seal(self, task: federation_pb2.Task, stage: int, payload: Message) -> common_pb2.Envelope:
        """Sign ``payload`` as this site, bound to the task's job, round and ``stage``."""
        return seal(
            signing_key=self.site.signing_key,
            federation=self.site.federation,
            sender=self.site.site,
            stage=stage,
            payload=payload.SerializeToString(),
            now=self._clock(),
            job_id=task.job_id,
            round=task.round,
        )

    def report(
        self, task: federation_pb2.Task, transport: Transport, report: federation_pb2.TaskReport
    ) -> None:
        """Send a signed ``TaskReport`` for ``task``."""
        report.task_id = task.task_id
        report.kind = task.kind
        transport.report(self.seal(task, common_pb2.STAGE_TASK_REPORT, report))

    # ----- handlers -----

    def _train(self, task: federation_pb2.Task, transport: Transport) -> None:
        job, dataset = self.admit(task)
        secure = job.spec.secure_aggregation.enabled
        if secure and self.secure_update is None:
            raise PolicyRefusal(
                "secure aggregation is not available in this agent yet",
                reason=Reason.UNSAFE_REQUEST,
                public=True,
            )
        limits = job_limits(job.spec, job_id=JobId(task.job_id), caps=self.site.attempt_caps)
        check_round(limits, task.round)
        model = self.evaluations.pin(task, spec=job.spec, purpose=Purpose.TRAIN)
        weights = self._download(task, transport)
        self._check_abandon()
        # FedAvg weights and the sampling rate q (so ε) rest on this count: the daemon counts
        # the records itself rather than taking the worker's word for it.
        num_train = count_train_records(dataset)
        # Planned before the worker starts: a job this site's privacy policy refuses never
        # has its code fetched or run.
        plan = self._plan(task, job, dataset, num_train, attempts=limits.max_job_attempts)
        worker = self._guarded(task, lambda: self.worker_for(task, job, dataset, transport))
        with self._charge(task, dataset, plan, limits) as charge:
            ev = self.evaluations.for_update(
                spec=job.spec,
                dataset=dataset,
                policy=self._policy(dataset),
                model=model,
                evaluate=lambda clip: self._guarded(
                    task, lambda: worker.evaluate(weights, loss_clip=clip)
                ),
                trust_bundle_dp=self.site.trust_bundle_dp,
            )
            self._check_abandon()
            dp = plan.dp if plan is not None else None
            began = time.monotonic()
            tr = self._guarded(task, lambda: worker.train(weights, dp=dp, round=task.round))
            self.metrics.trained(time.monotonic() - began)
            self._check_abandon()
            check_delta(tr.delta, weights)
            delta = protect_update(tr.delta, plan) if plan is not None else tr.delta
            # Training figures are exact functions of the training records: they leave only
            # when the site claims no finite record-level ε for the round (either counted
            # layer's noise gives one; confide.dp.budget), or that ε would not cover them.
            # ``plan.cost`` holds only the counted layers (agent.privacy.counted): a bundle's
            # uncounted DP-SGD claims nothing here either.
            claims_dp = plan is not None and math.isfinite(plan.cost.epsilon)
            metrics = released_metrics(ev, tr, record_private=claims_dp)
            # Counted before anything leaves: from here on the cost can never be released.
            epsilon, update_epsilon = charge.mark_sent()
            spent = JobEpsilon(epsilon=epsilon, update_epsilon=update_epsilon)
            self.audit.charged(
                task.task_id,
                epsilon=plan.cost.epsilon if plan is not None else 0.0,
                job_epsilon=spent.epsilon,
                note=plan.not_counted if plan is not None else "",
            )
        if secure and self.secure_update is not None:
            self.secure_update(
                task,
                transport,
                job=job,
                delta=delta,
                num_samples=num_train,
                metrics=metrics,
                spent=spent,
            )
            return
        blob, buffers = encode_tensors(delta)
        header = federation_pb2.UpdateHeader(
            task_id=task.task_id,
            blob=blob,
            num_samples=num_train,
            metrics=metrics,
            epsilon=spent.epsilon,
            update_epsilon=spent.update_epsilon,
        )
        self.served(
            "upload",
            lambda: transport.upload(self.seal(task, common_pb2.STAGE_UPDATE, header), buffers),
        )
        log.info(
            "update_sent",
            num_samples=num_train,
            bytes=blob.total_bytes,
            eval_accuracy=metrics.get("eval_accuracy"),
        )

    def _policy(self, dataset: DatasetDescription) -> DatasetPolicy:
        return self.site.policies.get(dataset.name, DatasetPolicy())

    def _plan(
        self,
        task: federation_pb2.Task,
        job: VerifiedJob,
        dataset: DatasetDescription,
        num_train: int,
        *,
        attempts: int,
    ) -> RoundPrivacy | None:
        """The round's privacy plan (a target ε spread over ``attempts``); None only for a
        non-private job without a ledger.

        Raises:
            PolicyRefusal: the job asks for privacy but this runner has no ledger, or the
                site's noise floor cannot be met.
        """
        spec = job.spec
        if self.privacy is None:
            if spec.record_privacy.enabled or spec.update_privacy.clip_norm > 0:
                raise PolicyRefusal(
                    "this agent has no privacy ledger", reason=Reason.UNSAFE_REQUEST, public=True
                )
            return None
        return self.privacy.plan_for_site(
            spec,
            job_id=task.job_id,
            dataset=dataset.name,
            num_train=num_train,
            policy=self._policy(dataset),
            attempts=attempts,
            trust_bundle_dp=self.site.trust_bundle_dp,
        )

    def _charge(
        self,
        task: federation_pb2.Task,
        dataset: DatasetDescription,
        plan: RoundPrivacy | None,
        limits: JobLimits,
    ) -> AbstractContextManager[Unmetered | Charge]:
        """The ledger charge for this round, counted against the job's signed ``limits``
        (nothing to charge without a ledger)."""
        if plan is None or self.privacy is None:
            return contextlib.nullcontext(Unmetered())
        # The ledger keys the charge by the task id the aggregator chose, compared, never
        # parsed: what the job may be charged is counted against ``limits``, whatever
        # the id or ``task.attempt`` say.
        return self.privacy.charge(
            dataset=dataset.name,
            job_id=limits.job_id,
            task_id=TaskId(task.task_id),
            round=RoundNo(task.round),
            plan=plan,
            max_epsilon=self._policy(dataset).max_epsilon,
            limits=limits,
        )

    def _evaluate(self, task: federation_pb2.Task, transport: Transport) -> None:
        job, dataset = self.admit(task)
        model = self.evaluations.pin(task, spec=job.spec, purpose=Purpose.EVALUATE)

        def evaluate(clip: float) -> EvalResult:  # only for a model with no stored release
            weights = self._download(task, transport)
            self._check_abandon()
            worker = self._guarded(task, lambda: self.worker_for(task, job, dataset, transport))
            return self._guarded(task, lambda: worker.evaluate(weights, loss_clip=clip))

        ev = self.evaluations.release(
            spec=job.spec,
            dataset=dataset,
            policy=self._policy(dataset),
            model=model,
            evaluate=evaluate,
            trust_bundle_dp=self.site.trust_bundle_dp,
        )
        self.report(
            task,
            transport,
            federation_pb2.TaskReport(
                outcome=common_pb2.OUTCOME_OK,
                metrics={"accuracy": ev.accuracy, "loss": ev.loss},
                num_samples=ev.num_samples,
            ),
        )

    def _job_done(self, task: federation_pb2.Task, transport: Transport) -> None:
        self.workers.drop(task.job_id)
        if self.privacy is not None:
            self.privacy.forget(task.job_id)
        log.info("job_done")

    # ----- helpers -----

    def _download(self, task: federation_pb2.Task, transport: Transport) -> NamedArrays:
        """The task's model, refused unless its bytes hash to the version the task names."""
        weights = self.served(
            "download", lambda: transport.download(task.job_id, task.model_version)
        )
        check_model_bytes(weights, model_sha=task.model_version)
        return weights

    def _guarded(self, task: federation_pb2.Task, call: Callable[[], T]) -> T:
        """Run a worker call; a failed worker is dropped so the next task restarts it."""
        try:
            return call()
        except WorkerFailed:
            self.workers.drop(task.job_id)
            raise

    def _check_abandon(self) -> None:
        if self._abandon.is_set():
            raise InternalError("the agent is shutting down", reason=Reason.ROUND_ABORTED)

    def _as_confide_error(self, exc: Exception) -> ConfideError:
        if self._abandon.is_set() and not isinstance(exc, PolicyRefusal):
            return InternalError("the agent is shutting down", reason=Reason.ROUND_ABORTED)
        if isinstance(exc, ConfideError):
            return exc
        return InternalError(f"unexpected {type(exc).__name__}: {exc}")

    def _report_failure(
        self,
        task: federation_pb2.Task,
        transport: Transport,
        outcome: TaskOutcome,
        err: ConfideError,
    ) -> None:
        if task.kind == federation_pb2.TASK_KIND_JOB_DONE:
            return  # nobody waits for an answer to JOB_DONE
        refused = outcome is TaskOutcome.REFUSED
        what = "refused by the site policy" if refused else "failed at the site"
        rule = getattr(err, "rule", "")
        cause = f"{err.reason.value}, rule {rule}" if rule else err.reason.value
        self.report(
            task,
            transport,
            federation_pb2.TaskReport(
                outcome=common_pb2.OUTCOME_REFUSED if refused else common_pb2.OUTCOME_FAILED,
                reason=err.reason.value,
                # Peers hear little: messages can quote data (a cell that failed to parse, a
                # worker's stderr), so the aggregator gets the reason and, unless the error
                # is marked public (it quotes no data), a fixed sentence; the full message is
                # in this site's log (event task_failed).
                message=_detail(
                    err, rule, fallback=f"{what} ({cause}); details are in the site's log"
                ),
            ),
        )


def _detail(err: ConfideError, rule: str, *, fallback: str) -> str:
    """The report's one line: the error's public text with the refusing rule, or ``fallback``.

    A long text is cut to leave room for the rule, so the rule always reaches the aggregator.
    """
    if not err.public:
        return public_detail(err, fallback=fallback)
    suffix = f" (rule {rule})" if rule else ""
    text = one_line(public_detail(err, fallback=fallback), limit=MAX_DETAIL - len(suffix))
    return one_line(text + suffix)
