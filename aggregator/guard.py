"""What every RPC handler does first and on refusal: authenticate, verify, decode, refuse.

``Guard.handling`` wraps a handler body: it binds ``site``/``job``/``round`` log context for
the RPC only (``bound_contextvars``), and turns any ``ConfideError`` into one structured log
event, one audit entry, one count in the metrics (``refusals_total{event,reason}``) and a
gRPC status from ``confide.wire.status`` (details = the reason).
Unexpected exceptions become INTERNAL with a log line, never a traceback to the peer.
``Guard.streaming`` does the same for each message of a response stream (OpenTasks,
Download), so a stream that fails after its first message is refused, logged and audited
like a call refused at its start, under the same bound context.

A refusal's record is short whatever was refused (issue 9.7): the reason, the error text and
job id cut to ``_NOTE_CHARS``, and the refused request's size and SHA-256 — never its payload.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import grpc
import structlog
from google.protobuf.message import DecodeError, Message

from aggregator.metrics import AggregatorMetrics
from aggregator.store import AuditNote, Store
from confide.errors import ConfideError, InternalError, MalformedMessage, NonFiniteValue
from confide.pki import (
    BadCertificate,
    CertInfo,
    Role,
    peer_info,
    require_role,
    verify_certificate,
)
from confide.pki.crl import check_crl
from confide.v1 import common_pb2
from confide.wire import Binding, open_envelope
from confide.wire.bounds import check_envelope, fingerprint
from confide.wire.status import abort_with

__all__ = ["Call", "Guard", "check_figures", "decode"]

log = structlog.get_logger("aggregator.rpc")
M = TypeVar("M", bound=Message)


_NOTE_CHARS = 200


@dataclass
class Call:
    """What a handler learned about its caller so far (for logs and audit).

    Args:
        request: the request (or an upload's first part), fingerprinted in a refusal's record.
    """

    site: str = ""
    job: str = ""
    round: int = 0
    request: Message | None = None

    def bind(
        self, *, site: str | None = None, job: str | None = None, round: int | None = None
    ) -> None:
        """Record and bind to the log context whatever is known."""
        if site is not None:
            self.site = site
        if job is not None:
            self.job = _short(job)  # a peer's job id: bounded before it reaches logs or audit
        if round is not None:
            self.round = round
        structlog.contextvars.bind_contextvars(site=self.site, job=self.job, round=self.round)


class Guard:
    """Authentication, envelope opening and refusal handling shared by both services.

    Args:
        store: where refusals are audited.
        federation: the federation every envelope must be bound to.
        ca_pem, crl_pem: to re-verify each peer certificate (gRPC does not read the CRL).
        clock: unix-seconds clock.
        crl_path: the CRL file ``crl_pem`` came from; re-read whenever it changes (mtime,
            size or inode), so a revocation takes effect without a restart. A new file is
            put in force only if ``check_crl`` accepts it (this CA's, not older than the
            one in force); one it refuses is logged once and the CRL in force stays.
        on_crl_change: called (outside any lock) after a changed CRL was read, e.g. to
            close the task streams of sites whose certificate it revokes.
        metrics: where each refusal is counted, by event and reason (default: a registry of
            its own, read by nobody).
    """

    def __init__(
        self,
        store: Store,
        *,
        federation: str,
        ca_pem: bytes,
        crl_pem: bytes | None,
        clock: Callable[[], float],
        crl_path: Path | None = None,
        on_crl_change: Callable[[], None] | None = None,
        metrics: AggregatorMetrics | None = None,
    ) -> None:
        self.store, self.federation = store, federation
        self.metrics = metrics if metrics is not None else AggregatorMetrics()
        self.ca_pem, self.crl_pem, self.clock = ca_pem, crl_pem, clock
        self.crl_path, self.on_crl_change = crl_path, on_crl_change
        self._crl_lock = threading.Lock()
        self._crl_stamp = _stamp(crl_path) if crl_path is not None else None

    def peer(self, context: grpc.ServicerContext, call: Call, *roles: Role) -> CertInfo:
        """The caller's verified certificate, which must have one of ``roles``.

        Raises:
            BadCertificate: the certificate is not valid now (expired, revoked, foreign).
            Unauthorized: no certificate, or a role not in ``roles``.
        """
        ca_pem, crl_pem = self._trust()
        info = peer_info(
            context,
            ca_pem=ca_pem,
            crl_pem=crl_pem,
            now=datetime.fromtimestamp(self.clock(), UTC),
        )
        call.bind(site=info.name)
        require_role(info, *roles)
        return info

    def check_cert(self, pem: bytes) -> None:
        """Re-verify a certificate seen earlier (e.g. an open stream's) against the CRL now.

        Raises:
            BadCertificate: it is revoked, expired or otherwise no longer valid.
        """
        ca_pem, crl_pem = self._trust()
        verify_certificate(
            pem, ca_pem=ca_pem, crl_pem=crl_pem, now=datetime.fromtimestamp(self.clock(), UTC)
        )

    def _trust(self) -> tuple[bytes, bytes | None]:
        """The CA and CRL in force, taken together (a reload replaces both at once)."""
        self.current_crl()
        with self._crl_lock:
            return self.ca_pem, self.crl_pem

    def current_crl(self) -> bytes | None:
        """The CRL in force, after re-reading its file first if it changed since."""
        if self.crl_path is None:
            return self.crl_pem
        try:
            stamp = _stamp(self.crl_path)
        except OSError as exc:
            # Being replaced, or removed: keep the revocations already known (fail closed).
            log.warning("crl_unreadable", error=repr(exc))
            return self.crl_pem
        refused = ""
        with self._crl_lock:
            changed = stamp != self._crl_stamp
            if changed:
                try:
                    new = self.crl_path.read_bytes()
                except OSError as exc:
                    log.warning("crl_unreadable", error=repr(exc))
                    return self.crl_pem
                self._crl_stamp = stamp  # a refused file is said once, not at every call
                try:
                    check_crl(new, ca_pem=self.ca_pem, in_force=self.crl_pem)
                    self.crl_pem = new
                except BadCertificate as exc:
                    refused, changed = str(exc), False
            crl = self.crl_pem
        if refused:
            log.error(
                "crl_reload_refused",
                path=str(self.crl_path),
                error=refused,
                kept="the revocation list in force",
            )
        if changed:
            log.info("crl_reloaded", path=str(self.crl_path))
            if self.on_crl_change is not None:
                self.on_crl_change()
        return crl

    def check_trust(self, *, ca_pem: bytes, crl_pem: bytes | None) -> None:
        """Whether ``use_trust`` may put this CA and CRL in force (a reload checks first).

        Raises:
            BadCertificate: the CRL is not the CA's, or older than the one in force.
        """
        if crl_pem is not None:
            with self._crl_lock:
                in_force = self.crl_pem
            check_crl(crl_pem, ca_pem=ca_pem, in_force=in_force)

    def use_trust(self, *, ca_pem: bytes, crl_pem: bytes | None) -> None:
        """Verify peers against this CA and CRL from now on (a reload), and re-check streams.

        The caller checked them first (``check_trust``, ``load_identity``); every open task
        stream whose certificate they refuse is ended (``on_crl_change``).
        """
        with self._crl_lock:
            self.ca_pem, self.crl_pem = ca_pem, crl_pem
            if self.crl_path is not None:
                with contextlib.suppress(OSError):
                    self._crl_stamp = _stamp(self.crl_path)
        if self.on_crl_change is not None:
            self.on_crl_change()

    def open(
        self,
        env: common_pb2.Envelope,
        info: CertInfo,
        *,
        stage: int,
        job_id: str | None = None,
        round: int | None = None,
    ) -> bytes:
        """Verify an envelope from the caller (signature first) and return its payload.

        Raises:
            BadSignature, ReplayedMessage, MalformedMessage: see ``open_envelope``.
        """
        check_envelope(env)
        expect = Binding(
            federation=self.federation, sender=info.name, stage=stage, job_id=job_id, round=round
        )
        return open_envelope(
            env, verify_key=info.signing_public_key, expect=expect, now=self.clock()
        )

    @contextmanager
    def handling(
        self,
        context: grpc.ServicerContext,
        event: str,
        request: Message | None = None,
        *,
        call: Call | None = None,
    ) -> Iterator[Call]:
        """Run a handler body; refuse any error with log, audit and a gRPC status.

        Args:
            event: the stable log/audit event name for a refusal, e.g. ``update_refused``.
            request: the request, whose size and digest a refusal records.
            call: what an earlier part of the same RPC learned about its caller (a stream's
                opening), bound again here; None starts with nothing known.
        """
        call = call if call is not None else Call(request=request)
        with structlog.contextvars.bound_contextvars(
            site=call.site, job=call.job, round=call.round
        ):
            try:
                yield call
            except ConfideError as exc:
                self._refuse(context, event, call, exc)
            except Exception as exc:
                if isinstance(exc, grpc.RpcError):  # the peer went away mid-stream
                    log.info("rpc_cancelled", rpc_event=event)
                    raise
                log.error("internal_error", rpc_event=event, error=repr(exc))
                self._refuse(context, event, call, InternalError("internal error"))

    def streaming(
        self, context: grpc.ServicerContext, event: str, call: Call, messages: Iterator[M]
    ) -> Iterator[M]:
        """A response stream's ``messages``, each made under ``handling`` with ``call``.

        A message that fails to come (a blob file gone, the store failing) is refused as the
        stream's opening would have been: the ``event`` log line and audit entry, with the
        caller's site, job and round, and a gRPC status ending the stream. The context is
        bound only while a message is made, never across the ``yield`` that hands it to gRPC,
        so no key stays bound on the pool thread while the stream waits on its peer.

        Args:
            event: the stream's refusal event, e.g. ``download_refused``.
            call: what the stream's opening learned about its caller.
            messages: the stream's remaining messages.
        """
        while True:
            with self.handling(context, event, call=call):
                try:
                    message = next(messages)
                except StopIteration:
                    return
            yield message

    def _refuse(
        self, context: grpc.ServicerContext, event: str, call: Call, exc: ConfideError
    ) -> None:
        error = _short(str(exc))
        seen = fingerprint(call.request.SerializeToString()) if call.request is not None else ""
        log.warning(event, reason=exc.reason.value, error=error, request=seen)
        self.metrics.refused(event, exc.reason)
        try:
            self.store.audit(
                AuditNote(
                    event=event,
                    actor=call.site or "unknown",
                    at=self.clock(),
                    job=_short(call.job),
                    round=call.round,
                    reason=exc.reason.value,
                    detail=f"{error} ({seen})" if seen else error,
                )
            )
        except Exception as audit_exc:  # the refusal must still reach the peer
            log.error("audit_failed", error=repr(audit_exc))
        abort_with(context, exc)


def _short(text: str) -> str:
    """``text`` cut to ``_NOTE_CHARS`` characters, saying how much was cut."""
    if len(text) <= _NOTE_CHARS:
        return text
    return f"{text[:_NOTE_CHARS]}... ({len(text) - _NOTE_CHARS} more characters)"


def _stamp(path: Path) -> tuple[int, int, int]:
    """What tells a changed file: (mtime in ns, size, inode).

    Raises:
        OSError: the file cannot be stat'ed.
    """
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def check_figures(metrics: Mapping[str, float], **epsilons: float) -> None:
    """Refuse a peer's metric that is not a finite number >= 0, or an epsilon that is NaN or < 0.

    Metrics (accuracy, loss, sample counts) are finite and non-negative; a NaN, infinity or
    negative value would poison the sample-weighted means. An epsilon may be +inf: a site
    reports that when its release carries no finite DP guarantee (no noise).

    Args:
        metrics: the message's metrics map.
        epsilons: the message's epsilons by name (``epsilon=...``).

    Raises:
        NonFiniteValue: a NaN, or an infinite metric.
        MalformedMessage: a negative value.
    """
    for name, v in metrics.items():
        if not math.isfinite(v):
            raise NonFiniteValue(f"metric {name} is not finite")
    for name, v in epsilons.items():
        if math.isnan(v):
            raise NonFiniteValue(f"{name} is NaN")
    for name, v in [*metrics.items(), *epsilons.items()]:
        if v < 0:
            raise MalformedMessage(f"{name} is negative")


def decode(cls: type[M], payload: bytes) -> M:
    """Parse a verified payload into ``cls``.

    Raises:
        MalformedMessage: the bytes are not a valid ``cls``.
    """
    msg = cls()
    try:
        msg.ParseFromString(payload)
    except DecodeError as exc:
        raise MalformedMessage(f"payload is not a valid {cls.__name__}") from exc
    return msg
