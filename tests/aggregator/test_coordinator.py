"""The round engine in-process (no gRPC): one flat loop, its timer, and failures kept to one job."""

from __future__ import annotations

import inspect
import queue
import time

import numpy as np
import pytest
from structlog.testing import capture_logs

from aggregator import rounds as r
from aggregator.coordinator import Coordinator
from aggregator.store import AuditNote, JobRow, ModelRow
from aggregator.store.blobs import FileBlobStore
from aggregator.store.sqlite import SqliteStore
from aggregator.timer import DeadlineTimer
from confide.models import initial_weights
from confide.v1 import common_pb2, federation_pb2
from tests.aggregator.fakes import tiny_spec
from tests.support.wait import wait_for


@pytest.fixture
def coord(tmp_path):
    store = SqliteStore(tmp_path / "a.db")
    blobs = FileBlobStore(tmp_path / "blobs")
    c = Coordinator(store, blobs, site_timeout_s=60.0, max_retries=0)
    c.start()
    yield c
    c.stop()
    store.close()


def _connect(coord: Coordinator, *sites: str) -> list:
    conns = []
    for s in sites:
        coord.register(s, federation_pb2.RegisterRequest(datasets=["tab"], device="cpu"))
        conns.append(coord.open_stream(s))
    return conns


def _submit(coord: Coordinator, job_id: str, spec: common_pb2.JobSpec) -> None:
    sha, _ = coord.blobs.put(initial_weights(spec.model, spec.dataset, seed=1))
    coord.store.add_job(
        JobRow(
            id=job_id,
            spec=spec.SerializeToString(),
            signed_job=b"",
            signer_cert=b"",
            state="running",
            error="",
            submitted_by="alice",
            created=time.time(),
        ),
        ModelRow(job=job_id, version_no=0, sha256=sha, optimizer_state="", created=time.time()),
        audit=AuditNote(event="job_submitted", actor="alice", at=time.time(), job=job_id),
    )
    coord.add_job(job_id, spec, common_pb2.Envelope(), b"", model_version=sha)


def _update(coord: Coordinator, site: str, task: federation_pb2.Task) -> None:
    zeros = [(n, np.zeros(s, dtype=np.float32)) for n, s in coord.upload_target(task.job_id).shapes]
    header = federation_pb2.UpdateHeader(task_id=task.task_id, num_samples=10)
    coord.accept_update(site, task.job_id, task.round, header, zeros)


def _broken_disk(*args, **kwargs):
    raise RuntimeError("disk on fire")


def _tasks(conn) -> list[federation_pb2.Task]:
    out = []
    while not conn.queue.empty():
        t = conn.queue.get()
        if t is not None:
            out.append(t)
    return out


def _wait_state(coord: Coordinator, job_id: str, state: str) -> None:
    wait_for(
        lambda: getattr(coord.store.job(job_id), "state", None),
        until=lambda s: s == state,
        timeout=30,
        what=f"job {job_id} to become {state}",
    )


def test_an_action_error_fails_the_job_not_the_rpc(coord, monkeypatch):
    """An unexpected error while aggregating fails the job (internal, audited), not the caller."""
    c1, c2 = _connect(coord, "site-1", "site-2")
    _submit(coord, "j1", tiny_spec())
    t1, t2 = c1.queue.get(), c2.queue.get()
    monkeypatch.setattr(coord.store, "complete_round", _broken_disk)
    with capture_logs() as logs:
        _update(coord, "site-1", t1)
        _update(coord, "site-2", t2)  # the round aggregates here and the store raises
    row = coord.store.job("j1")
    assert row is not None and row.state == "failed" and "disk on fire" in row.error
    last = coord.store.audit_entries()[-1]
    assert (last.event, last.reason) == ("job_failed", "internal")
    assert coord.live_state("j1") is None
    assert coord.store.rounds("j1")[0].state == "failed"
    assert any(e["event"] == "job_action_failed" and e.get("exc_info") for e in logs)
    for conn in (c1, c2):
        assert [t.kind for t in _tasks(conn)] == [federation_pb2.TASK_KIND_JOB_DONE]


