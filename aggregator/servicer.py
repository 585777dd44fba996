"""The Federation service: thin handlers that authenticate, verify, decode and delegate.

Every handler requires a ``site`` certificate, opens the signed envelope against the binding
the coordinator expects (signature before decoding), then calls the coordinator. Refusals go
through ``Guard.handling`` (log event + audit entry + gRPC status), never a traceback; the
response streams (OpenTasks, Download) go on through ``Guard.streaming``, so one that fails
after its first message is refused the same way, under the same event name.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import structlog

from aggregator.bundles import bundle_parts
from aggregator.coordinator import Coordinator, UploadTarget
from aggregator.guard import Guard, check_figures, decode
from aggregator.quota import Quotas
from aggregator.store import AuditNote, BlobStore, Store
from confide.errors import (
    InternalError,
    MalformedMessage,
    OversizedMessage,
    PeerError,
    Reason,
    ReplayedMessage,
)
from confide.pki import BadCertificate, Role
from confide.v1 import common_pb2, federation_pb2, federation_pb2_grpc
from confide.wire import bounds
from confide.wire.blob import BlobAssembler, check_finite, spec_nbytes

__all__ = ["FederationServicer", "model_parts"]

log = structlog.get_logger("aggregator.rpc")

_UPLOAD_WAIT_S = 120.0
_SECAGG_STAGES = frozenset(
    {
        common_pb2.STAGE_ADVERTISE_KEYS,
        common_pb2.STAGE_SHARE_KEYS,
        common_pb2.STAGE_SHARES_CHECKED,
        common_pb2.STAGE_CONSISTENCY,
        common_pb2.STAGE_UNMASK,
    }
)


class FederationServicer(federation_pb2_grpc.FederationServicer):  # type: ignore[misc]
    """Agent-facing RPCs.

    Args:
        guard: authentication and refusal handling.
        coordinator: the round engine (jobs, rounds and site queues).
        blobs: the model blobs a Download streams.
        quotas: per-peer and server-wide budgets; an upload reserves its model's bytes.
        max_update_bytes: the largest update blob accepted.
        max_concurrent_uploads: uploads received at once (others wait up to 120 s, or
            until the phase they belong to closes).
        heartbeat_interval_s: told to sites at register.
    """

    def __init__(
        self,
        guard: Guard,
        coordinator: Coordinator,
        blobs: BlobStore,
        quotas: Quotas,
        *,
        max_update_bytes: int,
        max_concurrent_uploads: int,
        heartbeat_interval_s: float,
    ) -> None:
        self.guard, self.coord, self.blobs, self.quotas = guard, coordinator, blobs, quotas
        self.heartbeat_interval_s = heartbeat_interval_s
        self.max_update_bytes = max_update_bytes
        self._uploads = threading.BoundedSemaphore(max_concurrent_uploads)
        self._lock = threading.Lock()
        self._inflight: set[tuple[str, str]] = set()

    def Register(
        self, request: common_pb2.Envelope, context: grpc.ServicerContext
    ) -> federation_pb2.RegisterReply:
        """Record the site's datasets; tell it its name and heartbeat interval."""
        with self.guard.handling(context, "register_refused", request) as call:
            info = self.guard.peer(context, call, Role.SITE)
            req = decode(
                federation_pb2.RegisterRequest,
                self.guard.open(request, info, stage=common_pb2.STAGE_REGISTER),
            )
            bounds.check_register(req)
            self.coord.register(info.name, req)
            return federation_pb2.RegisterReply(
                site_id=info.name, heartbeat_interval_s=self.heartbeat_interval_s
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def Heartbeat(
        self, request: common_pb2.Envelope, context: grpc.ServicerContext
    ) -> federation_pb2.HeartbeatReply:
        """Note the site is alive; a site whose certificate is no longer valid loses its stream."""
        with self.guard.handling(context, "heartbeat_refused", request) as call:
            try:
                info = self.guard.peer(context, call, Role.SITE)
            except BadCertificate:
                # Revoked (or expired) since its task stream opened: end that stream too.
                # Its name is not trusted from a refused certificate, so check every stream.
                self.coord.drop_invalid(self.guard.check_cert)
                raise
            # The stream may have been opened with another (now revoked) certificate.
            self.coord.drop_invalid(self.guard.check_cert, site=info.name)
            hb = decode(
                federation_pb2.Heartbeat,
                self.guard.open(request, info, stage=common_pb2.STAGE_HEARTBEAT),
            )
            bounds.check_heartbeat(hb)
            self.coord.heartbeat(info.name, hb)
            return federation_pb2.HeartbeatReply()
        raise AssertionError("unreachable")  # pragma: no cover

    def OpenTasks(
        self, request: common_pb2.Envelope, context: grpc.ServicerContext
    ) -> Iterator[federation_pb2.Task]:
        """Stream the site's tasks until it disconnects or a newer stream replaces this one."""
        with self.guard.handling(context, "open_tasks_refused", request) as call:
            info = self.guard.peer(context, call, Role.SITE)
            req = decode(
                federation_pb2.OpenTasksRequest,
                self.guard.open(request, info, stage=common_pb2.STAGE_OPEN_TASKS),
            )
            bounds.check_open_tasks(req)
            conn = self.coord.open_stream(info.name, cert_pem=info.pem, instance=req.instance)
        context.add_callback(lambda: self.coord.close_stream(conn))
        try:
            yield from self.guard.streaming(
                context, "open_tasks_refused", call, iter(conn.queue.get, None)
            )
        finally:
            self.coord.close_stream(conn)

    def Download(
        self, request: federation_pb2.DownloadRequest, context: grpc.ServicerContext
    ) -> Iterator[federation_pb2.BlobPart]:
        """Stream a global model version: header, then chunks."""
        with self.guard.handling(context, "download_refused") as call:
            self.guard.peer(context, call, Role.SITE)
            call.bind(job=request.job_id)
            parts = model_parts(self.guard.store, self.blobs, request)
            first = next(parts)
        yield first
        yield from self.guard.streaming(context, "download_refused", call, parts)

    def DownloadBundle(
        self, request: federation_pb2.BundleRequest, context: grpc.ServicerContext
    ) -> Iterator[federation_pb2.BlobPart]:
        """Stream a job's code archive: header (size, hash), then chunks (never run here)."""
        with self.guard.handling(context, "download_refused") as call:
            self.guard.peer(context, call, Role.SITE)
            call.bind(job=request.job_id)
            parts = bundle_parts(self.guard.store, self.blobs, request.job_id)
            first = next(parts)
        yield first
        yield from self.guard.streaming(context, "download_refused", call, parts)

    def Upload(
        self, request_iterator: Iterator[federation_pb2.UploadPart], context: grpc.ServicerContext
    ) -> federation_pb2.Ack:
        """Receive one update: signed header first, then its chunks; check, then sum it."""
        with self.guard.handling(context, "update_refused") as call:
            info = self.guard.peer(context, call, Role.SITE)
            first = next(request_iterator, None)
            if first is None or first.WhichOneof("part") != "header":
                raise MalformedMessage("an upload must start with its signed header")
            call.request = first
            env = first.header
            call.bind(job=env.job_id, round=env.round)
            target = self.coord.upload_target(env.job_id)
            header = decode(
                federation_pb2.UpdateHeader,
                self.guard.open(
                    env, info, stage=target.stage, job_id=env.job_id, round=target.round
                ),
            )
            bounds.check_update_header(header)
            if header.num_samples < 1:
                raise MalformedMessage("num_samples must be >= 1")
            check_figures(
                header.metrics, epsilon=header.epsilon, update_epsilon=header.update_epsilon
            )
            self.coord.check_update(info.name, env.job_id, target.round, header.task_id)
            limit = min(target.nbytes, self.max_update_bytes)
            _check_size(header.blob, limit)  # refused before it waits for a slot
            _check_specs(header.blob, target)
            with self._upload_slot(info.name, env.job_id, target, limit, context):
                # The buffer grows with the bytes received, never with the bytes announced.
                asm = BlobAssembler(header.blob, max_bytes=limit)
                for part in request_iterator:
                    if part.WhichOneof("part") != "chunk":
                        raise MalformedMessage("only chunks may follow the upload header")
                    asm.add(part.chunk)
                arrays = asm.finish()
                check_finite(arrays)
                self.coord.accept_update(info.name, env.job_id, target.round, header, arrays)
            return federation_pb2.Ack()
        raise AssertionError("unreachable")  # pragma: no cover

    @contextmanager
    def _upload_slot(
        self,
        site: str,
        job_id: str,
        target: UploadTarget,
        nbytes: int,
        context: grpc.ServicerContext,
    ) -> Iterator[None]:
        """Hold one upload slot and ``nbytes`` of the update budget until the phase closes.

        At most one upload per (site, job) is in flight; a second is refused (REPLAYED). The
        wait for a slot and the upload itself end at the phase's deadline: an upload still
        streaming then is cancelled, so a stalled peer cannot keep a slot for ever.

        Raises:
            ReplayedMessage: the site already has an upload for this job in flight.
            PeerError: the site's own uploads would hold more than its bytes in flight
                (PEER_LIMIT).
            InternalError: no slot came free before the deadline (UNAVAILABLE), or the
                server's update-bytes budget did not (SERVER_BUSY).
        """
        key = (site, job_id)
        with self._lock:
            if key in self._inflight:
                raise ReplayedMessage(f"{site!r} already has an upload for job {job_id!r}")
            self._inflight.add(key)
        try:
            left = _UPLOAD_WAIT_S
            if target.deadline is not None:
                left = max(0.0, target.deadline - self.guard.clock())
            t0 = time.monotonic()
            if not self._uploads.acquire(timeout=min(_UPLOAD_WAIT_S, left)):
                raise InternalError("too many uploads at once", reason=Reason.UNAVAILABLE)
            try:
                wait = max(0.0, min(_UPLOAD_WAIT_S, left) - (time.monotonic() - t0))
                with self.quotas.reserve(site, nbytes, timeout=wait):
                    watchdog = threading.Timer(
                        max(0.0, left - (time.monotonic() - t0)),
                        self._expire,
                        (site, job_id, context),
                    )
                    watchdog.daemon = True
                    if target.deadline is not None:
                        watchdog.start()
                    try:
                        yield
                    finally:
                        watchdog.cancel()
            finally:
                self._uploads.release()
        finally:
            with self._lock:
                self._inflight.discard(key)

    def _expire(self, site: str, job_id: str, context: grpc.ServicerContext) -> None:
        """The phase of a still-streaming upload closed: cancel it (its slot comes free)."""
        log.warning("upload_expired", site=site, job=job_id)
        try:
            self.guard.store.audit(
                AuditNote(
                    event="upload_expired",
                    actor=site,
                    at=self.guard.clock(),
                    job=job_id,
                    detail="the phase closed while the upload was still streaming",
                )
            )
        finally:
            context.cancel()

    def Report(
        self, request: common_pb2.Envelope, context: grpc.ServicerContext
    ) -> federation_pb2.Ack:
        """Record a task's outcome (a refusal, a failure, or evaluation metrics)."""
        with self.guard.handling(context, "report_refused", request) as call:
            info = self.guard.peer(context, call, Role.SITE)
            call.bind(job=request.job_id, round=request.round)
            rnd = self.coord.upload_target(request.job_id).round
            rep = decode(
                federation_pb2.TaskReport,
                self.guard.open(
                    request,
                    info,
                    stage=common_pb2.STAGE_TASK_REPORT,
                    job_id=request.job_id,
                    round=rnd,
                ),
            )
            bounds.check_report(rep)
            check_figures(rep.metrics)
            self.coord.report(info.name, request.job_id, rnd, rep)
            return federation_pb2.Ack()
        raise AssertionError("unreachable")  # pragma: no cover

    def SecAgg(
        self, request: common_pb2.Envelope, context: grpc.ServicerContext
    ) -> federation_pb2.Ack:
        """Take a SecAgg+ stage message (every stage but the masked input) into its round.

        The envelope is verified (signature first) against the caller's certificate and bound
        to the stage it claims, its job and the job's current round; the coordinator then
        requires that stage to be the round's open one (WRONG_STAGE), the sender selected
        for it (NOT_SELECTED) and this to be its first message of the stage (REPLAYED).
        """
        with self.guard.handling(context, "secagg_refused", request) as call:
            info = self.guard.peer(context, call, Role.SITE)
            call.bind(job=request.job_id, round=request.round)
            if request.stage not in _SECAGG_STAGES:
                raise ReplayedMessage(
                    "not a secure-aggregation stage message", reason=Reason.WRONG_STAGE
                )
            rnd = self.coord.upload_target(request.job_id).round
            payload = self.guard.open(
                request, info, stage=request.stage, job_id=request.job_id, round=rnd
            )
            self.coord.secagg(info, request, payload)
            return federation_pb2.Ack()
        raise AssertionError("unreachable")  # pragma: no cover


def _check_size(blob: common_pb2.BlobHeader, limit: int) -> None:
    """Refuse a blob declaring more than ``limit`` bytes (``BlobAssembler`` checks it again)."""
    declared = sum(spec_nbytes(t) for t in blob.tensors)
    if max(blob.total_bytes, declared) > limit:
        raise OversizedMessage(f"blob of {max(blob.total_bytes, declared)} bytes exceeds {limit}")


def _check_specs(blob: common_pb2.BlobHeader, target: UploadTarget) -> None:
    got = [(t.name, t.dtype, tuple(t.shape)) for t in blob.tensors]
    want = [(n, target.dtype, s) for n, s in target.shapes]
    if got != want:
        raise MalformedMessage("update tensors differ from the model's names, dtypes or shapes")


def model_parts(
    store: Store, blobs: BlobStore, request: federation_pb2.DownloadRequest
) -> Iterator[federation_pb2.BlobPart]:
    """A model version of a job as BlobParts (header first); checks it exists before yielding.

    Raises:
        PeerError: no such job or version (reason UNKNOWN_JOB), raised on the first ``next``.
    """
    if not any(m.sha256 == request.model_version for m in store.models(request.job_id)):
        raise PeerError(
            f"job {request.job_id!r} has no model {request.model_version!r}",
            reason=Reason.UNKNOWN_JOB,
        )
    yield federation_pb2.BlobPart(header=blobs.header(request.model_version))
    for chunk in blobs.chunks(request.model_version):
        yield federation_pb2.BlobPart(chunk=chunk)
