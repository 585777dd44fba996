"""End-to-end plaintext rounds over real gRPC + mTLS with fake sites."""

from __future__ import annotations

import numpy as np
import pytest

from confide.v1 import admin_pb2, common_pb2, federation_pb2
from tests.aggregator.fakes import ACK, delta_like, tiny_spec
from tests.support.wait import wait_for


def _run_round(sites, job_id, value=0.1):
    tasks = [s.next_task(federation_pb2.TASK_KIND_TRAIN) for s in sites]
    model = sites[0].download(job_id, tasks[0].model_version)
    for s, t in zip(sites, tasks, strict=True):
        assert s.upload(t, delta_like(model, value)) == ACK
    return tasks, model


def test_two_rounds_complete_and_models_download(clients):
    """Two sites train two rounds; each round yields a downloadable new model, then evaluation."""
    site, operator = clients
    op = operator()
    s1, s2 = site("site-1"), site("site-2")
    s1.connect()
    s2.connect()
    job_id = op.submit(tiny_spec())
    tasks, model0 = _run_round([s1, s2], job_id, 0.25)
    assert tasks[0].signed_job.stage == common_pb2.STAGE_JOB
    assert tasks[0].signer_certificate.startswith(b"-----BEGIN CERTIFICATE")
    tasks2, model1 = _run_round([s1, s2], job_id, 0.25)
    assert tasks2[0].round == 2
    for (_, a0), (_, a1) in zip(model0, model1, strict=True):
        np.testing.assert_allclose(a1, a0 + 0.25, rtol=1e-6)
    ev = [s.next_task(federation_pb2.TASK_KIND_EVALUATE) for s in (s1, s2)]
    for s, t in zip((s1, s2), ev, strict=True):
        s.report(t, metrics={"accuracy": 0.5 if s is s1 else 1.0, "loss": 0.1}, num_samples=10)
    s1.next_task(federation_pb2.TASK_KIND_JOB_DONE)
    st = op.admin.GetJob(admin_pb2.JobRef(job_id=job_id))
    assert st.state == admin_pb2.JOB_STATE_DONE
    assert [r.state for r in st.rounds] == ["done", "done"]
    assert st.final_accuracy == pytest.approx(0.75)
    # Sites report the job's cumulative ε each round (0.5 here), so the job's figure is the
    # latest report, not a sum over rounds.
    assert st.epsilon_by_site["site-1"] == pytest.approx(0.5)
    final = s1.download(job_id, st.model_version)
    np.testing.assert_allclose(final[0][1], model0[0][1] + 0.5, rtol=1e-6)
    events = [e.event for e in op.admin.ListAudit(admin_pb2.AuditRequest()).entries]
    assert "round_completed" in events and "job_done" in events


def test_site_listing_shows_connection(clients):
    """ListSites reports a registered, connected site with its datasets."""
    site, operator = clients
    s1 = site("site-1")
    s1.connect()
    op = operator()
    sites = wait_for(
        lambda: {s.site_id: s for s in op.admin.ListSites(admin_pb2.ListSitesRequest()).sites},
        until=lambda sites: "site-1" in sites and sites["site-1"].connected,
        timeout=30,
        what="ListSites to show site-1 connected",
    )
    assert sites["site-1"].connected and list(sites["site-1"].datasets) == ["tab"]
