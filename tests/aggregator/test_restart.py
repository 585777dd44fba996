"""A restarted aggregator resumes a running job from its last completed round."""

from __future__ import annotations

import grpc
import pytest
from structlog.testing import capture_logs

from aggregator.server import build
from aggregator.store import AuditNote, JobRow, ModelRow, open_store
from confide.v1 import admin_pb2, common_pb2, federation_pb2
from tests.aggregator.conftest import make_config
from tests.aggregator.fakes import FakeSite, Operator, delta_like, tiny_spec


def _clients(pki, port: int) -> tuple[Operator, FakeSite, FakeSite]:
    """The operator and sites 1 and 2 for the aggregator on ``port`` (sites not connected)."""
    return (
        Operator(pki, "alice", port),
        FakeSite(pki, "site-1", port),
        FakeSite(pki, "site-2", port),
    )


def _complete_round(job: str, s1: FakeSite, s2: FakeSite) -> None:
    """Both sites take their TRAIN task and upload an update: the round completes."""
    tasks = [s.next_task(federation_pb2.TASK_KIND_TRAIN) for s in (s1, s2)]
    model = s1.download(job, tasks[0].model_version)
    for s, t in zip((s1, s2), tasks, strict=True):
        s.upload(t, delta_like(model, 1.0))


def test_restart_resumes_after_completed_round(pki, tmp_path):
    """Round 1 completes, the aggregator stops; after restart round 2 starts from version 1."""
    cfg = make_config(pki, tmp_path / "state")
    agg, port = build(cfg)
    op, s1, s2 = _clients(pki, port)
    s1.connect()
    s2.connect()
    job = op.submit(tiny_spec(rounds=3))
    _complete_round(job, s1, s2)
    v1 = s1.next_task(federation_pb2.TASK_KIND_TRAIN).model_version
    for c in (op, s1, s2):
        c.close()
    agg.stop(grace=0)

    agg, port = build(cfg)
    try:
        op, s1, s2 = _clients(pki, port)
        s1.connect()
        s2.connect()
        t = s1.next_task(federation_pb2.TASK_KIND_TRAIN)
        assert (t.round, t.model_version) == (2, v1)
        st = op.admin.GetJob(admin_pb2.JobRef(job_id=job))
        assert st.state == admin_pb2.JOB_STATE_RUNNING
        assert next(r.state for r in st.rounds) == "done"
        assert agg.store.verify_audit_chain() > 0
        for c in (s1, s2):
            c.disconnect()
        for c in (op, s1, s2):
            c.close()
    finally:
        agg.stop(grace=0)


def _bad_optimizer_spec():
    spec = tiny_spec()
    spec.training.server_optimizer = 99  # an optimizer this aggregator does not know
    return spec


def test_job_with_unknown_optimizer_is_refused_before_it_is_stored(pki, tmp_path):
    """A spec whose server optimizer cannot be built is refused and never stored."""
    cfg = make_config(pki, tmp_path / "state")
    agg, port = build(cfg)
    op = Operator(pki, "alice", port)
    try:
        with pytest.raises(grpc.RpcError) as err:
            op.submit(_bad_optimizer_spec())
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert list(op.admin.ListJobs(admin_pb2.ListJobsRequest()).jobs) == []
    finally:
        op.close()
        agg.stop(grace=0)
    agg, _ = build(cfg)  # a restart finds nothing it cannot resume
    agg.stop(grace=0)


