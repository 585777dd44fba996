"""The Admin service: operators submit, watch and cancel jobs, list sites, models and audit.

Only ``operator`` certificates may call it (a site certificate gets PERMISSION_DENIED). A
submitted job is an operator-signed ``Envelope[JOB, JobSpec]``; it is validated (by
``confide.jobspec.validate_job``, the one check ``confide job check`` also runs), stored with
the envelope and the signer's certificate (which go into every Task so sites can check who
asked), and its version-0 model is drawn from the job's seed.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator

import grpc

from aggregator.coordinator import Coordinator
from aggregator.guard import Guard, decode
from aggregator.servicer import model_parts
from aggregator.store import AuditNote, JobRow, ModelRow
from confide.errors import PeerError, Reason
from confide.jobspec import validate_job
from confide.models import initial_weights
from confide.pki import Role
from confide.v1 import admin_pb2, admin_pb2_grpc, common_pb2, federation_pb2

__all__ = ["AdminServicer"]

_STATES = {
    "pending": admin_pb2.JOB_STATE_PENDING,
    "running": admin_pb2.JOB_STATE_RUNNING,
    "done": admin_pb2.JOB_STATE_DONE,
    "failed": admin_pb2.JOB_STATE_FAILED,
    "cancelled": admin_pb2.JOB_STATE_CANCELLED,
}
_OUTCOMES = {
    "ok": common_pb2.OUTCOME_OK,
    "failed": common_pb2.OUTCOME_FAILED,
    "refused": common_pb2.OUTCOME_REFUSED,
}


class AdminServicer(admin_pb2_grpc.AdminServicer):  # type: ignore[misc]
    """Operator-facing RPCs.

    Args:
        guard: authentication and refusal handling.
        coordinator: active jobs and connected sites.
        new_id: job-id factory (a parameter so tests pin it).
    """

    def __init__(
        self,
        guard: Guard,
        coordinator: Coordinator,
        *,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex[:16],
    ) -> None:
        self.guard, self.coord, self.new_id = guard, coordinator, new_id
        self.store = guard.store

    def SubmitJob(
        self, request: common_pb2.Envelope, context: grpc.ServicerContext
    ) -> admin_pb2.SubmitJobReply:
        """Validate and store a signed job, create its version 0 and start it."""
        with self.guard.handling(context, "job_refused") as call:
            info = self.guard.peer(context, call, Role.OPERATOR)
            spec = decode(
                common_pb2.JobSpec, self.guard.open(request, info, stage=common_pb2.STAGE_JOB)
            )
            # The one check of a job, the same function ``confide job check`` runs locally.
            validate_job(spec)
            job_id = self.new_id()
            call.bind(job=job_id)
            sha, _ = self.coord.blobs.put(
                initial_weights(spec.model, spec.dataset, seed=int(spec.training.seed))
            )
            now = self.guard.clock()
            self.store.add_job(
                JobRow(
                    job_id,
                    spec.SerializeToString(),
                    request.SerializeToString(),
                    info.pem,
                    "running",
                    "",
                    info.name,
                    now,
                ),
                ModelRow(job_id, 0, sha, "", now),
                audit=AuditNote("job_submitted", info.name, now, job_id, 0, "", spec.name),
            )
            try:
                self.coord.add_job(job_id, spec, request, info.pem, model_version=sha)
            except Exception as exc:
                # validate_job() built every part already; should it still fail, the stored job
                # must not stay "running", or every restart would try (and fail) to resume it.
                self.coord.fail_stored_job(job_id, exc)
                raise
            return admin_pb2.SubmitJobReply(job_id=job_id)
        raise AssertionError("unreachable")  # pragma: no cover

    def GetJob(
        self, request: admin_pb2.JobRef, context: grpc.ServicerContext
    ) -> admin_pb2.JobStatus:
        """A job's state, rounds, per-site epsilon and final metrics."""
        with self.guard.handling(context, "admin_refused") as call:
            self.guard.peer(context, call, Role.OPERATOR)
            return self._status(request.job_id)
        raise AssertionError("unreachable")  # pragma: no cover

    def ListJobs(
        self, request: admin_pb2.ListJobsRequest, context: grpc.ServicerContext
    ) -> admin_pb2.JobList:
        """Every job, oldest first."""
        with self.guard.handling(context, "admin_refused") as call:
            self.guard.peer(context, call, Role.OPERATOR)
            return admin_pb2.JobList(jobs=[self._status(j.id) for j in self.store.jobs()])
        raise AssertionError("unreachable")  # pragma: no cover

    def CancelJob(
        self, request: admin_pb2.JobRef, context: grpc.ServicerContext
    ) -> admin_pb2.JobStatus:
        """Cancel a running job (a finished one is left as it is)."""
        with self.guard.handling(context, "admin_refused") as call:
            info = self.guard.peer(context, call, Role.OPERATOR)
            call.bind(job=request.job_id)
            self._status(request.job_id)  # refuses an unknown job
            if self.coord.cancel(request.job_id):
                self.store.audit(
                    AuditNote("job_cancel_requested", info.name, self.guard.clock(), request.job_id)
                )
            return self._status(request.job_id)
        raise AssertionError("unreachable")  # pragma: no cover

    def ListSites(
        self, request: admin_pb2.ListSitesRequest, context: grpc.ServicerContext
    ) -> admin_pb2.SiteList:
        """Registered sites, with connection state and last heartbeat."""
        with self.guard.handling(context, "admin_refused") as call:
            self.guard.peer(context, call, Role.OPERATOR)
            live = self.coord.connected()
            out = admin_pb2.SiteList()
            for s in self.store.sites():
                conn = live.get(s.id)
                info = out.sites.add(
                    site_id=s.id,
                    connected=conn is not None,
                    last_heartbeat=conn.last_seen if conn else s.last_heartbeat,
                    datasets=s.datasets,
                    device=s.device,
                )
                if conn is not None:
                    info.current_task = conn.current_task
                    if conn.resources is not None:
                        info.resources.CopyFrom(conn.resources)
            return out
        raise AssertionError("unreachable")  # pragma: no cover

    def DownloadModel(
        self, request: federation_pb2.DownloadRequest, context: grpc.ServicerContext
    ) -> Iterator[federation_pb2.BlobPart]:
        """Stream a model version of a job."""
        with self.guard.handling(context, "download_refused") as call:
            self.guard.peer(context, call, Role.OPERATOR)
            call.bind(job=request.job_id)
            parts = model_parts(self.store, self.coord.blobs, request)
            first = next(parts)
        yield first
        yield from parts

    def ListAudit(
        self, request: admin_pb2.AuditRequest, context: grpc.ServicerContext
    ) -> admin_pb2.AuditList:
        """Audit entries after ``after_seq`` (at most ``limit``; 0 = all)."""
        with self.guard.handling(context, "admin_refused") as call:
            self.guard.peer(context, call, Role.OPERATOR)
            return admin_pb2.AuditList(
                entries=[
                    admin_pb2.AuditEntry(
                        seq=e.seq,
                        at=e.at,
                        event=e.event,
                        actor=e.actor,
                        job_id=e.job,
                        round=e.round,
                        reason=e.reason,
                        detail=e.detail,
                        hash=e.hash,
                    )
                    for e in self.store.audit_entries(
                        after_seq=request.after_seq, limit=request.limit
                    )
                ]
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def _status(self, job_id: str) -> admin_pb2.JobStatus:
        row = self.store.job(job_id)
        if row is None:
            raise PeerError(f"no job {job_id!r}", reason=Reason.UNKNOWN_JOB)
        st = admin_pb2.JobStatus(
            job_id=row.id,
            spec=common_pb2.JobSpec.FromString(row.spec),
            state=_STATES.get(row.state, admin_pb2.JOB_STATE_UNSPECIFIED),
            error=row.error,
            submitted_by=row.submitted_by,
        )
        models = self.store.models(job_id)
        if models:
            st.model_version = models[-1].sha256
        by_round: dict[int, list[admin_pb2.SiteRound]] = defaultdict(list)
        eps: dict[str, float] = defaultdict(float)
        for s in self.store.round_sites(job_id):
            by_round[s.round].append(
                admin_pb2.SiteRound(
                    site_id=s.site,
                    outcome=_OUTCOMES.get(s.outcome, common_pb2.OUTCOME_UNSPECIFIED),
                    reason=s.reason,
                    num_samples=s.num_samples,
                    epsilon=s.epsilon,
                    update_epsilon=s.update_epsilon,
                    metrics=s.metrics,
                )
            )
            if s.round > 0 and s.outcome == "ok":
                # Sites report the job's cumulative ε (their ledger composes the rounds by
                # RDP), so the job's figure per site is the latest, i.e. the largest.
                eps[s.site] = max(eps[s.site], s.epsilon)
        live = self.coord.live_state(job_id)
        for rr in self.store.rounds(job_id):
            state = rr.state
            if live is not None and live.round == rr.round and rr.state != "done":
                state = live.phase.value
            m = rr.metrics
            st.rounds.add(
                round=rr.round,
                state=state,
                sites=by_round.get(rr.round, []),
                aggregated=int(m.get("aggregated", 0)),
                accuracy=m.get("accuracy", 0.0),
                loss=m.get("loss", 0.0),
                eval_samples=int(m.get("eval_samples", 0)),
                seconds=m.get("seconds", 0.0),
                model_version=rr.model_version_out,
            )
        st.epsilon_by_site.update(eps)
        f = row.final_metrics
        st.final_accuracy = f.get("accuracy", 0.0)
        st.final_loss = f.get("loss", 0.0)
        st.final_eval_samples = int(f.get("eval_samples", 0))
        return st
