"""The coordinator's one timer thread: round deadlines and site timeouts, without polling.

It holds the coordinator's lock except while it waits on the lock's condition until the
earliest round deadline or site timeout; whoever moves one (a round event, a heartbeat, a
new stream) notifies the condition. A due deadline is fed as ``DeadlinePassed``; a site
silent for ``site_timeout_s`` has its stream closed (``SiteDisconnected``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

from aggregator import rounds as r
from aggregator.jobs import Job
from aggregator.sites import SiteConn, SiteRegistry

__all__ = ["DeadlineTimer"]

log = structlog.get_logger("aggregator.coordinator")

_TIMER_RETRY_S = 1.0
"""After an unexpected error in the timer loop, look again this much later (no busy loop)."""


class DeadlineTimer:
    """Fires due round deadlines and site timeouts from its thread (``thread``).

    Args:
        cond: the coordinator's lock (held while firing, waited on in between).
        jobs: the coordinator's active jobs.
        sites: the connected sites' task streams.
        feed: feeds an event into a job's state machine (``Coordinator._feed``).
        fail_job: fails a job whose deadline could not be handled (``Coordinator._fail_job``).
        close_stream: ends a timed-out site's stream (``SiteLinks.close_stream``).
        site_timeout_s: a site silent this long is disconnected.
        clock: unix seconds.
    """

    def __init__(
        self,
        cond: threading.Condition,
        jobs: dict[str, Job],
        sites: SiteRegistry,
        *,
        feed: Callable[[str, r.Event], None],
        fail_job: Callable[..., None],
        close_stream: Callable[[SiteConn], None],
        site_timeout_s: float,
        clock: Callable[[], float],
    ) -> None:
        self.cond, self.jobs, self.sites = cond, jobs, sites
        self.feed, self.fail_job, self.close_stream = feed, fail_job, close_stream
        self.site_timeout_s, self.clock = site_timeout_s, clock
        self.stopping = False
        """Set (under ``cond``, then notified) to end the thread."""
        self.thread = threading.Thread(target=self._run, name="round-timer", daemon=True)

    def _run(self) -> None:
        with self.cond:
            while not self.stopping:
                try:
                    timeout = self._tick()
                except Exception as exc:
                    # The timer must outlive any one failure, or no deadline fires again.
                    log.error("timer_failed", exc_info=exc)
                    timeout = _TIMER_RETRY_S
                self.cond.wait(timeout)

    def _tick(self) -> float | None:
        """Fire due deadlines and site timeouts; returns seconds until the next (None: none)."""
        now = self.clock()
        for job_id in [
            j
            for j, job in self.jobs.items()
            if job.state.deadline is not None and job.state.deadline <= now
        ]:
            job = self.jobs[job_id]
            try:
                self.feed(job_id, r.DeadlinePassed())
            except Exception as exc:
                self.fail_job(job_id, job, exc, action="DeadlinePassed")
        for conn in self.sites.expired(now=now, timeout_s=self.site_timeout_s):
            log.warning("site_timed_out", site=conn.site)
            self.close_stream(conn)
        wake = [j.state.deadline for j in self.jobs.values() if j.state.deadline is not None]
        nxt = self.sites.next_expiry(timeout_s=self.site_timeout_s)
        if nxt is not None:
            wake.append(nxt)
        return max(0.0, min(wake) - self.clock()) if wake else None
