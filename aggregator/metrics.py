"""The aggregator's Prometheus metrics: its own registry, boundary counters, scrape-time reads.

Two kinds of figure, each taken from the part that owns it:

- Events are counted where they are already logged, through ``AggregatorMetrics``' typed
  methods: every refusal by its log event and reason (``Guard`` and the quota interceptor),
  the payload bytes of every call by method (the interceptor sees each message), and the
  sites that dropped out of each SecAgg+ stage (``aggregator.secure.SecureRound``).
- State is read when Prometheus scrapes, by asking its owner through public methods: the
  connected sites (the coordinator), jobs by state and rounds from the store's rows, the
  certificate in force (``confide.metrics.CertificateCollector``).

Rounds come from the store's round rows, folded once each (``_RoundTally``): a done round
stays done, so a running job's done rounds are counted as they complete; a failed or
cancelled round is counted once its job has ended (until then a failed attempt may still be
retried under the same round number). ``round_seconds`` is the completed attempt's time from
its start to its model being stored. Read from the store, these counters carry the
federation's history across restarts instead of starting again at zero.

Metric names (all prefixed ``confide_aggregator_``): ``connected_sites``, ``jobs{state}``,
``rounds_total{state}``, ``round_seconds`` (histogram), ``received_bytes_total{method}``,
``sent_bytes_total{method}``, ``refusals_total{event,reason}`` (uploads refused: event
``update_refused``), ``secagg_dropouts_total{stage}``, ``certificate_expiry_seconds``,
``certificate_validity``. README "Metrics" and docs/metrics.md say how to read them.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from aggregator.store import JobRow, RoundRow, Store
from confide.errors import Reason
from confide.metrics import CertificateCollector
from confide.secagg import ServerStage

__all__ = ["JOB_STATES", "NAMESPACE", "ROUND_BUCKETS", "AggregatorMetrics", "StateCollector"]

NAMESPACE = "confide_aggregator"

JOB_STATES = ("running", "done", "failed", "cancelled")
"""The job states the store records; each is exposed, at 0 when no job is in it."""

ROUND_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
"""Upper bounds (seconds) of the round-duration histogram: a small tabular round takes about
a second, a large model's or a slow site's up to the default one-hour round timeout."""

_ENDED_ROUND = frozenset({"done", "failed", "cancelled"})
_STAGES = tuple(s for s in ServerStage if s not in (ServerStage.DONE, ServerStage.ABORTED))


class AggregatorMetrics:
    """The aggregator's registry and the counters its boundaries increment.

    One per aggregator (tests build several in one process: each has its own registry).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._refusals = Counter(
            f"{NAMESPACE}_refusals",
            "Calls or messages refused, by the log event that records them and its reason "
            "(uploads: event update_refused; quota refusals: event call_refused).",
            ["event", "reason"],
            registry=self.registry,
        )
        self._received = Counter(
            f"{NAMESPACE}_received_bytes",
            "Protobuf payload bytes received, by gRPC method (update chunks dominate).",
            ["method"],
            registry=self.registry,
        )
        self._sent = Counter(
            f"{NAMESPACE}_sent_bytes",
            "Protobuf payload bytes sent, by gRPC method (model downloads dominate).",
            ["method"],
            registry=self.registry,
        )
        self._dropouts = Counter(
            f"{NAMESPACE}_secagg_dropouts",
            "Sites asked for a SecAgg+ stage that did not answer it before it closed, by stage.",
            ["stage"],
            registry=self.registry,
        )
        for stage in _STAGES:
            self._dropouts.labels(stage=stage.value)

    # ----- events -----

    def refused(self, event: str, reason: Reason) -> None:
        """Count one refusal, under the log event that records it (``update_refused``)."""
        self._refusals.labels(event=event, reason=reason.value).inc()

    def received(self, method: str, nbytes: int) -> None:
        """Count ``nbytes`` of a message received by ``method`` (``/pkg.Service/Method``)."""
        self._received.labels(method=method).inc(nbytes)

    def sent(self, method: str, nbytes: int) -> None:
        """Count ``nbytes`` of a message sent by ``method``."""
        self._sent.labels(method=method).inc(nbytes)

    def dropped_out(self, stage: ServerStage, count: int) -> None:
        """Count ``count`` sites that did not answer ``stage`` of a SecAgg+ round."""
        if count > 0:
            self._dropouts.labels(stage=stage.value).inc(count)

    # ----- state -----

    def watch(
        self,
        *,
        store: Store,
        connected: Callable[[], int],
        certificate: Callable[[], bytes],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Read the state figures from their owners at each scrape.

        Args:
            store: the aggregator's store (jobs, rounds).
            connected: how many sites hold a task stream now (the coordinator).
            certificate: the PEM of the certificate the server presents now.
            clock: unix seconds (certificate expiry).
        """
        self.registry.register(StateCollector(store, connected))
        self.registry.register(CertificateCollector(NAMESPACE, certificate, clock=clock))


class StateCollector:
    """Connected sites, jobs by state and rounds, read from their owners at each scrape.

    Args:
        store: the aggregator's store.
        connected: the number of connected sites.
    """

    def __init__(self, store: Store, connected: Callable[[], int]) -> None:
        self._store, self._connected = store, connected
        self._rounds = _RoundTally(store)

    def describe(self) -> Iterator[Metric]:
        """The metrics' names, for the registry's duplicate check (no samples)."""
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        """Yield the figures as they are now."""
        jobs = self._store.jobs()
        sites, by_state, rounds, seconds = self._families()
        sites.add_metric([], self._connected())
        yield sites
        counts = dict.fromkeys(JOB_STATES, 0)
        for job in jobs:
            counts[job.state] = counts.get(job.state, 0) + 1
        for state, n in sorted(counts.items()):
            by_state.add_metric([state], n)
        yield by_state
        ended, hist = self._rounds.update(jobs)
        for state in sorted(_ENDED_ROUND):
            rounds.add_metric([state], ended.get(state, 0))
        yield rounds
        seconds.add_metric([], buckets=hist.buckets(), sum_value=hist.total)
        yield seconds

    @staticmethod
    def _families() -> tuple[
        GaugeMetricFamily, GaugeMetricFamily, CounterMetricFamily, HistogramMetricFamily
    ]:
        return (
            GaugeMetricFamily(f"{NAMESPACE}_connected_sites", "Sites holding a task stream."),
            GaugeMetricFamily(
                f"{NAMESPACE}_jobs", "Jobs in the store, by state.", labels=["state"]
            ),
            CounterMetricFamily(
                f"{NAMESPACE}_rounds",
                "Rounds that ended, by state (failed and cancelled ones once their job ended).",
                labels=["state"],
            ),
            HistogramMetricFamily(
                f"{NAMESPACE}_round_seconds",
                "Completed rounds: seconds from the start of the attempt that completed to its "
                "model being stored.",
            ),
        )


class _Histogram:
    """Observations in fixed buckets, exposed cumulatively (what Prometheus histograms are)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


class _RoundTally:
    """Each ended round of the store folded once: counts by state and completed durations.

    Per job it remembers the last round folded; a job that has ended and whose rounds are all
    folded is never read again, so a scrape reads only the running jobs' new rounds.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()  # scrapes may run on several server threads at once
        self._folded: dict[str, int] = {}
        self._closed: set[str] = set()
        self._ended: dict[str, int] = {}
        self._seconds = _Histogram(ROUND_BUCKETS)

    def update(self, jobs: Sequence[JobRow]) -> tuple[dict[str, int], _Histogram]:
        """Fold the rounds that ended since the last call; the tallies (a copy of the counts
        and the histogram, to read under no lock of the store)."""
        with self._lock:
            for job in jobs:
                if job.id not in self._closed:
                    self._fold(job)
            snapshot = _Histogram(ROUND_BUCKETS)
            snapshot.counts, snapshot.total = list(self._seconds.counts), self._seconds.total
            return dict(self._ended), snapshot

    def _fold(self, job: JobRow) -> None:
        running = job.state == "running"
        last = self._folded.get(job.id, 0)
        for row in self._store.rounds(job.id, after=last):
            if running and row.state != "done":
                break  # a failed attempt may be retried; the open round is not over
            self._count(row)
            last = row.round
        self._folded[job.id] = last
        if not running:
            self._closed.add(job.id)

    def _count(self, row: RoundRow) -> None:
        if row.state not in _ENDED_ROUND:
            return  # a job that ended without closing its round row: nothing to count
        self._ended[row.state] = self._ended.get(row.state, 0) + 1
        if row.state == "done":
            self._seconds.observe(max(0.0, row.finished - row.started))
