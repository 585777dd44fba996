"""Per-peer quotas: each quota on both sides of its limit, and whose fault a refusal is."""

from __future__ import annotations

import threading

import grpc
import pytest

from aggregator.quota import (
    PEER_CONTROL,
    PEER_TASK_STREAMS,
    CallClass,
    Limits,
    Quotas,
    classify,
)
from aggregator.server import build
from confide.errors import ConfideError, InternalError, PeerError, Reason
from confide.v1 import common_pb2
from tests.aggregator.conftest import make_config
from tests.aggregator.fakes import FakeSite
from tests.support.wait import wait_for


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _quotas(**kw) -> tuple[Quotas, Clock]:
    clock = Clock()
    return Quotas(Limits(**kw), clock=clock), clock


def _refused(fn) -> ConfideError:
    with pytest.raises(ConfideError) as err:
        fn()
    return err.value


def _nop() -> None:
    return None


def test_methods_fall_into_their_classes():
    """Operator calls and heartbeats are CONTROL, transfers and task streams have their own."""
    assert classify("/confide.v1.Admin/GetJob") is CallClass.CONTROL
    assert classify("/confide.v1.Federation/Heartbeat") is CallClass.CONTROL
    assert classify("/grpc.health.v1.Health/Check") is CallClass.CONTROL
    assert classify("/confide.v1.Federation/Upload") is CallClass.TRANSFER
    assert classify("/confide.v1.Admin/DownloadModel") is CallClass.TRANSFER
    assert classify("/confide.v1.Federation/OpenTasks") is CallClass.TASKS
    assert classify("/confide.v1.Federation/Report") is CallClass.CALL


def test_rate_is_a_token_bucket_per_peer():
    """A peer may start ``peer_burst`` calls at once, then one per 1/``peer_rate`` seconds."""
    adm, clock = _quotas(peer_rate=2.0, peer_burst=3, peer_calls=10)
    for _ in range(3):
        adm.release(adm.admit("a", CallClass.CALL, cancel=_nop))
    err = _refused(lambda: adm.admit("a", CallClass.CALL, cancel=_nop))
    assert isinstance(err, PeerError) and err.reason is Reason.PEER_LIMIT
    adm.release(adm.admit("b", CallClass.CALL, cancel=_nop))  # another peer's bucket is full
    clock.t = 0.49
    assert _refused(lambda: adm.admit("a", CallClass.CALL, cancel=_nop)).reason is Reason.PEER_LIMIT
    clock.t = 0.5
    adm.release(adm.admit("a", CallClass.CALL, cancel=_nop))


def test_calls_in_flight_per_peer_on_both_sides_of_the_limit():
    """``peer_calls`` calls may be in flight; one more is refused until one ends."""
    adm, _ = _quotas(peer_calls=3)
    held = [adm.admit("a", CallClass.CALL, cancel=_nop) for _ in range(3)]
    assert _refused(lambda: adm.admit("a", CallClass.CALL, cancel=_nop)).reason is Reason.PEER_LIMIT
    adm.release(held.pop())
    held.append(adm.admit("a", CallClass.CALL, cancel=_nop))
    assert adm.held("a")[0] == 3


def test_one_peer_holds_at_most_a_quarter_of_the_control_pool():
    """A peer's control calls stop at PEER_CONTROL, even under its overall call limit."""
    adm, _ = _quotas(peer_calls=PEER_CONTROL + 2)
    for _ in range(PEER_CONTROL):
        adm.admit("a", CallClass.CONTROL, cancel=_nop)
    err = _refused(lambda: adm.admit("a", CallClass.CONTROL, cancel=_nop))
    assert err.reason is Reason.PEER_LIMIT
    adm.admit("a", CallClass.CALL, cancel=_nop)
    adm.admit("alice", CallClass.CONTROL, cancel=_nop)


def test_transfers_refuse_the_peer_first_then_the_server():
    """Over its own transfer quota a peer hears PEER_LIMIT; under it, a full server SERVER_BUSY."""
    adm, _ = _quotas(peer_transfers=2, transfers=3)
    adm.admit("a", CallClass.TRANSFER, cancel=_nop)
    adm.admit("a", CallClass.TRANSFER, cancel=_nop)
    adm.admit("b", CallClass.TRANSFER, cancel=_nop)  # the server's 3 are now taken
    assert (
        _refused(lambda: adm.admit("a", CallClass.TRANSFER, cancel=_nop)).reason
        is Reason.PEER_LIMIT
    )
    err = _refused(lambda: adm.admit("c", CallClass.TRANSFER, cancel=_nop))
    assert isinstance(err, InternalError) and err.reason is Reason.SERVER_BUSY


