"""A second agent presenting a connected site's identity is refused; a reconnect is not."""

from __future__ import annotations

import grpc
import pytest

from confide.v1 import common_pb2, federation_pb2
from tests.support.wait import wait_for


def _register(site, instance: str):
    req = federation_pb2.RegisterRequest(datasets=["tab"], device="cpu", instance=instance)
    return site.fed.Register(
        site.seal(common_pb2.STAGE_REGISTER, req.SerializeToString()), timeout=10
    )


def _open(site, instance: str):
    req = federation_pb2.OpenTasksRequest(instance=instance)
    return site.fed.OpenTasks(site.seal(common_pb2.STAGE_OPEN_TASKS, req.SerializeToString()))


def _wait_connected(agg, until, what: str) -> None:
    wait_for(lambda: set(agg.coordinator.connected()), until=until, timeout=30, what=what)


def test_a_second_agent_with_the_same_identity_is_refused_until_the_first_leaves(server, clients):
    """Register and OpenTasks of another instance fail identity_in_use; the same instance may."""
    agg, _ = server
    site, _ = clients
    first, second = site("site-1"), site("site-1")
    _register(first, "aaaa")
    stream = _open(first, "aaaa")
    _wait_connected(agg, lambda c: "site-1" in c, "the first agent's stream")
    for call in (lambda: _register(second, "bbbb"), lambda: next(iter(_open(second, "bbbb")))):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert err.value.details() == "identity_in_use"
    assert agg.coordinator.connected()["site-1"].instance == "aaaa"
    _register(first, "aaaa")  # the same agent reconnecting is let in
    refusals = [e for e in agg.store.audit_entries() if e.reason == "identity_in_use"]
    assert refusals and "another agent is connected as 'site-1'" in refusals[0].detail
    stream.cancel()
    _wait_connected(agg, lambda c: "site-1" not in c, "the first agent's stream to end")
    _register(second, "bbbb")
    second_stream = _open(second, "bbbb")
    _wait_connected(agg, lambda c: "site-1" in c, "the second agent's stream")
    assert agg.coordinator.connected()["site-1"].instance == "bbbb"
    second_stream.cancel()
