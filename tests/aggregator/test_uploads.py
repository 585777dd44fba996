"""Upload slots: allocated only when held, cut off when their phase closes."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from aggregator import servicer
from aggregator.server import build
from confide.v1 import federation_pb2
from tests.aggregator.conftest import make_config
from tests.aggregator.fakes import ACK, FakeSite, Operator, delta_like, tiny_spec
from tests.support.wait import wait_for


class _HeldClock:
    """The aggregator's clock, held still until the test lets it run: a round's deadline then
    comes when the test has put its uploads in place, however slowly the machine got there."""

    def __init__(self) -> None:
        self.at = time.time()
        self._since: float | None = None

    def __call__(self) -> float:
        return self.at if self._since is None else self.at + time.monotonic() - self._since

    def run(self) -> None:
        self._since = time.monotonic()


def test_a_stalled_upload_is_cut_off_at_its_deadline_and_frees_its_slot(pki, tmp_path, monkeypatch):
    """With one slot, a stalled upload holds it only until the round's deadline, then frees it."""
    made: list[int] = []
    real = servicer.BlobAssembler

    def counting(*args, **kwargs):
        made.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(servicer, "BlobAssembler", counting)
    clock = _HeldClock()
    start = clock.at
    agg, port = build(make_config(pki, tmp_path / "state", max_concurrent_uploads=1), clock=clock)
    op, s1, s2 = (
        Operator(pki, "alice", port),
        FakeSite(pki, "site-1", port),
        FakeSite(pki, "site-2", port),
    )
    release = threading.Event()
    try:
        s1.connect()
        s2.connect()
        job = op.submit(tiny_spec(round_timeout_s=2.0))
        t1 = s1.next_task(federation_pb2.TASK_KIND_TRAIN)
        t2 = s2.next_task(federation_pb2.TASK_KIND_TRAIN)
        model = s1.download(job, t1.model_version)
        header = s1.upload_parts(t1, delta_like(model, 0.1))[0]

        def stalled():
            yield header
            release.wait(30)

        stuck = s1.fed.Upload.future(stalled(), timeout=30)
        # The two uploads race for the slot: let the stalled one hold it (for the 2 s it had
        # left of the held clock's round; its watchdog counts real seconds from here).
        wait_for(lambda: len(made), timeout=30, what="the stalled upload to hold the slot")
        t0 = time.monotonic()
        # 0.1 s of the round left: the next upload's wait for a slot ends long before the
        # stalled one's watchdog frees it (and the round stays open: the clock is held).
        clock.at = start + 1.9
        waiting = s2.fed.Upload.future(iter(s2.upload_parts(t2, delta_like(model, 0.1))))
        with pytest.raises(grpc.RpcError) as err:
            waiting.result(timeout=10)
        assert err.value.details() == "unavailable"
        assert len(made) == 1  # the waiting upload allocated nothing, waiting or refused
        clock.run()  # the round's deadline passes; the stalled upload is cut off at its own
        with pytest.raises(grpc.RpcError):
            stuck.result(timeout=10)
        assert time.monotonic() - t0 < 6
        # The round failed for too few updates; its retry can use the freed slot.
        r1 = s1.next_task(federation_pb2.TASK_KIND_TRAIN)
        r2 = s2.next_task(federation_pb2.TASK_KIND_TRAIN)
        assert r1.task_id.split("/")[2] == "2"
        assert s1.upload(r1, delta_like(model, 0.1)) == ACK
        assert s2.upload(r2, delta_like(model, 0.1)) == ACK
        events = [e.event for e in agg.store.audit_entries()]
        assert "upload_expired" in events
    finally:
        release.set()
        for c in (s1, s2):
            c.disconnect()
        for c in (op, s1, s2):
            c.close()
        agg.stop(grace=0)
