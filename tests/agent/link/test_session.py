"""The outbound session: register, serve tasks, heartbeat, reconnect with jittered backoff."""

from __future__ import annotations

import time

import pytest
from structlog.testing import capture_logs

from agent.link.session import Backoff
from confide.errors import InternalError, PeerError, Reason
from confide.v1 import common_pb2, federation_pb2
from confide.wire import Binding, open_envelope
from tests.agent.conftest import DATASET, FEDERATION, signed_task
from tests.agent.fakes import SessionHarness


def test_backoff_sequence_doubles_to_cap_with_injected_rng():
    """With rng = 1 the delays are 0.5, 1, 2, ... capped at 30 s; reset starts over."""
    b = Backoff(lambda: 1.0)
    assert [b.next_delay() for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    b.reset()
    assert b.next_delay() == 0.5


def test_backoff_is_full_jitter():
    """Each delay is the rng draw times the current ceiling (full jitter)."""
    draws = iter([0.0, 0.5, 0.25])
    b = Backoff(lambda: next(draws))
    assert [b.next_delay() for _ in range(3)] == [0.0, 0.5, 0.5]


def test_registers_and_serves_a_train_task(pki, runner, aggregator):
    """The session registers with a signed envelope, opens the stream and uploads an update."""
    with SessionHarness(runner, aggregator) as h:
        aggregator.wait_for(lambda: aggregator.streams)
        reg = aggregator.registers[0]
        req = federation_pb2.RegisterRequest.FromString(
            open_envelope(
                reg,
                verify_key=pki.site.info.signing_public_key,
                now=time.time(),
                expect=Binding(FEDERATION, "site-1", common_pb2.STAGE_REGISTER),
            )
        )
        assert list(req.datasets) == [DATASET] and req.device == "cpu"
        aggregator.stream.push(signed_task(pki.alice))
        aggregator.wait_for(lambda: aggregator.uploads)
        aggregator.wait_for(lambda: h.session.status().tasks_done == 1)
        st = h.session.status()
        assert st.connected and st.site_id == "site-1" and st.current_task == ""
        assert h.connection == [True]
    assert h.connection == [True, False]


def test_failed_task_keeps_session_serving(pki, runner, aggregator, workers):
    """A worker failure is reported FAILED and the next task on the same stream succeeds."""
    with SessionHarness(runner, aggregator) as h:
        aggregator.wait_for(lambda: aggregator.streams)
        workers.fail_next = True
        aggregator.stream.push(signed_task(pki.alice, task_id="a"))
        aggregator.stream.push(signed_task(pki.alice, task_id="b", round=2))
        aggregator.wait_for(lambda: aggregator.uploads and aggregator.reports)
        aggregator.wait_for(lambda: h.session.status().tasks_done == 1)
        st = h.session.status()
        assert (st.tasks_done, st.tasks_failed) == (1, 1)
        assert aggregator.connects == 1


def test_reconnects_after_transport_errors_with_backoff(pki, runner, aggregator):
    """Failed connects back off 0.5, 1, 2 s; after a good register the backoff resets."""
    aggregator.fail_connects = 3
    with SessionHarness(runner, aggregator) as h:
        aggregator.wait_for(lambda: aggregator.streams)
        assert h.delays == [0.5, 1, 2]
        aggregator.stream.fail(InternalError("stream broke", reason=Reason.UNAVAILABLE))
        aggregator.wait_for(lambda: len(aggregator.streams) == 2)
        assert h.delays == [0.5, 1, 2, 0.5]
        aggregator.stream.push(signed_task(pki.alice))
        aggregator.wait_for(lambda: aggregator.uploads)


@pytest.mark.parametrize(
    "refusal",
    [
        InternalError("all task streams are taken", reason=Reason.SERVER_BUSY),
        PeerError("this site holds too many streams", reason=Reason.PEER_LIMIT),
    ],
    ids=["server_busy", "peer_limit"],
)
def test_a_connection_refused_for_capacity_keeps_backing_off(pki, runner, aggregator, refusal):
    """A stream refused server_busy or peer_limit after a good register does not reset the
    backoff (0.5, 1, 2 s): the aggregator asked for later; a lost connection then resets it."""
    with capture_logs() as logs, SessionHarness(runner, aggregator) as h:
        for n in (1, 2, 3):
            aggregator.wait_for(lambda n=n: len(aggregator.streams) == n)
            aggregator.stream.fail(refusal)
        aggregator.wait_for(lambda: len(aggregator.streams) == 4)
        assert h.delays == [0.5, 1, 2] and len(aggregator.registers) == 4
        aggregator.stream.fail(InternalError("stream broke", reason=Reason.UNAVAILABLE))
        aggregator.wait_for(lambda: len(aggregator.streams) == 5)
        assert h.delays == [0.5, 1, 2, 0.5]
    told = [e for e in logs if e["event"] == "disconnected"]
    assert [e["reason"] for e in told[:3]] == [refusal.reason.value] * 3
    assert not any(e["event"] == "session_error" for e in logs)


def test_heartbeats_are_signed_and_carry_resources(pki, runner, aggregator):
    """Heartbeats are signed HEARTBEAT envelopes carrying the resource sample."""
    aggregator.heartbeat_interval_s = 0.05
    with SessionHarness(runner, aggregator):
        aggregator.wait_for(lambda: len(aggregator.heartbeats) >= 2)
    hb = federation_pb2.Heartbeat.FromString(
        open_envelope(
            aggregator.heartbeats[0],
            verify_key=pki.site.info.signing_public_key,
            now=time.time(),
            expect=Binding(FEDERATION, "site-1", common_pb2.STAGE_HEARTBEAT),
        )
    )
    assert hb.resources.cpu_percent == 1.0


def test_heartbeat_bug_is_logged_and_heartbeats_go_on(pki, runner, aggregator):
    """A bug in one heartbeat is logged heartbeat_failed and the next heartbeat still goes out."""
    aggregator.heartbeat_interval_s = 0.05
    calls = []

    def flaky_resources():
        calls.append(None)
        if len(calls) == 1:
            raise RuntimeError("probe bug")
        return federation_pb2.Resources(cpu_percent=2.0)

    with capture_logs() as logs, SessionHarness(runner, aggregator, resources=flaky_resources):
        aggregator.wait_for(lambda: len(aggregator.heartbeats) >= 2)
        assert aggregator.connects == 1
    failed = [e for e in logs if e["event"] == "heartbeat_failed"]
    assert failed and failed[0]["reason"] == "internal" and failed[0]["exc_info"] is True


def test_stop_ends_run_and_stops_workers(pki, runner, aggregator, workers):
    """stop() ends run(), cancels the stream and stops the job's worker."""
    with SessionHarness(runner, aggregator):
        aggregator.wait_for(lambda: aggregator.streams)
        aggregator.stream.push(signed_task(pki.alice))
        aggregator.wait_for(lambda: aggregator.uploads)
        stream = aggregator.stream
    assert stream.cancelled.is_set()
    assert not workers.started[0].alive


@pytest.mark.parametrize("draw", [0.0, 0.999])
def test_backoff_stays_within_ceiling(draw):
    """Full-jitter delays never exceed the ceiling and never go negative."""
    b = Backoff(lambda: draw)
    for _ in range(20):
        assert 0.0 <= b.next_delay() <= 30.0
