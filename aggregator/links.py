"""The site-connection side of the coordinator: task streams opening and closing, as round events.

A site that opens its OpenTasks stream becomes eligible for every active job on its
datasets (``SiteConnected``); a stream that ends, is replaced, times out or whose certificate
is refused makes it ineligible (``SiteDisconnected``). Every method runs under the
coordinator's lock and notifies its condition, so the timer sees new site timeouts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace

import structlog

from aggregator import rounds as r
from aggregator.admission import Declared
from aggregator.failures import clean_problems
from aggregator.jobs import Job
from aggregator.sites import SiteConn, SiteRegistry
from aggregator.store import AuditNote, SiteRow, Store
from confide.errors import PeerError, Reason, Unauthorized
from confide.pki import BadCertificate
from confide.v1 import federation_pb2

__all__ = ["SiteLinks"]

log = structlog.get_logger("aggregator.coordinator")


class SiteLinks:
    """Connects and disconnects sites' task streams and feeds each change to the active jobs.

    Args:
        store: persistence (site rows, heartbeats, audit).
        sites: the connected sites' task queues (shared with the executor).
        jobs: the coordinator's active jobs.
        cond: the coordinator's lock; notified when a site's timeout moves.
        feed: feeds an event into a job's state machine (``Coordinator._feed``).
        clock: unix seconds.
    """

    def __init__(
        self,
        store: Store,
        sites: SiteRegistry,
        jobs: dict[str, Job],
        cond: threading.Condition,
        *,
        feed: Callable[[str, r.Event], None],
        clock: Callable[[], float],
    ) -> None:
        self.store, self.sites, self.jobs, self.cond = store, sites, jobs, cond
        self.feed, self.clock = feed, clock

    def register(self, site: str, req: federation_pb2.RegisterRequest) -> None:
        """Record a site's registration (datasets, device, datasets it found unusable).

        Raises:
            Unauthorized: another agent holds the site's identity (IDENTITY_IN_USE).
        """
        now = self.clock()
        sizes = {d.name: (int(d.train_records), int(d.holdout_records)) for d in req.dataset_sizes}
        names = ",".join(req.datasets)
        detail = f"{len(req.datasets)} datasets: {names[:200]}"
        detail += "..." if len(names) > 200 else ""
        unusable = clean_problems(req.unusable)
        with self.cond:
            self._check_holder(site, req.instance)
            self.sites.set_unusable(site, unusable)
        for p in unusable:
            log.warning("site_dataset_unusable", site=site, dataset=p.dataset, reason=p.reason)
        self.store.upsert_site(
            SiteRow(
                id=site,
                datasets=list(req.datasets),
                device=req.device,
                agent_version=req.agent_version,
                last_heartbeat=now,
                sizes=sizes,
            ),
            audit=AuditNote(event="site_registered", actor=site, at=now, detail=detail),
        )

    def declared(self, site: str, dataset: str) -> Declared | None:
        """The record counts ``site`` declared for ``dataset`` at register (None: none)."""
        row = self.store.site(site)
        sizes = row.sizes.get(dataset) if row is not None else None
        return Declared(*sizes) if sizes is not None else None

    def open_stream(self, site: str, *, cert_pem: bytes = b"", instance: str = "") -> SiteConn:
        """Connect ``site``: its queue receives its tasks from now on.

        Args:
            cert_pem: the certificate the site opened the stream with (see ``drop_invalid``).
            instance: the agent process's instance id (a reconnect of the same agent
                replaces its stream; another agent's is refused while this one is open).

        Raises:
            PeerError: the site never registered (reason UNKNOWN_SITE).
            Unauthorized: another agent holds the site's identity (IDENTITY_IN_USE).
        """
        row = self.store.site(site)
        if row is None:
            raise PeerError(f"{site!r} must Register first", reason=Reason.UNKNOWN_SITE)
        with self.cond:
            self._check_holder(site, instance)
            old = self.sites.get(site)
            conn = self.sites.connect(
                site,
                frozenset(row.datasets),
                now=self.clock(),
                cert_pem=cert_pem,
                instance=instance,
            )
            for job_id, job in list(self.jobs.items()):
                if old is not None:
                    self.feed(job_id, r.SiteDisconnected(site))
                if job.spec.dataset.name in conn.datasets:
                    self.feed(job_id, r.SiteConnected(site))
            self.cond.notify_all()
        return conn

    def _check_holder(self, site: str, instance: str) -> None:
        """Refuse a second agent process presenting ``site``'s identity while one is connected.

        Without this, two agents with one certificate replace each other's stream about twice
        a second, each reconnecting at once, and neither ever finishes a round.

        Raises:
            Unauthorized: IDENTITY_IN_USE.
        """
        conn = self.sites.get(site)
        if conn is None or not conn.instance or not instance or conn.instance == instance:
            return
        raise Unauthorized(
            f"another agent is connected as {site!r} (heard from "
            f"{max(0.0, self.clock() - conn.last_seen):.0f} s ago); a second agent with the "
            "same identity is refused until that connection ends",
            reason=Reason.IDENTITY_IN_USE,
        )

    def close_stream(self, conn: SiteConn) -> None:
        """The site's stream ended (or was replaced): it is no longer eligible."""
        with self.cond:
            if self.sites.disconnect(conn.site, conn.conn_id) is None:
                return
            log.info("site_disconnected", site=conn.site)
            for job_id in list(self.jobs):
                self.feed(job_id, r.SiteDisconnected(conn.site))
        self.store.set_heartbeat(conn.site, conn.last_seen)

    def drop_invalid(self, check: Callable[[bytes], None], *, site: str | None = None) -> None:
        """End the task stream of every site (or just ``site``) whose certificate is refused.

        Args:
            check: raises ``BadCertificate`` for a certificate no longer valid (revoked by
                a reloaded CRL, or expired).
            site: check only this site's stream (on its heartbeat); None: every stream.
        """
        with self.cond:
            conns = [c for c in self.sites.all() if c.cert_pem and site in (None, c.site)]
        for conn in conns:
            try:
                check(conn.cert_pem)
            except BadCertificate as exc:
                log.warning("site_certificate_invalid", site=conn.site, error=str(exc))
                self.store.audit(
                    AuditNote(
                        event="site_stream_closed",
                        actor=conn.site,
                        at=self.clock(),
                        reason=exc.reason.value,
                        detail=str(exc),
                    )
                )
                self.close_stream(conn)

    def heartbeat(self, site: str, hb: federation_pb2.Heartbeat) -> None:
        """Note that the site is alive (and what it is doing)."""
        with self.cond:
            conn = self.sites.get(site)
            if conn is not None:
                conn.last_seen = self.clock()
                conn.current_task = hb.current_task
                conn.resources = hb.resources
                self.cond.notify_all()

    def connected(self) -> dict[str, SiteConn]:
        """A snapshot of every connected site's stream (copies, safe to read)."""
        with self.cond:
            return {c.site: replace(c) for c in self.sites.all()}
