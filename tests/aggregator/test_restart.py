"""A restarted aggregator resumes a running job from its last completed round."""

from __future__ import annotations

from aggregator.server import build
from confide.v1 import admin_pb2, federation_pb2
from tests.aggregator.conftest import make_config
from tests.aggregator.fakes import FakeSite, Operator, delta_like, tiny_spec


def test_restart_resumes_after_completed_round(pki, tmp_path):
    """Round 1 completes, the aggregator stops; after restart round 2 starts from version 1."""
    cfg = make_config(pki, tmp_path / "state")
    agg, port = build(cfg)
    op, s1, s2 = (
        Operator(pki, "alice", port),
        FakeSite(pki, "site-1", port),
        FakeSite(pki, "site-2", port),
    )
    s1.connect()
    s2.connect()
    job = op.submit(tiny_spec(rounds=3))
    tasks = [s.next_task(federation_pb2.TASK_KIND_TRAIN) for s in (s1, s2)]
    model = s1.download(job, tasks[0].model_version)
    for s, t in zip((s1, s2), tasks, strict=True):
        s.upload(t, delta_like(model, 1.0))
    v1 = s1.next_task(federation_pb2.TASK_KIND_TRAIN).model_version
    for c in (op, s1, s2):
        c.close()
    agg.stop(grace=0)

    agg, port = build(cfg)
    try:
        op, s1, s2 = (
            Operator(pki, "alice", port),
            FakeSite(pki, "site-1", port),
            FakeSite(pki, "site-2", port),
        )
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
