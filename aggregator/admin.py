"""The Admin service: operators submit, watch and cancel jobs, list sites, models and audit.

Only ``operator`` certificates may call it (a site certificate gets PERMISSION_DENIED). A
submitted job is an operator-signed ``Envelope[JOB, JobSpec]``; it is validated (by
``confide.jobspec.validate_job``, the one check ``confide job check`` also runs), stored with
the envelope and the signer's certificate (which go into every Task so sites can check who
asked), and its version-0 model is drawn from the job's seed, or, for a job that brings its
own code, is the initial model the operator uploaded with it (``aggregator.bundles``:
``UploadBlob`` before ``SubmitJob``; the code is stored, never run).

Every listing is paged and every reply bounded in bytes (``aggregator.pages``): ListJobs,
ListSites, ListAudit and ListRounds take a page size and token; GetJob carries a job's latest
rounds that fit one reply (``GET_JOB_ROUNDS`` at most) and ``rounds_total``.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator

import grpc

from aggregator import pages
from aggregator.audit import AuditEntry
from aggregator.bundles import check_bundle_job, receive_blob
from aggregator.coordinator import Coordinator
from aggregator.failures import add_failures, waiting_line
from aggregator.guard import Guard, decode
from aggregator.round_types import RoundPhase
from aggregator.servicer import model_parts
from aggregator.sites import SiteConn, SiteProblem
from aggregator.store import (
    AuditNote,
    BlobStore,
    FailureRow,
    JobRow,
    ModelRow,
    RoundRow,
    SiteRoundRow,
    SiteRow,
)
from aggregator.versions import model_versions
from confide.errors import ConfigError, PeerError, Reason
from confide.jobspec import validate_job
from confide.models import initial_weights, parameter_bytes
from confide.pki import Role
from confide.v1 import admin_pb2, admin_pb2_grpc, common_pb2, federation_pb2

__all__ = ["GET_JOB_ROUNDS", "AdminServicer", "check_model_size"]

GET_JOB_ROUNDS = 100
"""The most rounds GetJob carries (the latest); ListRounds pages through all of them."""

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


def check_model_size(spec: common_pb2.JobSpec, *, max_bytes: int) -> None:
    """Refuse a job whose model is larger than this aggregator accepts, before any is drawn.

    Raises:
        ConfigError: key ``model``, reason ``MODEL_TOO_LARGE``, naming the limit.
    """
    nbytes = parameter_bytes(spec.model, spec.dataset)
    if nbytes > max_bytes:
        raise ConfigError(
            "model",
            f"has {nbytes} bytes of parameters, over this aggregator's "
            f"limits.max_model_bytes = {max_bytes}",
            reason=Reason.MODEL_TOO_LARGE,
        )


class AdminServicer(admin_pb2_grpc.AdminServicer):  # type: ignore[misc]
    """Operator-facing RPCs.

    Args:
        guard: authentication and refusal handling.
        coordinator: the round engine (active jobs and connected sites).
        blobs: where a submitted job's initial model goes, and DownloadModel reads.
        max_model_bytes: the largest job model accepted (``limits.max_model_bytes``).
        new_id: job-id factory (a parameter so tests pin it).
    """

    def __init__(
        self,
        guard: Guard,
        coordinator: Coordinator,
        blobs: BlobStore,
        *,
        max_model_bytes: int,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex[:16],
    ) -> None:
        self.guard, self.coord, self.blobs, self.new_id = guard, coordinator, blobs, new_id
        self.max_model_bytes = max_model_bytes
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
            check_model_size(spec, max_bytes=self.max_model_bytes)
            if spec.model.kind == common_pb2.MODEL_KIND_BUNDLE:
                sha = check_bundle_job(spec, self.blobs)
            else:
                sha, _ = self.blobs.put(
                    initial_weights(spec.model, spec.dataset, seed=int(spec.training.seed))
                )
            job_id = self.new_id()
            call.bind(job=job_id)
            now = self.guard.clock()
            self.store.add_job(
                JobRow(
                    id=job_id,
                    spec=spec.SerializeToString(),
                    signed_job=request.SerializeToString(),
                    signer_cert=info.pem,
                    state="running",
                    error="",
                    submitted_by=info.name,
                    created=now,
                ),
                ModelRow(job=job_id, version_no=0, sha256=sha, optimizer_state="", created=now),
                audit=AuditNote(
                    event="job_submitted", actor=info.name, at=now, job=job_id, detail=spec.name
                ),
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

    def UploadBlob(
        self, request_iterator: Iterator[admin_pb2.BlobUpload], context: grpc.ServicerContext
    ) -> admin_pb2.UploadBlobReply:
        """Store a bundle job's code archive or initial weights by hash (never run)."""
        with self.guard.handling(context, "upload_refused") as call:
            info = self.guard.peer(context, call, Role.OPERATOR)
            kind, sha = receive_blob(
                request_iterator, self.blobs, max_model_bytes=self.max_model_bytes
            )
            self.store.audit(
                AuditNote(
                    event="blob_uploaded",
                    actor=info.name,
                    at=self.guard.clock(),
                    detail=f"{admin_pb2.BlobKind.Name(kind).removeprefix('BLOB_KIND_').lower()} "
                    f"{sha}",
                )
            )
            return admin_pb2.UploadBlobReply(sha256=sha)
        raise AssertionError("unreachable")  # pragma: no cover

    def GetJob(
        self, request: admin_pb2.JobRef, context: grpc.ServicerContext
    ) -> admin_pb2.JobStatus:
        """A job's state, latest rounds, per-site epsilon and final metrics."""
        with self.guard.handling(context, "admin_refused") as call:
            self.guard.peer(context, call, Role.OPERATOR)
            return self._status(request.job_id)
        raise AssertionError("unreachable")  # pragma: no cover

    def ListJobs(
        self, request: admin_pb2.ListJobsRequest, context: grpc.ServicerContext
    ) -> admin_pb2.JobList:
        """A page of jobs in submission order, without their rounds."""
        with self.guard.handling(context, "admin_refused") as call:
            self.guard.peer(context, call, Role.OPERATOR)
            size = pages.page_size(request.page_size)
            after = pages.parse_token("j", request.page_token, int) or 0
            rows = self.store.jobs_page(after=after, limit=size + 1)
            out = admin_pb2.JobList()
            out.next_page_token = pages.fill(
                out.jobs,
                ((n, self._summary(row)) for n, row in rows[:size]),
                more=len(rows) > size,
                kind="j",
            )
            return out
        raise AssertionError("unreachable")  # pragma: no cover

    def ListRounds(
        self, request: admin_pb2.ListRoundsRequest, context: grpc.ServicerContext
    ) -> admin_pb2.RoundList:
        """A page of a job's rounds, in order, with each site's answer."""
        with self.guard.handling(context, "admin_refused") as call:
            self.guard.peer(context, call, Role.OPERATOR)
            self._job_row(request.job_id)  # refuses an unknown job
            size = pages.page_size(request.page_size)
            after = pages.parse_token("r", request.page_token, int) or 0
            rows = self.store.rounds(request.job_id, after=after, limit=size + 1)
            out = admin_pb2.RoundList()
            out.next_page_token = pages.fill(
                out.rounds,
                self._round_statuses(request.job_id, rows[:size]),
                more=len(rows) > size,
                kind="r",
            )
            return out
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
                    AuditNote(
                        event="job_cancel_requested",
                        actor=info.name,
                        at=self.guard.clock(),
                        job=request.job_id,
                    )
                )
            return self._status(request.job_id)
        raise AssertionError("unreachable")  # pragma: no cover

    def ListSites(
        self, request: admin_pb2.ListSitesRequest, context: grpc.ServicerContext
    ) -> admin_pb2.SiteList:
        """A page of registered sites by id, with connection state and last heartbeat."""
        with self.guard.handling(context, "admin_refused") as call:
            self.guard.peer(context, call, Role.OPERATOR)
            size = pages.page_size(request.page_size)
            after = pages.parse_token("s", request.page_token, str) or ""
            rows = self.store.sites(after=after, limit=size + 1)
            live = self.coord.connected()
            unusable = self.coord.unusable()
            out = admin_pb2.SiteList()
            out.next_page_token = pages.fill(
                out.sites,
                ((s.id, _site_info(s, live, unusable)) for s in rows[:size]),
                more=len(rows) > size,
                kind="s",
            )
            return out
        raise AssertionError("unreachable")  # pragma: no cover

    def DownloadModel(
        self, request: federation_pb2.DownloadRequest, context: grpc.ServicerContext
    ) -> Iterator[federation_pb2.BlobPart]:
        """Stream a model version of a job."""
        with self.guard.handling(context, "download_refused") as call:
            self.guard.peer(context, call, Role.OPERATOR)
            call.bind(job=request.job_id)
            parts = model_parts(self.store, self.blobs, request)
            first = next(parts)
        yield first
        yield from parts

    def ListAudit(
        self, request: admin_pb2.AuditRequest, context: grpc.ServicerContext
    ) -> admin_pb2.AuditList:
        """A page of audit entries after the token's (or ``after_seq``), oldest first."""
        with self.guard.handling(context, "admin_refused") as call:
            self.guard.peer(context, call, Role.OPERATOR)
            size = pages.page_size(request.page_size, request.limit)
            after = pages.parse_token("a", request.page_token, int)
            rows = self.store.audit_entries(
                after_seq=request.after_seq if after is None else after, limit=size + 1
            )
            out = admin_pb2.AuditList()
            out.next_page_token = pages.fill(
                out.entries,
                ((e.seq, _audit_entry(e)) for e in rows[:size]),
                more=len(rows) > size,
                kind="a",
            )
            return out
        raise AssertionError("unreachable")  # pragma: no cover

    def _job_row(self, job_id: str) -> JobRow:
        row = self.store.job(job_id)
        if row is None:
            raise PeerError(f"no job {job_id[:128]!r}", reason=Reason.UNKNOWN_JOB)
        return row

    def _summary(self, row: JobRow) -> admin_pb2.JobStatus:
        """A job without its rounds: state, latest model, ε per site, final metrics."""
        st = admin_pb2.JobStatus(
            job_id=row.id,
            spec=common_pb2.JobSpec.FromString(row.spec),
            state=_STATES.get(row.state, admin_pb2.JOB_STATE_UNSPECIFIED),
            error=row.error,
            submitted_by=row.submitted_by,
            rounds_total=self.store.count_rounds(row.id),
        )
        latest = self.store.latest_model(row.id)
        if latest is not None:
            st.model_version = latest.sha256
        st.epsilon_by_site.update(self.store.epsilon_by_site(row.id))
        f = row.final_metrics
        st.final_accuracy = f.get("accuracy", 0.0)
        st.final_loss = f.get("loss", 0.0)
        st.final_eval_samples = int(f.get("eval_samples", 0))
        live = self.coord.live_state(row.id)
        if live is not None and live.phase is RoundPhase.WAITING:
            st.waiting = waiting_line(live, self.coord.unusable(st.spec.dataset.name))
        return st

    def _status(self, job_id: str) -> admin_pb2.JobStatus:
        """A job with its latest rounds that fit one reply, in order."""
        row = self._job_row(job_id)
        st = self._summary(row)
        models, rounds = self.store.models(job_id), self.store.rounds(job_id)
        st.versions.extend(model_versions(models, rounds, row.final_metrics))
        budget = pages.REPLY_BUDGET - st.ByteSize()
        newest = self.store.rounds(job_id, limit=GET_JOB_ROUNDS, newest=True)
        kept: list[admin_pb2.RoundStatus] = []
        for _, rs in self._round_statuses(job_id, newest):
            budget -= rs.ByteSize()
            if kept and budget < 0:
                break
            kept.append(rs)
        st.rounds.extend(reversed(kept))
        return st

    def _round_statuses(
        self, job_id: str, rows: list[RoundRow]
    ) -> Iterator[tuple[int, admin_pb2.RoundStatus]]:
        """(round, RoundStatus) for each of ``rows``, with its sites' answers."""
        if not rows:
            return
        lo, hi = min(r.round for r in rows), max(r.round for r in rows)
        by_round: dict[int, list[SiteRoundRow]] = defaultdict(list)
        for s in self.store.round_sites(job_id, lo=lo, hi=hi):
            by_round[s.round].append(s)
        failed: dict[int, list[FailureRow]] = defaultdict(list)
        for f in self.store.failures(job_id, lo=lo, hi=hi):
            failed[f.round].append(f)
        live = self.coord.live_state(job_id)
        for rr in rows:
            state = rr.state
            if live is not None and live.round == rr.round and rr.state != "done":
                state = live.phase.value
            m = rr.metrics
            sites = [_site_round(s) for s in by_round.get(rr.round, [])]
            add_failures(sites, failed.get(rr.round, []), attempt=rr.attempt)
            yield (
                rr.round,
                admin_pb2.RoundStatus(
                    round=rr.round,
                    state=state,
                    sites=sites,
                    aggregated=int(m.get("aggregated", 0)),
                    accuracy=m.get("accuracy", 0.0),
                    loss=m.get("loss", 0.0),
                    eval_samples=int(m.get("eval_samples", 0)),
                    seconds=m.get("seconds", 0.0),
                    model_version=rr.model_version_out,
                ),
            )


