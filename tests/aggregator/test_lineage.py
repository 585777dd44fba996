"""The aggregator's model-version chain: what each task carries, across rounds and restarts."""

from __future__ import annotations

from aggregator.server import build
from confide.lineage import chain_of, initial_model_sha
from confide.v1 import federation_pb2
from tests.aggregator.conftest import make_config
from tests.aggregator.fakes import FakeSite, Operator, delta_like, tiny_spec


def test_tasks_carry_the_chain_and_a_restart_rebuilds_it(pki, tmp_path):
    """Round 1 trains version 0 (the signed seed's model, chain anchored to the signed job);
    round 2 trains version 1 whose parent is chain_0, the same after the aggregator restarts;
    the final EVALUATE names version 2 with parent chain_1."""
    cfg = make_config(pki, tmp_path / "state")
    agg, port = build(cfg)
    op, s1, s2 = (
        Operator(pki, "alice", port),
        FakeSite(pki, "site-1", port),
        FakeSite(pki, "site-2", port),
    )
    spec = tiny_spec(rounds=2)
    try:
        s1.connect()
        s2.connect()
        job = op.submit(spec)
        t1 = [s.next_task(federation_pb2.TASK_KIND_TRAIN) for s in (s1, s2)]
        assert t1[0].model_version == initial_model_sha(spec)
        assert (t1[0].lineage.version, t1[0].lineage.parent_chain) == (0, b"")
        model = s1.download(job, t1[0].model_version)
        for s, t in zip((s1, s2), t1, strict=True):
            s.upload(t, delta_like(model, 1.0))
        t2 = s1.next_task(federation_pb2.TASK_KIND_TRAIN)
        chain = chain_of(
            job_id=job, signed_job=t2.signed_job, shas=[t1[0].model_version, t2.model_version]
        )
        assert (t2.lineage.version, t2.lineage.parent_chain) == (1, chain[0])
    finally:
        for c in (op, s1, s2):
            c.close()
        agg.stop(grace=0)

    agg, port = build(cfg)
    op, s1, s2 = (
        Operator(pki, "alice", port),
        FakeSite(pki, "site-1", port),
        FakeSite(pki, "site-2", port),
    )
    try:
        s1.connect()
        s2.connect()
        r2 = [s.next_task(federation_pb2.TASK_KIND_TRAIN) for s in (s1, s2)]
        assert r2[0].model_version == t2.model_version
        assert (r2[0].lineage.version, r2[0].lineage.parent_chain) == (1, chain[0])
        model = s1.download(job, r2[0].model_version)
        for s, t in zip((s1, s2), r2, strict=True):
            s.upload(t, delta_like(model, 1.0))
        ev = s1.next_task(federation_pb2.TASK_KIND_EVALUATE)
        full = chain_of(
            job_id=job,
            signed_job=ev.signed_job,
            shas=[t1[0].model_version, t2.model_version, ev.model_version],
        )
        assert (ev.lineage.version, ev.lineage.parent_chain) == (2, full[1])
    finally:
        for c in (op, s1, s2):
            c.close()
        agg.stop(grace=0)
