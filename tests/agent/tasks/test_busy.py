"""An aggregator out of capacity (server_busy) is asked again later, not held against the task."""

from __future__ import annotations

from structlog.testing import capture_logs

from agent.tasks.runner import TaskOutcome
from confide.errors import ConfideError, InternalError, PeerError, Reason
from tests.agent.conftest import make_runner, report_of, signed_task
from tests.agent.fakes import FakeTransport


class _Refusing(FakeTransport):
    """A transport whose download and upload are refused with ``errors`` first, in order."""

    def __init__(self, agg, *, download=(), upload=()) -> None:
        super().__init__(agg)
        self.left = {"download": list(download), "upload": list(upload)}
        self.tries = {"download": 0, "upload": 0}

    def _refuse(self, what: str) -> None:
        self.tries[what] += 1
        if self.left[what]:
            err: ConfideError = self.left[what].pop(0)
            raise err

    def download(self, job_id, model_version):
        self._refuse("download")
        return super().download(job_id, model_version)

    def upload(self, header, buffers):
        self._refuse("upload")
        return super().upload(header, buffers)


def _busy() -> InternalError:
    return InternalError("aggregator answered UNAVAILABLE", reason=Reason.SERVER_BUSY)


def test_busy_transfers_are_tried_again_and_the_task_succeeds(pki, dataset, aggregator, workers):
    """A download and an upload refused server_busy are tried again; the update goes out once
    and the site reports no failure."""
    runner = make_runner(pki, dataset, workers, rng=lambda: 0.0)
    t = _Refusing(aggregator, download=[_busy(), _busy()], upload=[_busy()])
    with capture_logs() as logs:
        assert runner.run(signed_task(pki.alice), t) is TaskOutcome.OK
    assert t.tries == {"download": 3, "upload": 2}
    assert len(aggregator.uploads) == 1 and not aggregator.reports
    busy = [e["transfer"] for e in logs if e["event"] == "aggregator_busy"]
    assert busy == ["download", "download", "upload"]
    assert not any(e["event"] == "task_failed" for e in logs)


def test_busy_past_the_tasks_deadline_fails_it_server_busy(pki, dataset, aggregator, workers):
    """When the next try would come after the task's deadline, the task fails server_busy."""
    runner = make_runner(pki, dataset, workers, rng=lambda: 1.0)  # first wait 0.5 s
    task = signed_task(pki.alice)
    task.deadline_s = 0.25
    t = _Refusing(aggregator, download=[_busy()] * 5)
    assert runner.run(task, t) is TaskOutcome.FAILED
    assert t.tries["download"] == 1 and not aggregator.uploads
    assert report_of(pki, aggregator.reports[0]).reason == "server_busy"


def test_a_refusal_that_is_not_busy_is_not_tried_again(pki, dataset, aggregator, workers):
    """Over its own quota (peer_limit) the site does not retry inside the task: it fails it."""
    runner = make_runner(pki, dataset, workers, rng=lambda: 0.0)
    own = PeerError("over its quota", reason=Reason.PEER_LIMIT)
    t = _Refusing(aggregator, download=[own])
    assert runner.run(signed_task(pki.alice), t) is TaskOutcome.FAILED
    assert t.tries["download"] == 1
    assert report_of(pki, aggregator.reports[0]).reason == "peer_limit"


def test_shutdown_while_waiting_on_a_busy_aggregator_aborts_the_task(
    pki, dataset, aggregator, workers
):
    """abandon() during a busy wait ends the task round_aborted at once."""
    runner = make_runner(pki, dataset, workers, rng=lambda: 1.0)
    t = _Refusing(aggregator, download=[_busy()] * 5)
    real = t._refuse

    def refuse_then_stop(what: str) -> None:
        runner.abandon()  # as if SIGTERM came during the wait that follows
        real(what)

    t._refuse = refuse_then_stop  # type: ignore[method-assign]
    assert runner.run(signed_task(pki.alice), t) is TaskOutcome.FAILED
    assert t.tries["download"] == 1
    assert report_of(pki, aggregator.reports[0]).reason == "round_aborted"