def _site_round(s: SiteRoundRow) -> admin_pb2.SiteRound:
    return admin_pb2.SiteRound(
        site_id=s.site,
        outcome=_OUTCOMES.get(s.outcome, common_pb2.OUTCOME_UNSPECIFIED),
        reason=s.reason,
        num_samples=s.num_samples,
        epsilon=s.epsilon,
        update_epsilon=s.update_epsilon,
        metrics=s.metrics,
        weight=s.weight,
        update_norm=s.update_norm,
        clipped=s.clipped,
    )


def _site_info(
    s: SiteRow, live: dict[str, SiteConn], unusable: list[SiteProblem]
) -> admin_pb2.SiteInfo:
    conn = live.get(s.id)
    info = admin_pb2.SiteInfo(
        site_id=s.id,
        connected=conn is not None,
        last_heartbeat=conn.last_seen if conn else s.last_heartbeat,
        datasets=s.datasets,
        device=s.device,
        dataset_sizes=[
            federation_pb2.DatasetSize(name=n, train_records=t, holdout_records=h)
            for n, (t, h) in sorted(s.sizes.items())
        ],
    )
    info.unusable.extend(p for site, p in unusable if site == s.id)
    if conn is not None:
        info.current_task = conn.current_task
        if conn.resources is not None:
            info.resources.CopyFrom(conn.resources)
    return info


def _audit_entry(e: AuditEntry) -> admin_pb2.AuditEntry:
    return admin_pb2.AuditEntry(
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
