"""Per-peer quotas: what one certificate identity may hold of the server at once.

A site with a valid certificate is not trusted to be polite (DESIGN, trust model): it could
open hundreds of streams that never send, or queue thousands of large calls, until no
handler is left for anyone else. ``Quotas`` counts, per identity (the certificate's
name), the calls it has in flight, its model transfers, the update bytes its uploads have
reserved, and the rate at which it starts calls (a token bucket). A call over the peer's own
quota is refused ``PEER_LIMIT`` (the peer's fault); a call that finds the server's shared
capacity taken (transfers, task streams, the update-bytes budget) is refused ``SERVER_BUSY``
(not the peer's fault; retry later). The peer's quota is checked first, so a peer over its
own limit is always told so.

This module only counts; ``aggregator.interceptor`` applies it to every gRPC call and gives
each class of call its own handler pool.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from confide.errors import ConfideError, InternalError, PeerError, Reason

__all__ = ["CallClass", "Limits", "Quotas", "Ticket", "classify"]


class CallClass(enum.Enum):
    """Classes of call, each with its own handler pool and limits."""

    CONTROL = "control"
    """Operator calls and heartbeats: short, and must keep working under any load."""
    CALL = "call"
    """Short federation calls: Register, Report, SecAgg."""
    TRANSFER = "transfer"
    """Model-sized streams: Upload, Download(Bundle), the operator's DownloadModel, UploadBlob."""
    TASKS = "tasks"
    """Long-lived streams: a site's task stream (and health watches)."""


_CLASSES = {
    "/confide.v1.Federation/Heartbeat": CallClass.CONTROL,
    "/confide.v1.Federation/OpenTasks": CallClass.TASKS,
    "/confide.v1.Federation/Upload": CallClass.TRANSFER,
    "/confide.v1.Federation/Download": CallClass.TRANSFER,
    "/confide.v1.Federation/DownloadBundle": CallClass.TRANSFER,
    "/confide.v1.Admin/UploadBlob": CallClass.TRANSFER,
    "/confide.v1.Admin/DownloadModel": CallClass.TRANSFER,
    "/grpc.health.v1.Health/Watch": CallClass.TASKS,
}
_CONTROL_SERVICES = ("/confide.v1.Admin/", "/grpc.health.v1.Health/")


def classify(method: str) -> CallClass:
    """The class of a fully qualified gRPC method name (``/package.Service/Method``)."""
    if method in _CLASSES:
        return _CLASSES[method]
    if method.startswith(_CONTROL_SERVICES):
        return CallClass.CONTROL
    return CallClass.CALL


CONTROL_POOL = 16
"""Handler threads for operator calls and heartbeats (no federation call ever runs there)."""
CALL_POOL = 64
"""Handler threads for short federation calls."""
PEER_CONTROL = 4
"""Control calls one identity may have in flight: a quarter of ``CONTROL_POOL``."""
PEER_TASK_STREAMS = 2
"""Task streams one identity may hold: its stream, and a newer one replacing it."""


@dataclass(frozen=True)
class Limits:
    """What one peer may hold, and what the server holds for all peers together.

    Args:
        peer_calls: calls one identity may have in flight (every class but task streams);
            below ``CALL_POOL``, so one peer never holds every short-call handler.
        peer_transfers: Upload/Download streams one identity may have at once.
        peer_rate: calls per second one identity may start, sustained. An agent makes a
            few per round; an operator's tools poll a few times a second (``LocalFederation``
            20/s at most), so 50/s leaves them room and still bounds a flood.
        peer_burst: calls one identity may start at once before ``peer_rate`` applies.
        peer_bytes_in_flight: update bytes one identity's uploads may hold at once.
        transfers: Upload/Download streams of all peers at once (server capacity).
        task_streams: task streams of all sites at once (server capacity).
        bytes_in_flight: update bytes all uploads may hold at once (server capacity).
        stream_idle_s: how long a stream may wait on its peer (the next upload message, or
            the peer taking the last one sent) before it is cancelled.
    """

    peer_calls: int = 8
    peer_transfers: int = 4
    peer_rate: float = 50.0
    peer_burst: int = 200
    peer_bytes_in_flight: int = 1024**3
    transfers: int = 32
    task_streams: int = 256
    bytes_in_flight: int = 2 * 1024**3
    stream_idle_s: float = 30.0


@dataclass(eq=False)
class Ticket:
    """One admitted call: who, which class, and (for streams) since when it waits on its peer.

    ``waiting_since`` is a monotonic time while the handler waits for the peer (to send the
    next message, or to take the last one); None while the server itself is working.
    """

    peer: str
    kind: CallClass
    cancel: Callable[[], None]
    waiting_since: float | None = None


@dataclass
class _Peer:
    calls: int = 0
    control: int = 0
    transfers: int = 0
    tasks: int = 0
    reserved: int = 0
    tokens: float = 0.0
    stamp: float = 0.0


