"""The agent's one network seam: a small ``Transport`` interface and its gRPC + mTLS form.

The session and the task handlers talk to the aggregator only through ``Transport`` (STYLE
rule 2). ``GrpcTransport`` implements it once over a mutual-TLS channel; unit tests drive the
session with an in-memory transport (``tests/agent/fakes.py``) instead. Every failed RPC is
turned into a ``ConfideError`` by ``confide.wire.status.error_from_rpc`` here, so callers
never see ``grpc.RpcError``. Every call has a deadline, and ``close()`` cancels the calls in
flight, so neither a stalled aggregator nor a shutdown can leave a caller blocked for good.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any, Protocol

import grpc

from agent.admission.rules import DEFAULT_MAX_MODEL_BYTES
from confide.bundle import MAX_BUNDLE_BYTES
from confide.errors import ConfideError, InternalError, MalformedMessage, OversizedMessage, Reason
from confide.pki import Identity, channel_credentials
from confide.pki.tls import TARGET_NAME_OVERRIDE
from confide.v1 import common_pb2, federation_pb2, federation_pb2_grpc
from confide.wire.blob import MAX_MESSAGE_BYTES, BlobAssembler, NamedArrays, iter_chunks
from confide.wire.status import error_from_rpc

__all__ = [
    "DOWNLOAD_TIMEOUT_S",
    "MAX_MODEL_BYTES",
    "GrpcTransport",
    "TaskStream",
    "Transport",
    "channel_options",
]

MAX_MODEL_BYTES = DEFAULT_MAX_MODEL_BYTES
"""The largest global model the agent downloads unless told otherwise (the site policy's
``max_model_bytes``); larger blobs are refused before any byte of them is kept. Below that,
the download's buffer grows with the bytes received, never with the size the header declares
(``BlobAssembler``), so an aggregator announcing a large model allocates nothing."""

DOWNLOAD_TIMEOUT_S = 600.0
"""How long one model download may take, end to end, before it fails ``unavailable``."""

_UNARY_TIMEOUT_S = 60.0
_KEEPALIVE_MS = 30_000


class TaskStream(Protocol):
    """The aggregator's stream of tasks for this site; ends when the connection does."""

    def __iter__(self) -> Iterator[federation_pb2.Task]:
        """Yield tasks as they arrive.

        Raises:
            ConfideError: the stream broke (reason ``unavailable`` when the network did).
        """
        ...

    def cancel(self) -> None:
        """End the stream from this side; a blocked iteration then stops."""
        ...


class Transport(Protocol):
    """What the agent says to the aggregator. Every method raises ``ConfideError`` on failure."""

    def register(self, envelope: common_pb2.Envelope) -> federation_pb2.RegisterReply:
        """Send ``Envelope[REGISTER, RegisterRequest]``."""
        ...

    def heartbeat(self, envelope: common_pb2.Envelope) -> None:
        """Send ``Envelope[HEARTBEAT, Heartbeat]``."""
        ...

    def open_tasks(self, envelope: common_pb2.Envelope) -> TaskStream:
        """Open the task stream with ``Envelope[OPEN_TASKS, OpenTasksRequest]``."""
        ...

    def download(self, job_id: str, model_version: str) -> NamedArrays:
        """Fetch a global model version, checked against its header's length and digest.

        Bounded by a deadline (``DOWNLOAD_TIMEOUT_S`` for ``GrpcTransport``); ``close()`` from
        another thread ends it with reason ``unavailable``.
        """
        ...

    def download_bundle(self, job_id: str) -> bytes:
        """Fetch a job's code archive, at most ``confide.bundle.MAX_BUNDLE_BYTES``.

        The bytes are not checked here: the caller compares them with the signed job's
        ``model.code_sha256`` before anything else (``agent.workers.bundles``).
        """
        ...

    def upload(
        self, header: common_pb2.Envelope, buffers: Sequence[memoryview]
    ) -> federation_pb2.Ack:
        """Stream a signed ``UpdateHeader`` envelope, then the blob's bytes in chunks.

        Returns the ``Ack``: the aggregator took it. A refusal is the call's status, raised.
        """
        ...

    def report(self, envelope: common_pb2.Envelope) -> federation_pb2.Ack:
        """Send ``Envelope[TASK_REPORT, TaskReport]``; a refusal raises."""
        ...

    def secagg(self, envelope: common_pb2.Envelope) -> federation_pb2.Ack:
        """Send a secure-aggregation stage message (AdvertiseKeys, ShareKeys, UnmaskShares);
        a refusal raises."""
        ...

    def close(self) -> None:
        """Cancel the calls in flight and release the connection; safe from any thread, twice.

        A call blocked in another thread then raises ``ConfideError`` (``unavailable``), and so
        does every later call.
        """
        ...


