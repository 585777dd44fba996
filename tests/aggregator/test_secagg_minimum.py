"""Secure aggregation's minimum is one rule: the job-file check and the aggregator agree."""

from __future__ import annotations

import grpc
import pytest

from confide.errors import ConfigError
from confide.jobspec import validate_job
from confide.secagg import MIN_SECURE_SITES
from confide.v1 import common_pb2
from confide.wire.status import error_from_rpc
from tests.aggregator.fakes import tiny_spec

RULE = (
    "secure aggregation needs at least 3 sites, got 2: with two, the sum reveals each "
    "site's update to the other"
)


def _secure(min_sites: int) -> common_pb2.JobSpec:
    spec = tiny_spec(min_sites=min_sites)
    spec.secure_aggregation.CopyFrom(common_pb2.SecureAggregation(enabled=True))
    return spec


def test_the_job_file_check_refuses_two_sites_naming_min_sites_and_why():
    """Two sites are refused under the job key min_sites, with the reason; three pass."""
    with pytest.raises(ConfigError) as err:
        validate_job(_secure(MIN_SECURE_SITES - 1))
    assert (err.value.key, err.value.problem) == ("min_sites", RULE)
    validate_job(_secure(MIN_SECURE_SITES))


def test_the_aggregator_refuses_the_same_job_with_the_same_words(clients):
    """SubmitJob, bypassing the client's check, refuses two sites with the identical message."""
    _, operator = clients
    with pytest.raises(grpc.RpcError) as err:
        operator().submit(_secure(MIN_SECURE_SITES - 1))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_from_rpc(err.value).message.endswith(f"config key 'min_sites': {RULE}")


def test_an_aggregator_only_parameter_limit_is_caught_before_submit():
    """32-bit quantization for 3 sites overflows the modulus: the job-file check says so too."""
    spec = _secure(3)
    spec.secure_aggregation.bits = 32
    with pytest.raises(ConfigError) as err:
        validate_job(spec)
    assert err.value.key == "secure_aggregation.bits"