class Quotas:
    """Counts what each peer holds; admits or refuses calls and update-byte reservations.

    Args:
        limits: the per-peer and server-wide limits.
        clock: monotonic seconds (for the token buckets and the byte-budget wait).
    """

    def __init__(self, limits: Limits, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._cond = threading.Condition()
        self._peers: dict[str, _Peer] = {}
        self._transfers = 0
        self._tasks = 0
        self._reserved = 0

    def admit(self, peer: str, kind: CallClass, *, cancel: Callable[[], None]) -> Ticket:
        """Admit one call of ``kind`` from ``peer``, or refuse it.

        Args:
            peer: the caller's certificate identity.
            kind: the call's class.
            cancel: ends the call (the idle-stream watchdog uses it).

        Raises:
            PeerError: ``PEER_LIMIT`` when the peer is over its own rate or concurrency quota.
            InternalError: ``SERVER_BUSY`` when the server-wide transfers or task streams
                are all taken.
        """
        lim = self.limits
        with self._cond:
            p = self._peers.get(peer)
            if p is None:
                p = self._peers[peer] = _Peer(tokens=float(lim.peer_burst), stamp=self._clock())
            self._refill(p)
            if p.tokens < 1.0:
                raise _peer_limit(f"{peer!r} starts calls faster than {lim.peer_rate}/s")
            if kind is CallClass.TASKS:
                if p.tasks >= PEER_TASK_STREAMS:
                    raise _peer_limit(f"{peer!r} already holds {p.tasks} task streams")
                if self._tasks >= lim.task_streams:
                    raise _busy(f"all {lim.task_streams} task streams are taken")
            else:
                if p.calls >= lim.peer_calls:
                    raise _peer_limit(f"{peer!r} already has {p.calls} calls in flight")
                if kind is CallClass.CONTROL and p.control >= PEER_CONTROL:
                    raise _peer_limit(f"{peer!r} already has {p.control} control calls")
                if kind is CallClass.TRANSFER:
                    if p.transfers >= lim.peer_transfers:
                        raise _peer_limit(f"{peer!r} already has {p.transfers} transfers")
                    if self._transfers >= lim.transfers:
                        raise _busy(f"all {lim.transfers} transfers are taken")
            p.tokens -= 1.0
            if kind is CallClass.TASKS:
                p.tasks += 1
                self._tasks += 1
            else:
                p.calls += 1
                p.control += kind is CallClass.CONTROL
                if kind is CallClass.TRANSFER:
                    p.transfers += 1
                    self._transfers += 1
        return Ticket(peer, kind, cancel)

    def release(self, ticket: Ticket) -> None:
        """Give back what ``ticket`` was admitted with (once, when its call ends)."""
        with self._cond:
            p = self._peers[ticket.peer]
            if ticket.kind is CallClass.TASKS:
                p.tasks -= 1
                self._tasks -= 1
            else:
                p.calls -= 1
                p.control -= ticket.kind is CallClass.CONTROL
                if ticket.kind is CallClass.TRANSFER:
                    p.transfers -= 1
                    self._transfers -= 1
            self._forget_if_idle(ticket.peer, p)

    @contextmanager
    def reserve(self, peer: str, nbytes: int, *, timeout: float) -> Iterator[None]:
        """Hold ``nbytes`` of the update-bytes budget for ``peer`` while the block runs.

        The amount is the job's model size (the server's figure, never the peer's). Buffers
        still grow only as bytes arrive; the reservation bounds what all uploads in flight
        may grow to, so an upload that got one can always finish.

        Args:
            peer: the uploading identity.
            nbytes: bytes to hold.
            timeout: the longest wait for the server-wide budget, seconds.

        Raises:
            PeerError: ``PEER_LIMIT`` when the peer's own uploads would hold more than
                ``peer_bytes_in_flight`` (refused at once).
            InternalError: ``SERVER_BUSY`` when the server-wide budget did not free up in
                ``timeout`` seconds, or can never fit ``nbytes``.
        """
        lim = self.limits
        with self._cond:
            p = self._peers.setdefault(
                peer, _Peer(tokens=float(lim.peer_burst), stamp=self._clock())
            )
            if p.reserved + nbytes > lim.peer_bytes_in_flight:
                raise _peer_limit(
                    f"{peer!r} would hold {p.reserved + nbytes} update bytes in flight"
                )
            if nbytes > lim.bytes_in_flight:
                raise _busy(f"{nbytes} bytes exceed the server's bytes_in_flight")
            p.reserved += nbytes  # counted at once, so a second upload is checked against it
            end = self._clock() + timeout
            while self._reserved + nbytes > lim.bytes_in_flight:
                left = end - self._clock()
                if left <= 0:
                    p.reserved -= nbytes
                    raise _busy("the update-bytes budget stayed full")
                self._cond.wait(left)
            self._reserved += nbytes
        try:
            yield
        finally:
            with self._cond:
                self._reserved -= nbytes
                p.reserved -= nbytes
                self._forget_if_idle(peer, p)
                self._cond.notify_all()

    def tracked(self) -> int:
        """How many peers have an entry (those with calls, bytes, or a bucket not yet full)."""
        with self._cond:
            return len(self._peers)

    def _forget_if_idle(self, peer: str, p: _Peer) -> None:
        """Drop an idle peer whose bucket is full: nothing left to remember (lock held)."""
        self._refill(p)
        if not (p.calls or p.tasks or p.reserved) and p.tokens >= self.limits.peer_burst:
            self._peers.pop(peer, None)

    def _refill(self, p: _Peer) -> None:
        """Add the tokens earned since the bucket was last touched (caller holds the lock)."""
        now = self._clock()
        lim = self.limits
        p.tokens = min(float(lim.peer_burst), p.tokens + (now - p.stamp) * lim.peer_rate)
        p.stamp = now

    def held(self, peer: str) -> tuple[int, int, int]:
        """(calls, transfers, reserved bytes) ``peer`` holds now (for tests and metrics)."""
        with self._cond:
            p = self._peers.get(peer)
            return (0, 0, 0) if p is None else (p.calls, p.transfers, p.reserved)


def _peer_limit(message: str) -> ConfideError:
    return PeerError(message, reason=Reason.PEER_LIMIT)


def _busy(message: str) -> ConfideError:
    return InternalError(message, reason=Reason.SERVER_BUSY)
