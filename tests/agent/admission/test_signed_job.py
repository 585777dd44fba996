"""The site checks a signed job with the job file's own rules and runs its normalized copy."""

from __future__ import annotations

import time

import pytest

import agent.admission.signed_job as signed_job
from agent.admission.signed_job import check_job, verify_job
from confide import jobspec
from confide.errors import PolicyRefusal, Reason
from confide.v1 import common_pb2
from tests.agent.conftest import FEDERATION, job_spec, signed_task


def _verify(pki, task):
    """The site's two steps: the signature (verify_job), then the job rules (check_job)."""
    return check_job(
        verify_job(
            task,
            federation=FEDERATION,
            ca_pem=pki.site.ca_pem,
            crl_pem=None,
            trusted_signers=("alice",),
            now=time.time(),
        )
    )


def test_the_site_checks_a_job_with_the_one_rule_set():
    """The site imports confide.jobspec's validate_job and normalize, not copies of them."""
    assert signed_job.validate_job is jobspec.validate_job
    assert signed_job.normalize is jobspec.normalize


def test_a_verified_job_is_the_normalized_copy(pki):
    """A signed secure job with its defaults unset is handed on resolved by normalize."""
    spec = job_spec()
    spec.min_sites = 3
    spec.secure_aggregation.enabled = True
    job = _verify(pki, signed_task(pki.alice, spec=spec))
    assert job.spec == jobspec.normalize(spec) != spec
    assert job.spec.secure_aggregation.clip_range > 0


def test_a_signed_job_the_rules_refuse_is_an_invalid_job(pki):
    """A validly signed job that validate_job refuses is refused INVALID_JOB, naming the key."""
    spec = job_spec()
    spec.training.batch_size = 0
    with pytest.raises(PolicyRefusal) as info:
        _verify(pki, signed_task(pki.alice, spec=spec))
    assert info.value.reason is Reason.INVALID_JOB
    assert "training.batch_size" in str(info.value)


def test_a_job_signed_before_the_upgrade_keeps_running_with_its_retired_key(pki):
    """A signed job carrying the retired training.device (the previous release wrote it into
    every job) is accepted by the site, while any other unknown field is still refused."""
    old = job_spec()
    old.training.MergeFromString(b"\x32\x03cpu")  # field 6, the retired training.device
    old = common_pb2.JobSpec.FromString(old.SerializeToString())
    assert _verify(pki, signed_task(pki.alice, spec=old)).spec.training.batch_size > 0
    newer = job_spec()
    newer.training.MergeFromString(b"\xa2\x06\x03new")  # field 100: not known to this version
    newer = common_pb2.JobSpec.FromString(newer.SerializeToString())
    with pytest.raises(PolicyRefusal) as info:
        _verify(pki, signed_task(pki.alice, spec=newer))
    assert info.value.reason is Reason.INVALID_JOB and "field number 100" in str(info.value)
