"""Each site's refusal or failure reason reaches the operator: job status and the job's error."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from aggregator.server import build
from confide.disclose import MAX_DETAIL
from confide.v1 import admin_pb2, common_pb2, federation_pb2
from confide.wire.status import error_from_rpc
from tests.aggregator.conftest import make_config
from tests.aggregator.fakes import ACK, FakeSite, Operator, tiny_spec
from tests.support.wait import wait_for


@pytest.fixture
def fed(pki, tmp_path):
    """A live aggregator that fails a job at its first failed round (no retries)."""
    agg, port = build(make_config(pki, tmp_path / "state", max_round_retries=0))
    made: list = []

    def party(cls, name):
        made.append(cls(pki, name, port))
        return made[-1]

    yield party
    for p in made:
        if isinstance(p, FakeSite):
            p.disconnect()
        p.close()
    agg.stop(grace=0)


def _wait_state(op: Operator, job_id: str, state: int):
    return wait_for(
        lambda: op.admin.GetJob(admin_pb2.JobRef(job_id=job_id), timeout=10),
        until=lambda st: st.state == state,
        timeout=30,
        what=f"job {job_id} to reach state {state}",
    )


def _zeros(site: FakeSite, job_id: str, task: federation_pb2.Task):
    return [(n, np.zeros_like(a)) for n, a in site.download(job_id, task.model_version)]


def test_a_refusal_reason_and_detail_reach_the_status_and_the_jobs_error(fed):
    """A site's refusal shows as its reason and one-line detail, and names it in the job error."""
    op = fed(Operator, "alice")
    s1, s2 = fed(FakeSite, "site-1"), fed(FakeSite, "site-2")
    s1.connect()
    s2.connect()
    job_id = op.submit(tiny_spec(rounds=1))
    t1 = s1.next_task(federation_pb2.TASK_KIND_TRAIN)
    t2 = s2.next_task(federation_pb2.TASK_KIND_TRAIN)
    assert s1.upload(t1, _zeros(s1, job_id, t1)) == ACK
    s2.report(
        t2,
        outcome=common_pb2.OUTCOME_REFUSED,
        reason="schema_mismatch",
        message="dataset 'tab': column 'c' is missing from the file",
    )
    st = _wait_state(op, job_id, admin_pb2.JOB_STATE_FAILED)
    # The job's error names the site and its reason code; the detail (site text) is per round.
    assert (
        st.error
        == "round 1 got fewer than 2 updates in 1 attempts; refused by site-2 (schema_mismatch)"
    )
    rows = {s.site_id: s for s in st.rounds[0].sites}
    assert rows["site-2"].outcome == common_pb2.OUTCOME_REFUSED
    assert (rows["site-2"].reason, rows["site-2"].detail) == (
        "schema_mismatch",
        "dataset 'tab': column 'c' is missing from the file",
    )
    assert rows["site-1"].outcome == common_pb2.OUTCOME_OK and rows["site-1"].detail == ""


def test_a_silent_site_is_named_when_its_round_fails(fed):
    """A selected site that sends nothing before the deadline is recorded and named."""
    op = fed(Operator, "alice")
    s1, s2 = fed(FakeSite, "site-1"), fed(FakeSite, "site-2")
    s1.connect()
    s2.connect()
    job_id = op.submit(tiny_spec(rounds=1, round_timeout_s=0.5))
    t1 = s1.next_task(federation_pb2.TASK_KIND_TRAIN)
    s2.next_task(federation_pb2.TASK_KIND_TRAIN)
    assert s1.upload(t1, _zeros(s1, job_id, t1)) == ACK
    st = _wait_state(op, job_id, admin_pb2.JOB_STATE_FAILED)
    assert st.error == (
        "round 1 got fewer than 2 updates in 1 attempts; site-2: no update before the round's "
        "deadline"
    ), st.error
    silent = next(s for s in st.rounds[0].sites if s.site_id == "site-2")
    assert (silent.outcome, silent.reason) == (common_pb2.OUTCOME_FAILED, "unavailable")


def test_a_hostile_sites_reason_and_detail_are_bounded_before_they_are_stored(fed):
    """A report with an unknown reason and a long, multi-line detail is stored as one short line."""
    op = fed(Operator, "alice")
    s1, s2 = fed(FakeSite, "site-1"), fed(FakeSite, "site-2")
    s1.connect()
    s2.connect()
    job_id = op.submit(tiny_spec(rounds=1))
    s1.next_task(federation_pb2.TASK_KIND_TRAIN)
    t2 = s2.next_task(federation_pb2.TASK_KIND_TRAIN)
    s2.report(
        t2,
        outcome=common_pb2.OUTCOME_FAILED,
        reason="x" * 64,  # the wire's most; not a Reason
        message=("\x1b[2J\nfake line\r\n" + "y" * 1000),  # the wire's most is 1024 bytes
    )
    st = op.admin.GetJob(admin_pb2.JobRef(job_id=job_id), timeout=10)
    row = next(s for s in st.rounds[0].sites if s.site_id == "site-2")
    assert row.reason == "denied"
    assert len(row.detail) <= MAX_DETAIL and row.detail.isprintable()
    assert row.detail.startswith("[2J fake line y")


def test_a_job_whose_dataset_no_connected_site_exposes_fails_after_its_deadline(fed):
    """With no connected site exposing the dataset, the job fails at its deadline, naming it."""
    op = fed(Operator, "alice")
    s1 = fed(FakeSite, "site-1")
    s1.connect(datasets=("other",))
    job_id = op.submit(tiny_spec(round_timeout_s=0.5))
    st = _wait_state(op, job_id, admin_pb2.JOB_STATE_FAILED)
    assert st.error == "no connected site exposes dataset 'tab' (waited 0.5 s for one)"


def test_a_refused_submit_carries_the_aggregators_message_naming_the_key(fed):
    """A job the aggregator refuses comes back with its one-line message, naming the job key."""
    op = fed(Operator, "alice")
    spec = tiny_spec(min_sites=3)
    spec.secure_aggregation.CopyFrom(common_pb2.SecureAggregation(enabled=True, bits=32))
    with pytest.raises(grpc.RpcError) as info:
        op.submit(spec)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "invalid_value"
    err = error_from_rpc(info.value)
    assert "config key 'secure_aggregation.bits'" in err.message, err.message