def channel_options(server_name: str | None) -> list[tuple[str, int | str]]:
    """gRPC channel options: chunk-sized message limits, keepalive, the certificate name.

    Args:
        server_name: the aggregator's certificate name to check instead of the dialled host
            (see ``confide.pki.tls``); None checks the host itself.
    """
    opts: list[tuple[str, int | str]] = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", _KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    if server_name:
        opts.append((TARGET_NAME_OVERRIDE, server_name))
    return opts


# Codes this side produces itself: our deadline ran out, or close() cancelled the call.
_LOCAL_GIVE_UP = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED})


def _error(exc: grpc.RpcError) -> ConfideError:
    """``error_from_rpc``, except that a call we gave up on is ``unavailable``.

    ``confide.wire.status`` is the shared table, used by both sides; it reads a status without
    a reason detail as ``internal``. A deadline or a cancel on the agent's side says only that
    the aggregator did not answer in time (or that we are shutting down), so the session must
    treat it like a lost connection and reconnect.
    """
    err = error_from_rpc(exc)
    code = exc.code() if hasattr(exc, "code") else None
    if code in _LOCAL_GIVE_UP and err.reason is Reason.INTERNAL:
        return InternalError(err.message, reason=Reason.UNAVAILABLE)
    return err


def _closed_error() -> InternalError:
    return InternalError("the connection to the aggregator is closed", reason=Reason.UNAVAILABLE)


@contextlib.contextmanager
def _mapped() -> Iterator[None]:
    """Translate a failed RPC into the matching ``ConfideError`` (the one boundary table)."""
    try:
        yield
    except grpc.RpcError as exc:
        raise _error(exc) from exc


class _GrpcTaskStream:
    """A server stream of ``Task`` whose errors come out as ``ConfideError``."""

    def __init__(self, call: grpc.Call) -> None:
        self._call = call

    def __iter__(self) -> Iterator[federation_pb2.Task]:
        with _mapped():
            yield from self._call

    def cancel(self) -> None:
        self._call.cancel()


