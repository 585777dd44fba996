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
from tests.aggregator.fakes import FakeSite, Operator, delta_like, tiny_spec


def test_a_stalled_upload_is_cut_off_at_its_deadline_and_frees_its_slot(pki, tmp_path, monkeypatch):
    """With one slot, a stalled upload holds it only until the round's deadline, then frees it."""
    made: list[int] = []
    real = servicer.BlobAssembler

    def counting(*args, **kwargs):
        made.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(servicer, "BlobAssembler", counting)
    agg, port = build(make_config(pki, tmp_path / "state", max_concurrent_uploads=1))
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

        t0 = time.monotonic()
        stuck = s1.fed.Upload.future(stalled(), timeout=30)
        deadline = time.monotonic() + 5
        while not made:  # the two uploads race for the slot: let the stalled one hold it
            assert time.monotonic() < deadline, "the stalled upload never got its slot"
            time.sleep(0.01)
        waiting = s2.fed.Upload.future(iter(s2.upload_parts(t2, delta_like(model, 0.1))))
        time.sleep(0.5)
        assert len(made) == 1  # the waiting upload allocated nothing
        with pytest.raises(grpc.RpcError):
            stuck.result(timeout=10)
        assert time.monotonic() - t0 < 6
        with pytest.raises(grpc.RpcError) as err:
            waiting.result(timeout=10)
        assert err.value.details() == "unavailable"
        # The round failed for too few updates; its retry can use the freed slot.
        r1 = s1.next_task(federation_pb2.TASK_KIND_TRAIN)
        r2 = s2.next_task(federation_pb2.TASK_KIND_TRAIN)
        assert r1.task_id.split("/")[2] == "2"
        assert s1.upload(r1, delta_like(model, 0.1)).accepted
        assert s2.upload(r2, delta_like(model, 0.1)).accepted
        events = [e.event for e in agg.store.audit_entries()]
        assert "upload_expired" in events
    finally:
        release.set()
        for c in (s1, s2):
            c.disconnect()
        for c in (op, s1, s2):
            c.close()
        agg.stop(grace=0)