def test_task_streams_per_peer_and_server_wide():
    """A peer holds at most PEER_TASK_STREAMS task streams; beyond task_streams all are busy."""
    adm, _ = _quotas(task_streams=PEER_TASK_STREAMS + 1)
    for _ in range(PEER_TASK_STREAMS):
        adm.admit("a", CallClass.TASKS, cancel=_nop)
    assert (
        _refused(lambda: adm.admit("a", CallClass.TASKS, cancel=_nop)).reason is Reason.PEER_LIMIT
    )
    adm.admit("b", CallClass.TASKS, cancel=_nop)
    assert (
        _refused(lambda: adm.admit("c", CallClass.TASKS, cancel=_nop)).reason is Reason.SERVER_BUSY
    )


def test_an_idle_peer_is_forgotten():
    """Once its calls ended and its bucket refilled, a peer leaves no entry behind."""
    adm, clock = _quotas(peer_rate=1.0, peer_burst=1)
    t = adm.admit("a", CallClass.CALL, cancel=_nop)
    clock.t = 5.0
    adm.release(t)
    assert adm.held("a") == (0, 0, 0)
    assert adm.tracked() == 0


def test_byte_reservations_per_peer_and_server_wide():
    """A peer's bytes are capped at once (PEER_LIMIT); the server's budget waits, then is busy."""
    adm, _ = _quotas(peer_bytes_in_flight=100, bytes_in_flight=150)
    with adm.reserve("a", 100, timeout=0):
        assert adm.held("a")[2] == 100
        assert _refused(lambda: adm.reserve("a", 1, timeout=0).__enter__()).reason is (
            Reason.PEER_LIMIT
        )
        with adm.reserve("b", 50, timeout=0):
            err = _refused(lambda: adm.reserve("c", 1, timeout=0).__enter__())
            assert err.reason is Reason.SERVER_BUSY
        assert adm.held("c")[2] == 0  # a refused reservation holds nothing
    assert adm.held("a")[2] == 0
    assert _refused(lambda: adm.reserve("a", 151, timeout=0).__enter__()).reason is (
        Reason.PEER_LIMIT
    )


def test_a_waiting_reservation_proceeds_when_bytes_come_free():
    """An upload waiting for the server's budget gets it as soon as another upload ends."""
    adm = Quotas(Limits(peer_bytes_in_flight=100, bytes_in_flight=100))
    got = threading.Event()
    with adm.reserve("a", 100, timeout=0):

        def wait() -> None:
            with adm.reserve("b", 60, timeout=30):
                got.set()

        t = threading.Thread(target=wait)
        t.start()
        wait_for(lambda: adm.held("b")[2], timeout=30, what="b's bytes to be counted")
        assert not got.wait(0.2)  # counted, and still waiting while a holds the budget
    t.join(timeout=10)
    assert got.is_set()


def test_a_full_server_says_server_busy_on_a_stream(pki, tmp_path):
    """With one task stream for all sites, a second site's OpenTasks is UNAVAILABLE server_busy."""
    agg, port = build(make_config(pki, tmp_path / "state", limits=Limits(task_streams=1)))
    s1, s2 = FakeSite(pki, "site-1", port), FakeSite(pki, "site-2", port)
    try:
        s1.connect()
        wait_for(
            lambda: set(agg.coordinator.connected()),
            until=lambda c: "site-1" in c,
            timeout=30,
            what="site-1's task stream",
        )
        s2.register()
        stream = s2.fed.OpenTasks(s2.seal(common_pb2.STAGE_OPEN_TASKS, b""))
        with pytest.raises(grpc.RpcError) as err:
            next(stream)
        assert (err.value.code(), err.value.details()) == (
            grpc.StatusCode.UNAVAILABLE,
            "server_busy",
        )
    finally:
        for s in (s1, s2):
            s.disconnect()
            s.close()
        agg.stop(grace=0)