def test_an_error_on_the_timer_thread_fails_the_job_and_the_timer_goes_on(coord, monkeypatch):
    """A deadline whose action raises fails that job; later deadlines of other jobs still fire."""
    c1, _c2 = _connect(coord, "site-1", "site-2")
    _submit(coord, "j1", tiny_spec(min_sites=1, round_timeout_s=0.3))
    t1 = c1.queue.get()
    _update(coord, "site-1", t1)  # site-2 never answers: the deadline aggregates
    monkeypatch.setattr(coord.store, "complete_round", _broken_disk)
    _wait_state(coord, "j1", "failed")
    monkeypatch.undo()
    _submit(coord, "j2", tiny_spec(min_sites=1, round_timeout_s=0.3))
    _wait_state(coord, "j2", "failed")  # no update at its deadline, no retries left
    assert coord._timer.is_alive()
    assert "fewer than" in coord.store.job("j2").error


def test_cancel_ends_the_open_round_row(coord):
    """Cancelling a job mid-round leaves its round row cancelled, not collecting."""
    _connect(coord, "site-1", "site-2")
    _submit(coord, "j1", tiny_spec())
    assert coord.store.rounds("j1")[0].state == "collecting"
    assert coord.cancel("j1")
    assert coord.store.job("j1").state == "cancelled"
    assert coord.store.rounds("j1")[0].state == "cancelled"


def test_actions_return_events_and_never_reenter_the_loop(coord, monkeypatch):
    """A round's follow-up event (ModelStored) is advanced by the same flat loop, not from inside
    the action that produced it: at the same stack depth as the update that led to it."""
    depths: list[tuple[str, int]] = []
    advance = r.advance

    def tracked(state, event, *, now):
        depths.append((type(event).__name__, len(inspect.stack(0))))
        return advance(state, event, now=now)

    monkeypatch.setattr(r, "advance", tracked)
    c1, c2 = _connect(coord, "site-1", "site-2")
    _submit(coord, "j1", tiny_spec())
    _update(coord, "site-1", c1.queue.get())
    depths.clear()
    _update(coord, "site-2", c2.queue.get())  # aggregates; round 2 starts from ModelStored
    assert [name for name, _ in depths] == ["UpdateReceived", "ModelStored"]
    assert depths[0][1] == depths[1][1]
    assert coord.live_state("j1").round == 2
    assert [t.round for t in _tasks(c1)] == [2]


def test_the_engine_tells_the_timer_its_next_deadline_and_fires_what_is_due(tmp_path):
    """``next_deadline`` is the earliest round deadline or site timeout; ``fire_due`` acts on it."""
    now = [1000.0]
    store = SqliteStore(tmp_path / "a.db")
    engine = Coordinator(
        store,
        FileBlobStore(tmp_path / "blobs"),
        site_timeout_s=60.0,
        max_retries=0,
        clock=lambda: now[0],
    )  # not started: this test is the timer
    try:
        assert engine.next_deadline() is None
        _connect(engine, "site-1", "site-2")
        assert engine.next_deadline() == 1060.0  # the sites' timeout
        _submit(engine, "j1", tiny_spec(round_timeout_s=30.0))
        assert engine.next_deadline() == 1030.0  # the round's deadline
        now[0] = 1029.9
        engine.fire_due()
        assert engine.live_state("j1").phase is r.RoundPhase.COLLECTING
        now[0] = 1030.0
        engine.fire_due()  # no update by the deadline, no retries: the job fails
        assert store.job("j1").state == "failed"
        assert engine.next_deadline() == 1060.0
        now[0] = 1060.0
        engine.fire_due()
        assert engine.connected() == {}
        assert engine.next_deadline() is None
    finally:
        engine.stop()
        store.close()


def test_a_poke_makes_the_timer_ask_again_before_its_deadline():
    """The timer sleeps without a deadline until poked, then fires and asks again; stop ends it."""
    turns: queue.SimpleQueue[str] = queue.SimpleQueue()
    timer = DeadlineTimer(
        fire=lambda: turns.put("fire"), next_deadline=lambda: None, clock=time.time
    )
    timer.start()
    try:
        assert turns.get(timeout=5) == "fire"
        with pytest.raises(queue.Empty):
            turns.get(timeout=0.2)  # no deadline: it sleeps
        timer.poke()
        assert turns.get(timeout=5) == "fire"
    finally:
        timer.stop()
    assert not timer.is_alive()
