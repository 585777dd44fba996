"""The gRPC shell of quotas: one handler pool per class of call, limits, idle streams.

gRPC Python's sync server runs every handler on one thread pool, so before this a peer that
opened enough streams which never sent held every thread: operators and heartbeats queued
behind them. ``QuotaInterceptor`` wraps each method's handler so that:

- it runs on its class's own pool (``experimental_thread_pool``, gRPC's per-method pool):
  operator calls and heartbeats (CONTROL) never wait behind federation work, and task
  streams (TASKS) never take the threads of short calls;
- it is admitted by ``Quotas`` first (per-peer quota, then server capacity), and refused
  with ``PEER_LIMIT`` (RESOURCE_EXHAUSTED) or ``SERVER_BUSY`` (UNAVAILABLE) at once, before a
  streaming request is read;
- a stream that waits on its peer longer than ``Limits.stream_idle_s`` (the next upload
  message never comes, or the peer stops taking the messages sent) is cancelled by a
  watchdog, so an idle stream gives its thread back. That is the peer's fault mid-stream,
  so it is counted as a refusal with ``PEER_LIMIT`` like a call refused at its start.

Quota refusals are logged (and audited) once per peer per ``_REPORT_EVERY_S`` with the
count refused since, so a flood cannot flood the log and the audit trail too; each one is
counted in the metrics (event ``call_refused``). A refusal by the servicer itself, at a
stream's start or in its middle, is ``Guard``'s to log. Every message in or out of a
wrapped call adds its protobuf size to the metrics' bytes received or sent, by method.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import grpc
import structlog

from aggregator.metrics import AggregatorMetrics
from aggregator.quota import (
    CALL_POOL,
    CONTROL_POOL,
    CallClass,
    Quotas,
    Ticket,
    classify,
)
from confide.errors import ConfideError, PeerError, Reason
from confide.wire.status import status_for

__all__ = ["QuotaInterceptor", "make_pools"]

log = structlog.get_logger("aggregator.quota")

_HEADROOM = 8
"""Threads beyond a class's admitted maximum, so refusing a call never waits for a thread."""
_REPORT_EVERY_S = 10.0
_ANONYMOUS = "<no certificate>"

Behavior = Callable[..., Any]


def make_pools(quotas: Quotas) -> dict[CallClass, ThreadPoolExecutor]:
    """One handler pool per class, sized so that refusals always find a free thread."""
    lim = quotas.limits
    sizes = {
        CallClass.CONTROL: CONTROL_POOL,
        CallClass.CALL: CALL_POOL,
        CallClass.TRANSFER: lim.transfers + _HEADROOM,
        CallClass.TASKS: lim.task_streams + _HEADROOM,
    }
    return {
        kind: ThreadPoolExecutor(max_workers=n, thread_name_prefix=f"rpc-{kind.value}")
        for kind, n in sizes.items()
    }


class QuotaInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Route, admit and watch every call (see the module docstring).

    Args:
        quotas: the per-peer and server-wide counters.
        pools: a handler pool per class (``make_pools``).
        on_refused: told ``(peer, reason, count)`` at most once per peer per 10 s while
            that peer's calls are being refused (e.g. to write an audit entry).
        clock: monotonic seconds.
        metrics: where refusals and message bytes are counted (default: a registry of its
            own, read by nobody).
        count_bytes: count every message's size (protobuf serializes a message to size it,
            ~0.1 ms per MiB); off where no metrics endpoint would show the counts.
    """

    def __init__(
        self,
        quotas: Quotas,
        pools: dict[CallClass, ThreadPoolExecutor],
        *,
        on_refused: Callable[[str, str, int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        metrics: AggregatorMetrics | None = None,
        count_bytes: bool = True,
    ) -> None:
        self.quotas, self.pools = quotas, pools
        self._size = _size if count_bytes else _no_size
        self.metrics = metrics if metrics is not None else AggregatorMetrics()
        self._on_refused, self._clock = on_refused, clock
        self._lock = threading.Lock()
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._streams: set[Ticket] = set()
        self._refused: dict[str, tuple[float, int]] = {}
        self._stop = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="rpc-idle", daemon=True)
        self._watchdog.start()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """The method's handler, wrapped once and cached (this runs on gRPC's poll thread)."""
        method = details.method
        with self._lock:
            cached = self._handlers.get(method)
        if cached is not None:
            return cached
        handler = continuation(details)
        if handler is None:
            return None
        wrapped = self._wrap(handler, method)
        with self._lock:
            self._handlers[method] = wrapped
        return wrapped

    def stop(self) -> None:
        """Stop the watchdog and the pools (after the server stopped)."""
        self._stop.set()
        for pool in self.pools.values():
            pool.shutdown(wait=False, cancel_futures=True)

    # ----- wrapping -----

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        kind = classify(method)
        pool = self.pools[kind]
        req_stream, resp_stream = handler.request_streaming, handler.response_streaming
        if req_stream and resp_stream:
            fn, make = (
                self._stream_stream(handler.stream_stream, kind, method),
                grpc.stream_stream_rpc_method_handler,
            )
        elif req_stream:
            fn, make = (
                self._stream_unary(handler.stream_unary, kind, method),
                grpc.stream_unary_rpc_method_handler,
            )
        elif resp_stream:
            fn, make = (
                self._unary_stream(handler.unary_stream, kind, method),
                grpc.unary_stream_rpc_method_handler,
            )
        else:
            fn, make = (
                self._unary_unary(handler.unary_unary, kind, method),
                grpc.unary_unary_rpc_method_handler,
            )
        fn.experimental_thread_pool = pool  # type: ignore[attr-defined]
        return make(
            fn,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _unary_unary(self, behavior: Behavior, kind: CallClass, method: str) -> Behavior:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            ticket = self._admit(context, kind)
            try:
                self.metrics.received(method, self._size(request))
                response = behavior(request, context)
                self.metrics.sent(method, self._size(response))
                return response
            finally:
                self.quotas.release(ticket)

        return run

    def _stream_unary(self, behavior: Behavior, kind: CallClass, method: str) -> Behavior:
        def run(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            ticket = self._admit(context, kind)
            try:
                with self._watched(ticket):
                    response = behavior(self._reading(requests, ticket, method), context)
                    self.metrics.sent(method, self._size(response))
                    return response
            finally:
                self.quotas.release(ticket)

        return run

    def _unary_stream(self, behavior: Behavior, kind: CallClass, method: str) -> Behavior:
        def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            ticket = self._admit(context, kind)
            try:
                self.metrics.received(method, self._size(request))
                with self._watched(ticket):
                    yield from self._writing(behavior(request, context), ticket, method)
            finally:
                self.quotas.release(ticket)

        return run

    def _stream_stream(self, behavior: Behavior, kind: CallClass, method: str) -> Behavior:
        def run(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            ticket = self._admit(context, kind)
            try:
                with self._watched(ticket):
                    responses = behavior(self._reading(requests, ticket, method), context)
                    yield from self._writing(responses, ticket, method)
            finally:
                self.quotas.release(ticket)

        return run

    def _reading(self, requests: Iterator[Any], ticket: Ticket, method: str) -> Iterator[Any]:
        """The request stream, marking the time spent waiting for the peer's next message."""
        while True:
            ticket.waiting_since = self._clock()
            try:
                message = next(requests)
            except StopIteration:
                return
            finally:
                ticket.waiting_since = None
            self.metrics.received(method, self._size(message))
            yield message

    def _writing(self, responses: Iterator[Any], ticket: Ticket, method: str) -> Iterator[Any]:
        """The response stream, marking the time until gRPC asks for the next message.

        gRPC asks for the next response only once the last one was sent, so a peer that
        stops reading leaves ``waiting_since`` set until the watchdog cancels the call.
        """
        for message in responses:
            self.metrics.sent(method, self._size(message))
            ticket.waiting_since = self._clock()
            yield message
            ticket.waiting_since = None

    # ----- quotas -----

    def _admit(self, context: grpc.ServicerContext, kind: CallClass) -> Ticket:
        peer = _identity(context)
        try:
            return self.quotas.admit(peer, kind, cancel=context.cancel)
        except ConfideError as exc:
            self._note_refusal(peer, exc)
            context.abort(status_for(exc), exc.reason.value)
            raise AssertionError("unreachable: context.abort raises") from exc  # pragma: no cover

    def _note_refusal(self, peer: str, exc: ConfideError) -> None:
        now = self._clock()
        with self._lock:
            since, count = self._refused.get(peer, (-_REPORT_EVERY_S, 0))
            count += 1
            due = now - since >= _REPORT_EVERY_S
            self._refused[peer] = (now, 0) if due else (since, count)
        self.metrics.refused("call_refused", exc.reason)
        log.debug("call_refused", site=peer, reason=exc.reason.value, error=str(exc))
        if due:
            log.warning("peer_throttled", site=peer, reason=exc.reason.value, refused=count)
            if self._on_refused is not None:
                try:
                    self._on_refused(peer, exc.reason.value, count)
                except Exception as audit_exc:  # the refusal must still reach the peer
                    log.error("audit_failed", error=repr(audit_exc))

    # ----- idle streams -----

    @contextmanager
    def _watched(self, ticket: Ticket) -> Iterator[None]:
        """Let the watchdog see ``ticket`` while the stream runs."""
        with self._lock:
            self._streams.add(ticket)
        try:
            yield
        finally:
            with self._lock:
                self._streams.discard(ticket)

    def _watch(self) -> None:
        idle = self.quotas.limits.stream_idle_s
        while not self._stop.wait(min(1.0, idle / 4)):
            now = self._clock()
            with self._lock:
                stale = [
                    t
                    for t in self._streams
                    if t.waiting_since is not None and now - t.waiting_since > idle
                ]
                self._streams.difference_update(stale)
            for t in stale:
                log.warning("stream_idle_cancelled", site=t.peer, kind=t.kind.value, idle_s=idle)
                try:
                    t.cancel()
                except Exception as exc:  # the call may be ending on its own
                    log.info("stream_cancel_failed", error=repr(exc))
                idle_error = PeerError(
                    f"its {t.kind.value} stream waited on it over {idle} s",
                    reason=Reason.PEER_LIMIT,
                )
                self._note_refusal(t.peer, idle_error)


def _no_size(message: Any) -> int:
    """0: sizes are not counted."""
    return 0


def _size(message: Any) -> int:
    """A message's serialized size in bytes (protobuf's ``ByteSize``; 0 for anything else)."""
    size = getattr(message, "ByteSize", None)
    return int(size()) if callable(size) else 0


def _identity(context: grpc.ServicerContext) -> str:
    """The caller's certificate name (gRPC verified the chain during the TLS handshake)."""
    names = context.auth_context().get("x509_common_name") or []
    return names[0].decode("utf-8", "replace") if names else _ANONYMOUS