class GrpcTransport:
    """``Transport`` over one gRPC channel with mutual TLS to the aggregator.

    Args:
        address: the aggregator's ``host:port``.
        credentials: mTLS channel credentials (``confide.pki.channel_credentials``).
        server_name: the aggregator certificate's name (``aggregator.server_name``).
        max_model_bytes: the largest model blob ``download`` accepts.
    """

    def __init__(
        self,
        *,
        address: str,
        credentials: grpc.ChannelCredentials,
        server_name: str | None,
        max_model_bytes: int = MAX_MODEL_BYTES,
    ) -> None:
        self._channel = grpc.secure_channel(
            address, credentials, options=channel_options(server_name)
        )
        self._stub = federation_pb2_grpc.FederationStub(self._channel)
        self._max_model_bytes = max_model_bytes
        self._lock = threading.Lock()
        self._closed = False
        self._calls: set[grpc.Call] = set()  # streaming calls in flight, cancelled by close()

    @classmethod
    def from_identity(
        cls,
        identity: Identity,
        *,
        address: str,
        server_name: str | None,
        max_model_bytes: int = MAX_MODEL_BYTES,
    ) -> GrpcTransport:
        """A transport that presents ``identity`` and trusts only its federation CA."""
        return cls(
            address=address,
            credentials=channel_credentials(identity),
            server_name=server_name,
            max_model_bytes=max_model_bytes,
        )

    def register(self, envelope: common_pb2.Envelope) -> federation_pb2.RegisterReply:
        with self._guarded():
            reply: federation_pb2.RegisterReply = self._stub.Register(
                envelope, timeout=_UNARY_TIMEOUT_S, wait_for_ready=False
            )
        return reply

    def heartbeat(self, envelope: common_pb2.Envelope) -> None:
        with self._guarded():
            self._stub.Heartbeat(envelope, timeout=_UNARY_TIMEOUT_S)

    def open_tasks(self, envelope: common_pb2.Envelope) -> TaskStream:
        with self._guarded():
            call = self._stub.OpenTasks(envelope)
        return _GrpcTaskStream(call)

    def download(
        self, job_id: str, model_version: str, *, timeout: float = DOWNLOAD_TIMEOUT_S
    ) -> NamedArrays:
        """Fetch a global model version within ``timeout`` seconds (the whole stream).

        Raises:
            ConfideError: the aggregator refused; ``unavailable`` when the deadline ran out,
                the network failed or ``close()`` cancelled the download.
            MalformedMessage: the parts are out of order or do not match their header.
        """
        req = federation_pb2.DownloadRequest(job_id=job_id, model_version=model_version)
        assembler: BlobAssembler | None = None
        parts = self._parts(lambda: self._stub.Download(req, timeout=timeout))
        with contextlib.closing(parts):  # an error here cancels the call at once
            for part in parts:
                which = part.WhichOneof("part")
                if which == "header":
                    if assembler is not None:
                        raise MalformedMessage("download sent a second blob header")
                    assembler = BlobAssembler(part.header, max_bytes=self._max_model_bytes)
                elif which == "chunk":
                    if assembler is None:
                        raise MalformedMessage("download sent a chunk before the header")
                    assembler.add(part.chunk)
                else:
                    raise MalformedMessage("download sent an empty part")
        if assembler is None:
            raise MalformedMessage("download ended without a blob header")
        return assembler.finish()

    def download_bundle(self, job_id: str, *, timeout: float = DOWNLOAD_TIMEOUT_S) -> bytes:
        """Fetch a job's code archive within ``timeout`` seconds, at most ``MAX_BUNDLE_BYTES``.

        Raises:
            ConfideError: the aggregator refused; ``unavailable`` as for ``download``.
            OversizedMessage: the archive is announced or sent larger than the bound (refused
                before its bytes are kept).
            MalformedMessage: the parts are out of order or not the size announced.
        """
        req = federation_pb2.BundleRequest(job_id=job_id)
        total: int | None = None
        buf = bytearray()
        parts = self._parts(lambda: self._stub.DownloadBundle(req, timeout=timeout))
        with contextlib.closing(parts):
            for part in parts:
                which = part.WhichOneof("part")
                if which == "header" and total is None:
                    total = int(part.header.total_bytes)
                    if total > MAX_BUNDLE_BYTES:
                        raise OversizedMessage(
                            f"the code bundle is announced at {total} bytes, "
                            f"over {MAX_BUNDLE_BYTES}",
                            reason=Reason.BUNDLE_TOO_LARGE,
                        )
                elif which == "chunk" and total is not None:
                    if len(buf) + len(part.chunk) > total:
                        raise OversizedMessage(
                            "the code bundle's chunks exceed its size",
                            reason=Reason.BUNDLE_TOO_LARGE,
                        )
                    buf += part.chunk
                else:
                    raise MalformedMessage("bundle download parts are out of order")
        if total is None or len(buf) != total:
            raise MalformedMessage("bundle download ended early")
        return bytes(buf)

    def _parts(self, start: Callable[[], Any]) -> Generator[federation_pb2.BlobPart, None, None]:
        """The parts of a download stream ``start()`` opens, cancelled by ``close()``."""
        with self._lock:  # so close() either sees this call or refuses it
            if self._closed:
                raise _closed_error()
            with _mapped():
                call = start()
            self._calls.add(call)
        try:
            with _mapped():
                yield from call
        finally:
            call.cancel()  # a no-op when the stream ended; stops the server after an error
            with self._lock:
                self._calls.discard(call)

    def upload(
        self, header: common_pb2.Envelope, buffers: Sequence[memoryview]
    ) -> federation_pb2.Ack:
        def parts() -> Iterator[federation_pb2.UploadPart]:
            yield federation_pb2.UploadPart(header=header)
            for chunk in iter_chunks(buffers):
                yield federation_pb2.UploadPart(chunk=chunk)

        with self._guarded():
            ack: federation_pb2.Ack = self._stub.Upload(parts(), timeout=_UNARY_TIMEOUT_S * 10)
        return ack

    def report(self, envelope: common_pb2.Envelope) -> federation_pb2.Ack:
        with self._guarded():
            ack: federation_pb2.Ack = self._stub.Report(envelope, timeout=_UNARY_TIMEOUT_S)
        return ack

    def secagg(self, envelope: common_pb2.Envelope) -> federation_pb2.Ack:
        with self._guarded():
            ack: federation_pb2.Ack = self._stub.SecAgg(envelope, timeout=_UNARY_TIMEOUT_S)
        return ack

    def close(self) -> None:
        with self._lock:
            self._closed = True
            calls = list(self._calls)
        for call in calls:
            call.cancel()
        # Closing the channel also ends the unary calls in flight (status CANCELLED).
        self._channel.close()

    @contextlib.contextmanager
    def _guarded(self) -> Iterator[None]:
        """``_mapped``, and a call on the channel ``close()`` shut is ``unavailable`` too."""
        try:
            with _mapped():
                yield
        except ValueError as exc:  # grpc: "Cannot invoke RPC on closed channel!"
            if not self._closed:
                raise
            raise _closed_error() from exc
