"""Connected sites: one task queue per site, consumed by that site's OpenTasks stream.

A site is *connected* while its OpenTasks stream is open; a new stream replaces the old one
(the old queue gets a ``None`` sentinel, which ends its stream). Connection state is in memory
only: after a restart every site reconnects. Not thread-safe on its own; the coordinator calls
it under its lock.
"""

from __future__ import annotations

import itertools
import queue
from dataclasses import dataclass, field

from confide.v1 import federation_pb2

__all__ = ["SiteConn", "SiteProblem", "SiteRegistry"]

SiteProblem = tuple[str, federation_pb2.DatasetProblem]
"""A site's name and one dataset it reported unusable."""


@dataclass
class SiteConn:
    """One open task stream of one site.

    Args:
        site: the site's certificate name.
        conn_id: distinguishes this stream from the site's earlier ones.
        datasets: dataset names the site registered.
        last_seen: unix seconds of the last heartbeat or stream open.
        cert_pem: the certificate the stream was opened with (re-checked on CRL changes).
        instance: the agent process's random instance id ("" from an agent that sends none).
    """

    site: str
    conn_id: int
    datasets: frozenset[str]
    last_seen: float
    queue: queue.SimpleQueue[federation_pb2.Task | None] = field(default_factory=queue.SimpleQueue)
    current_task: str = ""
    resources: federation_pb2.Resources | None = None
    cert_pem: bytes = b""
    instance: str = ""


class SiteRegistry:
    """The open task stream of every connected site, and what each says it cannot expose."""

    def __init__(self) -> None:
        self._conns: dict[str, SiteConn] = {}
        self._ids = itertools.count(1)
        self._unusable: dict[str, tuple[federation_pb2.DatasetProblem, ...]] = {}

    def set_unusable(self, site: str, problems: tuple[federation_pb2.DatasetProblem, ...]) -> None:
        """Record the datasets ``site`` declared unusable at its latest register (bounded)."""
        self._unusable[site] = problems

    def unusable_reports(self, dataset: str | None = None) -> list[SiteProblem]:
        """(site, problem) for every site that reported ``dataset`` (None: any) unusable."""
        return [
            (site, p)
            for site, problems in sorted(self._unusable.items())
            for p in problems
            if dataset is None or p.dataset == dataset
        ]

    def connect(
        self,
        site: str,
        datasets: frozenset[str],
        *,
        now: float,
        cert_pem: bytes = b"",
        instance: str = "",
    ) -> SiteConn:
        """Open a stream for ``site``, ending the one it replaces."""
        old = self._conns.get(site)
        if old is not None:
            old.queue.put(None)
        conn = SiteConn(site, next(self._ids), datasets, now, cert_pem=cert_pem, instance=instance)
        self._conns[site] = conn
        return conn

    def disconnect(self, site: str, conn_id: int) -> SiteConn | None:
        """End ``site``'s stream ``conn_id``; returns it if it was the current one."""
        conn = self._conns.get(site)
        if conn is None or conn.conn_id != conn_id:
            return None
        del self._conns[site]
        conn.queue.put(None)
        return conn

    def get(self, site: str) -> SiteConn | None:
        """The site's current stream, or None when disconnected."""
        return self._conns.get(site)

    def all(self) -> list[SiteConn]:
        """Every current stream."""
        return list(self._conns.values())

    def send(self, site: str, task: federation_pb2.Task) -> bool:
        """Queue a task on the site's stream; False when the site is not connected."""
        conn = self._conns.get(site)
        if conn is None:
            return False
        conn.queue.put(task)
        return True

    def expired(self, *, now: float, timeout_s: float) -> list[SiteConn]:
        """Streams whose site has been silent for ``timeout_s`` or longer."""
        return [c for c in self._conns.values() if now - c.last_seen >= timeout_s]

    def next_expiry(self, *, timeout_s: float) -> float | None:
        """When the next silent site times out, or None without sites."""
        return min((c.last_seen + timeout_s for c in self._conns.values()), default=None)
