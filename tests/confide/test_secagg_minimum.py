"""Secure aggregation's minimum is one rule: the job-file check and the aggregator agree."""

from __future__ import annotations

import pytest

from aggregator.admin import validate
from confide.errors import ConfigError
from confide.jobspec import validate_job
from confide.secagg import MIN_SECURE_SITES
from confide.v1 import common_pb2
from tests.aggregator.fakes import tiny_spec


def _secure(min_sites: int) -> common_pb2.JobSpec:
    spec = tiny_spec(min_sites=min_sites)
    spec.secure_aggregation.CopyFrom(common_pb2.SecureAggregation(enabled=True))
    return spec


@pytest.mark.parametrize("check", [validate_job, validate], ids=["client", "aggregator"])
def test_both_sides_refuse_two_sites_naming_min_sites_and_why(check):
    """Two sites are refused under the job key min_sites, with the reason, on both sides."""
    with pytest.raises(ConfigError) as err:
        check(_secure(MIN_SECURE_SITES - 1))
    assert err.value.key == "min_sites"
    assert err.value.problem == (
        "secure aggregation needs at least 3 sites, got 2: with two, the sum reveals each "
        "site's update to the other"
    )


@pytest.mark.parametrize("check", [validate_job, validate], ids=["client", "aggregator"])
def test_both_sides_accept_the_minimum(check):
    """Three sites pass both checks."""
    check(_secure(MIN_SECURE_SITES))


def test_an_aggregator_only_parameter_limit_is_caught_before_submit():
    """32-bit quantization for 3 sites overflows the modulus: the job-file check says so too."""
    spec = _secure(3)
    spec.secure_aggregation.bits = 32
    with pytest.raises(ConfigError) as err:
        validate_job(spec)
    assert err.value.key == "secure_aggregation.bits"