def test_unrestorable_job_is_marked_failed_and_startup_goes_on(pki, tmp_path):
    """A stored running job that cannot be rebuilt is marked failed with a reason at startup."""
    cfg = make_config(pki, tmp_path / "state")
    store = open_store(cfg.store, state_dir=cfg.state_dir)
    store.add_job(
        JobRow(
            id="bad",
            spec=_bad_optimizer_spec().SerializeToString(),
            signed_job=b"",
            signer_cert=b"",
            state="running",
            error="",
            submitted_by="x",
            created=1.0,
        ),
        ModelRow(job="bad", version_no=0, sha256="00" * 32, optimizer_state="", created=1.0),
        audit=AuditNote(event="job_submitted", actor="alice", at=1.0, job="bad"),
    )
    store.close()
    with capture_logs() as logs:
        agg, _ = build(cfg)
    try:
        row = agg.store.job("bad")
        assert row is not None and row.state == "failed"
        assert "training.server_optimizer" in row.error
        last = agg.store.audit_entries()[-1]
        assert (last.event, last.job, last.reason) == ("job_failed", "bad", "invalid_value")
        assert any(e["event"] == "job_unrunnable" for e in logs)
        assert agg.coordinator.live_state("bad") is None
    finally:
        agg.stop(grace=0)


def test_restart_mid_round_resends_train_with_a_fresh_task_id(pki, tmp_path):
    """A round interrupted by a restart resumes as the next attempt, with a new task id."""
    cfg = make_config(pki, tmp_path / "state")
    agg, port = build(cfg)
    op, s1, s2 = _clients(pki, port)
    s1.connect()
    s2.connect()
    op.submit(tiny_spec(rounds=2))
    before = s1.next_task(federation_pb2.TASK_KIND_TRAIN)
    for c in (op, s1, s2):
        c.close()
    agg.stop(grace=0)

    agg, port = build(cfg)
    s1, s2 = FakeSite(pki, "site-1", port), FakeSite(pki, "site-2", port)
    try:
        s1.connect()
        s2.connect()
        after = s1.next_task(federation_pb2.TASK_KIND_TRAIN)
        assert after.round == before.round == 1
        assert after.task_id != before.task_id
        assert after.task_id.split("/")[2] == "2"
        assert (before.attempt, after.attempt) == (1, 2)  # the typed field the sites read
    finally:
        for c in (s1, s2):
            c.disconnect()
            c.close()
        agg.stop(grace=0)


def test_restart_during_final_evaluation_evaluates_once_sites_return(pki, tmp_path):
    """A restart after the last round waits for sites, sends EVALUATE, then JOB_DONE."""
    cfg = make_config(pki, tmp_path / "state")
    agg, port = build(cfg)
    op, s1, s2 = _clients(pki, port)
    s1.connect()
    s2.connect()
    # The job states a hold-out weight cap, so the final accuracy is weighted by counts.
    cap = common_pb2.AggregationSpec(max_eval_samples=1000)
    job = op.submit(tiny_spec(rounds=1, aggregation=cap))
    _complete_round(job, s1, s2)
    s1.next_task(federation_pb2.TASK_KIND_EVALUATE)  # never answered: the aggregator stops
    for c in (op, s1, s2):
        c.close()
    agg.stop(grace=0)

    agg, port = build(cfg)
    op, s1, s2 = _clients(pki, port)
    try:
        st = op.admin.GetJob(admin_pb2.JobRef(job_id=job))
        assert st.state == admin_pb2.JOB_STATE_RUNNING
        s1.connect()
        s2.connect()
        for s, n in ((s1, 10), (s2, 30)):
            t = s.next_task(federation_pb2.TASK_KIND_EVALUATE)
            s.report(t, metrics={"accuracy": n / 100, "loss": 1.0}, num_samples=n)
        for s in (s1, s2):
            s.next_task(federation_pb2.TASK_KIND_JOB_DONE)
        st = op.admin.GetJob(admin_pb2.JobRef(job_id=job))
        assert st.state == admin_pb2.JOB_STATE_DONE
        assert st.final_accuracy == pytest.approx((0.1 * 10 + 0.3 * 30) / 40)
        assert st.final_eval_samples == 40
    finally:
        for c in (s1, s2):
            c.disconnect()
        for c in (op, s1, s2):
            c.close()
        agg.stop(grace=0)
