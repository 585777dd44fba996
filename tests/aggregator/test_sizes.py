"""Job sizes the operator declares are limited at submit, before anything is allocated."""

from __future__ import annotations

import time

import grpc
import pytest

from aggregator.server import build
from confide.v1 import common_pb2
from tests.aggregator.conftest import make_config
from tests.aggregator.fakes import Operator, tiny_spec


def _with_model(model: common_pb2.ModelSpec) -> common_pb2.JobSpec:
    spec = tiny_spec()
    spec.model.CopyFrom(model)
    return spec


def _fixed(params: int) -> common_pb2.JobSpec:
    return _with_model(
        common_pb2.ModelSpec(kind=common_pb2.MODEL_KIND_FIXED_DELTA, fixed_delta_params=params)
    )


@pytest.fixture
def small(pki, tmp_path):
    """An aggregator that accepts models of at most 4000 bytes (1000 float32 parameters)."""
    agg, port = build(make_config(pki, tmp_path / "state", max_model_bytes=4000))
    op = Operator(pki, "alice", port)
    yield agg, op
    op.close()
    agg.stop(grace=0)


def test_model_size_limit_on_both_sides(small):
    """1000 parameters (4000 bytes) are accepted; 1001 are refused model_too_large."""
    agg, op = small
    assert op.submit(_fixed(1000))
    with pytest.raises(grpc.RpcError) as err:
        op.submit(_fixed(1001))
    assert (err.value.code(), err.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "model_too_large",
    )
    refused = [e for e in agg.store.audit_entries() if e.event == "job_refused"]
    assert refused[-1].reason == "model_too_large"
    assert "limits.max_model_bytes = 4000" in refused[-1].detail


def test_a_trillion_parameter_job_is_refused_at_once_by_default(server, clients):
    """SubmitJob of a 10^12-parameter model is refused by the default limit, nothing drawn."""
    agg, _ = server
    _, operator = clients
    op = operator()
    for spec in (
        _fixed(10**12),
        _with_model(common_pb2.ModelSpec(kind=common_pb2.MODEL_KIND_MLP, hidden=[10**6] * 3)),
    ):
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            op.submit(spec)
        assert err.value.details() == "model_too_large"
        assert time.monotonic() - t0 < 2.0
    assert agg.store.jobs() == []
