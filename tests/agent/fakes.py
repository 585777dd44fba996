"""In-memory stand-ins for the aggregator and the worker, so agent tests need no network or torch.

``FakeAggregator`` is the plain-function side: it records what the agent sends and hands
out ``FakeTransport``s (one per connection) implementing ``agent.link.transport.Transport``.
Tests wait on its condition variable (``wait_for``), never on sleeps. ``SessionHarness`` runs
the real outbound session against it in a thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from agent.link.session import Session
from agent.workers.handle import WorkerFailed
from confide.errors import ConfideError, InternalError, Reason
from confide.v1 import common_pb2, federation_pb2
from confide.wire.blob import NamedArrays, iter_chunks
from confide.wire.worker import DpSgdParams, EvalResult, TrainResult, WorkerInfo

_END = object()


class FakeStream:
    """A task stream fed by the test; ``end``/``cancel`` finish it, ``fail`` breaks it."""

    def __init__(self) -> None:
        self._q: queue.Queue[object] = queue.Queue()
        self.cancelled = threading.Event()

    def push(self, task: federation_pb2.Task) -> None:
        self._q.put(task)

    def end(self) -> None:
        self._q.put(_END)

    def fail(self, exc: ConfideError) -> None:
        self._q.put(exc)

    def cancel(self) -> None:
        self.cancelled.set()
        self._q.put(_END)

    def __iter__(self):
        while True:
            item = self._q.get()
            if item is _END:
                return
            if isinstance(item, ConfideError):
                raise item
            yield item


@dataclass
class Upload:
    header: common_pb2.Envelope
    data: bytes


@dataclass
class FakeAggregator:
    """Records the agent's messages; ``fail_connects`` makes that many connects raise."""

    models: dict[tuple[str, str], NamedArrays] = field(default_factory=dict)
    bundles: dict[str, bytes] = field(default_factory=dict)  # a job's code archive, as served
    bundle_downloads: int = 0
    fail_connects: int = 0
    heartbeat_interval_s: float = 3600.0
    registers: list[common_pb2.Envelope] = field(default_factory=list)
    heartbeats: list[common_pb2.Envelope] = field(default_factory=list)
    uploads: list[Upload] = field(default_factory=list)
    reports: list[common_pb2.Envelope] = field(default_factory=list)
    streams: list[FakeStream] = field(default_factory=list)
    connects: int = 0
    cond: threading.Condition = field(default_factory=threading.Condition)

    def connect(self) -> FakeTransport:
        with self.cond:
            self.connects += 1
            if self.fail_connects > 0:
                self.fail_connects -= 1
                raise InternalError("aggregator unreachable", reason=Reason.UNAVAILABLE)
        return FakeTransport(self)

    def wait_for(self, pred: Callable[[], bool], timeout: float = 10.0) -> None:
        with self.cond:
            if not self.cond.wait_for(pred, timeout=timeout):
                seen = {
                    k: len(getattr(self, k))
                    for k in ("registers", "streams", "heartbeats", "uploads", "reports")
                }
                raise AssertionError(
                    f"condition not reached in {timeout:g}s; the fake aggregator saw {seen}"
                )

    def record(self, items: list, item: object) -> None:
        with self.cond:
            items.append(item)
            self.cond.notify_all()

    @property
    def stream(self) -> FakeStream:
        with self.cond:
            return self.streams[-1]


class FakeTransport:
    """``Transport`` over a ``FakeAggregator``: plain method calls, no network."""

    def __init__(self, agg: FakeAggregator) -> None:
        self.agg = agg
        self.closed = False

    def register(self, envelope):
        self.agg.record(self.agg.registers, envelope)
        return federation_pb2.RegisterReply(
            site_id=envelope.sender, heartbeat_interval_s=self.agg.heartbeat_interval_s
        )

    def heartbeat(self, envelope):
        self.agg.record(self.agg.heartbeats, envelope)

    def open_tasks(self, envelope):
        stream = FakeStream()
        self.agg.record(self.agg.streams, stream)
        return stream

    def download(self, job_id, model_version):
        try:
            return self.agg.models[(job_id, model_version)]
        except KeyError:
            raise ConfideError("no such model", reason=Reason.UNKNOWN_JOB) from None

    def download_bundle(self, job_id):
        self.agg.bundle_downloads += 1
        try:
            return self.agg.bundles[job_id]
        except KeyError:
            raise ConfideError("no such job", reason=Reason.UNKNOWN_JOB) from None

    def upload(self, header, buffers):
        self.agg.record(self.agg.uploads, Upload(header, b"".join(iter_chunks(buffers))))
        return federation_pb2.Ack()

    def report(self, envelope):
        self.agg.record(self.agg.reports, envelope)
        return federation_pb2.Ack()

    def secagg(self, envelope):
        return federation_pb2.Ack()

    def close(self):
        self.closed = True


class SessionHarness:
    """A session running in a thread against the fake aggregator; sleeps are recorded."""

    def __init__(self, runner, aggregator, rng=lambda: 1.0, resources=None, datasets=("tabular",)):
        self.delays: list[float] = []
        self.connection: list[bool] = []
        self.session = Session(
            runner=runner,
            connect=aggregator.connect,
            datasets=datasets,
            device="cpu",
            resources=resources or (lambda: federation_pb2.Resources(cpu_percent=1.0, rss_bytes=1)),
            rng=rng,
            sleep=self.delays.append,
            on_connection=self.connection.append,
        )
        self.thread = threading.Thread(target=self.session.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.session.stop()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()


class FakeWorker:
    """A worker with the ``agent.workers.handle.Worker`` interface and fixed answers."""

    def __init__(self, *, delta_value: float = 0.25, fail: bool = False) -> None:
        self.info = WorkerInfo(pid=1, num_train=10, num_holdout=5, num_features=2, device="cpu")
        self.alive = True
        self.delta_value = delta_value
        self.fail = fail
        self.rounds: list[int] = []
        self.dp: list[DpSgdParams | None] = []
        self.loss_clips: list[float | None] = []

    def init(self, job, *, job_id, dataset, device) -> WorkerInfo:
        self._maybe_fail()
        return self.info

    def evaluate(self, weights: NamedArrays, *, loss_clip: float | None = None) -> EvalResult:
        self._maybe_fail()
        self.loss_clips.append(loss_clip)
        return EvalResult(accuracy=0.8, loss=0.5, num_samples=5)  # 4 of 5 right

    def train(self, weights: NamedArrays, *, dp: DpSgdParams | None, round: int) -> TrainResult:
        self._maybe_fail()
        self.rounds.append(round)
        self.dp.append(dp)
        delta = [(n, np.full_like(a, self.delta_value, dtype=np.float32)) for n, a in weights]
        return TrainResult(delta=delta, num_samples=10, steps=1, metrics={"train_loss": 0.4})

    def stop(self) -> None:
        self.alive = False

    def _maybe_fail(self) -> None:
        if self.fail:
            self.alive = False
            raise WorkerFailed("worker died (test)")


class FakeWorkerFactory:
    """Starts ``FakeWorker``s; ``fail_next`` makes the next started worker crash on use."""

    def __init__(self) -> None:
        self.started: list[FakeWorker] = []
        self.bundles: list = []  # the code folder each worker was started with (None: built-in)
        self.fail_next = False

    def __call__(self, *, job, job_id, dataset, device, timeout, bundle=None) -> FakeWorker:
        self.bundles.append(bundle)
        w = FakeWorker(fail=self.fail_next)
        self.fail_next = False
        self.started.append(w)
        return w
