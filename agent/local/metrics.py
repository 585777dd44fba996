"""The site daemon's Prometheus metrics: its own registry, task events, scrape-time reads.

Events are counted where the daemon already logs them, through ``AgentMetrics``' typed
methods: each task's end by kind, outcome and reason (``TaskRunner.run``, beside its
``task_done``/``task_failed`` lines), each worker start's duration (``WorkerPool``, beside
``worker_started``), each round's training duration (``TaskRunner``, around the worker's
train call). State is read when Prometheus scrapes, from its owner: the connection from the
session, the privacy budget from the ledger under the policy in force (the numbers
``confide-agent budget`` prints), the certificate in force
(``confide.metrics.CertificateCollector``).

Metric names (all prefixed ``confide_agent_``): ``connected``, ``tasks_total{kind,outcome,
reason}``, ``worker_start_seconds`` and ``training_seconds`` (histograms),
``epsilon_spent{dataset}``, ``epsilon_remaining{dataset}``, ``certificate_expiry_seconds``,
``certificate_validity``. Labels carry dataset names and reason codes, never data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from agent.privacy.ledger import Budget
from agent.tasks.types import TaskOutcome
from confide.errors import Reason
from confide.metrics import CertificateCollector
from confide.v1 import federation_pb2

__all__ = [
    "NAMESPACE",
    "START_BUCKETS",
    "TRAINING_BUCKETS",
    "AgentMetrics",
    "BudgetCollector",
    "ConnectionCollector",
]

NAMESPACE = "confide_agent"

START_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
"""Worker start-up, seconds: importing torch and loading the data takes a few seconds on a
CPU, longer with CUDA's first initialisation or a large dataset."""

TRAINING_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
"""One round's local training, seconds: from a tabular model's fraction of a second up to
the default task timeout of an hour."""

_KIND_PREFIX = "TASK_KIND_"


class AgentMetrics:
    """The site daemon's registry and the counters its task path increments.

    One per daemon (tests build several in one process: each has its own registry).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._tasks = Counter(
            f"{NAMESPACE}_tasks",
            "Tasks answered, by kind, outcome (ok, failed, refused) and reason ('' when ok).",
            ["kind", "outcome", "reason"],
            registry=self.registry,
        )
        self._starts = Histogram(
            f"{NAMESPACE}_worker_start_seconds",
            "Seconds a job's worker process took to start (sandbox, runtime, data).",
            buckets=START_BUCKETS,
            registry=self.registry,
        )
        self._training = Histogram(
            f"{NAMESPACE}_training_seconds",
            "Seconds one round's local training took in the worker (successful rounds).",
            buckets=TRAINING_BUCKETS,
            registry=self.registry,
        )

    # ----- events -----

    def task_ended(self, kind: int, outcome: TaskOutcome, reason: Reason | None = None) -> None:
        """Count one answered task.

        Args:
            kind: its ``federation_pb2.TaskKind`` value.
            outcome: how it ended.
            reason: why it failed or was refused; None when it succeeded.
        """
        self._tasks.labels(
            kind=_kind_label(kind),
            outcome=outcome.value,
            reason=reason.value if reason is not None else "",
        ).inc()

    def worker_started(self, seconds: float) -> None:
        """Record how long a worker took to start."""
        self._starts.observe(seconds)

    def trained(self, seconds: float) -> None:
        """Record how long one round's training took."""
        self._training.observe(seconds)

    # ----- state -----

    def watch(
        self,
        *,
        connected: Callable[[], bool],
        budgets: Callable[[], Iterable[Budget]],
        certificate: Callable[[], bytes],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Read the state figures from their owners at each scrape.

        Args:
            connected: whether the task stream to the aggregator is open (the session).
            budgets: each dataset's budget line (the ledger, under the policy in force).
            certificate: the PEM of the certificate the site presents now.
            clock: unix seconds (certificate expiry).
        """
        self.registry.register(ConnectionCollector(connected))
        self.registry.register(BudgetCollector(budgets))
        self.registry.register(CertificateCollector(NAMESPACE, certificate, clock=clock))


def _kind_label(kind: int) -> str:
    """``TASK_KIND_TRAIN`` -> ``train``; an unknown number as itself."""
    try:
        name = federation_pb2.TaskKind.Name(kind)
    except ValueError:
        return str(kind)
    return name.removeprefix(_KIND_PREFIX).lower()


class ConnectionCollector:
    """``confide_agent_connected``: 1 while the task stream to the aggregator is open.

    Args:
        connected: asks the session.
    """

    def __init__(self, connected: Callable[[], bool]) -> None:
        self._connected = connected

    def describe(self) -> Iterator[Metric]:
        """The metric's name, for the registry's duplicate check (no samples)."""
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        """Yield the connection state now."""
        family = self._family()
        family.add_metric([], 1.0 if self._connected() else 0.0)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            f"{NAMESPACE}_connected", "1 while the task stream to the aggregator is open."
        )


class BudgetCollector:
    """Record-level ε spent and remaining per dataset, as ``confide-agent budget`` shows them.

    Spent is the ledger's composition of every charged round (``confide.dp.budget``);
    remaining is the dataset's cap in the policy in force minus that, at least 0 (+Inf for a
    dataset whose cap is inf).

    Args:
        budgets: asks the ledger for each dataset's line.
    """

    def __init__(self, budgets: Callable[[], Iterable[Budget]]) -> None:
        self._budgets = budgets

    def describe(self) -> Iterator[Metric]:
        """The metrics' names, for the registry's duplicate check (no samples)."""
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        """Yield each dataset's figures now."""
        spent, remaining = self._families()
        for b in self._budgets():
            spent.add_metric([b.dataset], b.spent_epsilon)
            remaining.add_metric([b.dataset], b.remaining_epsilon)
        yield spent
        yield remaining

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                f"{NAMESPACE}_epsilon_spent",
                "Record-level epsilon spent on the dataset, over every job.",
                labels=["dataset"],
            ),
            GaugeMetricFamily(
                f"{NAMESPACE}_epsilon_remaining",
                "Record-level epsilon the dataset may still spend under its policy cap.",
                labels=["dataset"],
            ),
        )
