"""The one table that maps Confide's error tree to gRPC status codes and back.

Servicers raise ``ConfideError``s; ``abort_with`` turns one into a gRPC status whose details
string is the ``Reason`` value, so peers learn little (the local log says everything).
Clients call ``error_from_rpc`` to rebuild the matching error from a ``grpc.RpcError``; a
refusal is never said in-band (``Ack`` carries no verdict).

One exception: a ``ConfigError`` is about what the caller itself sent (a job key that the
aggregator refuses), so its one-line message travels too, in the trailing metadata key
``confide-detail-bin``, and ``error_from_rpc`` puts it in the rebuilt error's message.
"""

from __future__ import annotations

from typing import NoReturn

import grpc

from confide import errors
from confide.disclose import one_line
from confide.errors import ConfideError, Reason

__all__ = [
    "DETAIL_KEY",
    "STATUS_FOR",
    "abort_with",
    "error_from_rpc",
    "status_for",
]

DETAIL_KEY = "confide-detail-bin"
"""Trailing metadata key of a refused config's message (binary, so any UTF-8 travels)."""
_MAX_DETAIL = 500

STATUS_FOR: dict[type[ConfideError], grpc.StatusCode] = {
    errors.ConfigError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.MalformedMessage: grpc.StatusCode.INVALID_ARGUMENT,
    errors.OversizedMessage: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.ReplayedMessage: grpc.StatusCode.FAILED_PRECONDITION,
    errors.BadSignature: grpc.StatusCode.UNAUTHENTICATED,
    errors.NonFiniteValue: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unauthorized: grpc.StatusCode.PERMISSION_DENIED,
    errors.PeerError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.PolicyRefusal: grpc.StatusCode.FAILED_PRECONDITION,
    errors.InternalError: grpc.StatusCode.INTERNAL,
    ConfideError: grpc.StatusCode.INTERNAL,
}

_REASON_STATUS: dict[Reason, grpc.StatusCode] = {
    Reason.UNKNOWN_JOB: grpc.StatusCode.NOT_FOUND,
    Reason.UNKNOWN_SITE: grpc.StatusCode.NOT_FOUND,
    Reason.BAD_CERTIFICATE: grpc.StatusCode.UNAUTHENTICATED,
    Reason.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Reason.PEER_LIMIT: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.SERVER_BUSY: grpc.StatusCode.UNAVAILABLE,
}

_CLASS_FOR_STATUS: dict[grpc.StatusCode, type[ConfideError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.MalformedMessage,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.OversizedMessage,
    grpc.StatusCode.FAILED_PRECONDITION: errors.PolicyRefusal,
    grpc.StatusCode.UNAUTHENTICATED: errors.BadSignature,
    grpc.StatusCode.PERMISSION_DENIED: errors.Unauthorized,
    grpc.StatusCode.NOT_FOUND: errors.PeerError,
}

# Overload is told apart by whose it is: the caller's own quota, or the server's capacity.
_CLASS_FOR_REASON: dict[Reason, type[ConfideError]] = {
    Reason.PEER_LIMIT: errors.PeerError,
    Reason.SERVER_BUSY: errors.InternalError,
}


def status_for(exc: ConfideError) -> grpc.StatusCode:
    """The gRPC status code for an error: by reason first, then by the nearest class."""
    if exc.reason in _REASON_STATUS:
        return _REASON_STATUS[exc.reason]
    for cls in type(exc).__mro__:
        if cls in STATUS_FOR:
            return STATUS_FOR[cls]  # type: ignore[index]
    return grpc.StatusCode.INTERNAL


def abort_with(context: grpc.ServicerContext, exc: ConfideError) -> NoReturn:
    """Abort the current RPC with the status for ``exc``; details is the reason value.

    A ``ConfigError``'s message (naming the key) goes along in trailing metadata.
    """
    if isinstance(exc, errors.ConfigError):
        context.set_trailing_metadata(
            ((DETAIL_KEY, one_line(str(exc), limit=_MAX_DETAIL).encode()),)
        )
    context.abort(status_for(exc), exc.reason.value)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


def error_from_rpc(err: grpc.RpcError) -> ConfideError:
    """Rebuild a ConfideError from a failed RPC, keeping the peer's reason when known."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else ""
    try:
        reason: Reason | None = Reason(details)
    except ValueError:
        reason = Reason.UNAVAILABLE if code == grpc.StatusCode.UNAVAILABLE else None
    cls = _CLASS_FOR_REASON.get(reason) if reason is not None else None
    if cls is None:
        cls = _CLASS_FOR_STATUS.get(code, errors.InternalError)
    detail = _detail(err)
    if detail:
        return cls(f"aggregator refused it: {detail}", reason=reason)
    if reason is not None and details == reason.value:
        return cls(f"aggregator answered {code.name}", reason=reason)  # the reason says it
    return cls(f"aggregator answered {code.name}: {one_line(details)}", reason=reason)


def _detail(err: grpc.RpcError) -> str:
    """The refused config's message from trailing metadata, cleaned and bounded ("" if none)."""
    try:
        metadata = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    except Exception:  # a call that never started has none
        return ""
    for key, value in metadata or ():
        if key == DETAIL_KEY and isinstance(value, bytes):
            return one_line(value.decode("utf-8", "replace"), limit=_MAX_DETAIL)
    return ""
