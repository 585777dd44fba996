"""The aggregator's SubmitJob and `confide job check` run one validation: same job, same key."""

from __future__ import annotations

import struct

import grpc
import pytest

import aggregator.admin
import confide.cli.jobs
from aggregator.jobs import new_job
from confide import jobspec
from confide.errors import ConfigError
from confide.v1 import admin_pb2, common_pb2
from tests.aggregator.fakes import tiny_spec


def test_submit_job_and_job_check_call_the_same_function():
    """There is one implementation: both import confide.jobspec.validate_job, no fallback."""
    assert aggregator.admin.validate_job is jobspec.validate_job
    assert confide.cli.jobs.validate_job is jobspec.validate_job
    assert not hasattr(aggregator.admin, "importlib")


def _bad(field: str):
    spec = tiny_spec()
    if field == "max_round_attempts":
        spec.attempts.max_round_attempts = 0
    elif field == "training.server_optimizer":
        spec.training.server_optimizer = 99
    elif field == "secure_aggregation.threshold":
        spec.secure_aggregation.enabled = True
        spec.secure_aggregation.threshold = 5.0
    elif field == "model.code":  # a code hash on a built-in model would do nothing
        spec.model.code_sha256 = bytes(32)
    elif field == "training.device":  # the retired field 6, as an older client still sends it
        spec.training.MergeFromString(b"\x32\x03cpu")
    elif field == "target_accuracy":  # the retired field 11 (a double)
        spec.MergeFromString(b"\x59" + struct.pack("<d", 0.9))
    return spec


@pytest.mark.parametrize(
    "key",
    [
        "max_round_attempts",
        "training.server_optimizer",
        "secure_aggregation.threshold",
        "model.code",
        "training.device",
        "target_accuracy",
    ],
)
def test_what_job_check_refuses_submit_job_refuses_naming_the_same_key(clients, key):
    """A crafted spec refused by validate_job with key K is refused INVALID_ARGUMENT at
    SubmitJob, and the aggregator's audit names the same K."""
    spec = _bad(key)
    with pytest.raises(ConfigError) as local:
        jobspec.validate_job(spec)
    assert local.value.key == key
    _, operator = clients
    op = operator()
    with pytest.raises(grpc.RpcError) as remote:
        op.submit(spec)
    assert remote.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    last = op.admin.ListAudit(admin_pb2.AuditRequest()).entries[-1]
    assert last.event == "job_refused" and f"config key '{key}'" in last.detail


def test_the_aggregator_runs_the_normalized_job():
    """A secure job sent with its defaults unset runs at the aggregator as
    confide.jobspec.normalize resolves it (the same copy every site runs), stage timeout too."""
    spec = tiny_spec(min_sites=3)
    spec.secure_aggregation.enabled = True
    jobspec.validate_job(spec)
    job = new_job(
        "j",
        spec,
        common_pb2.Envelope(),
        b"",
        model_version="0" * 64,
        version_no=0,
        max_retries=2,
        eligible=frozenset(),
    )
    assert job.spec == jobspec.normalize(spec) != spec
    assert job.state.params.stage_timeout_s == jobspec.DEFAULT_STAGE_TIMEOUT_S
