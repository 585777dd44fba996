"""Accepting an update is one transaction: a refused row leaves the running sum unchanged."""

from __future__ import annotations

import sqlite3

import grpc
import numpy as np
import pytest

from confide.v1 import admin_pb2, federation_pb2
from tests.aggregator.fakes import ACK, delta_like, tiny_spec


def test_an_update_whose_row_the_database_refuses_never_reaches_the_model(
    clients, server, tmp_path
):
    """The database refuses site-1's row: INTERNAL, nothing recorded or summed; then w + 0.1."""
    agg, _ = server
    site, operator = clients
    op, s1, s2 = operator(), site("site-1"), site("site-2")
    s1.connect()
    s2.connect()
    job = op.submit(tiny_spec(rounds=1, round_timeout_s=30.0))
    t1, t2 = (
        s1.next_task(federation_pb2.TASK_KIND_TRAIN),
        s2.next_task(federation_pb2.TASK_KIND_TRAIN),
    )
    model = s1.download(job, t1.model_version)
    # A real database refusal (as a 2^63 count once was), injected from outside the aggregator.
    db = sqlite3.connect(str(tmp_path / "state" / "aggregator.db"), isolation_level=None)
    db.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON round_sites WHEN NEW.site = 'site-1' "
        "BEGIN SELECT RAISE(ABORT, 'injected'); END"
    )
    with pytest.raises(grpc.RpcError) as err:
        s1.upload(t1, delta_like(model, 1000.0))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    st = op.admin.GetJob(admin_pb2.JobRef(job_id=job))
    assert [s.site_id for s in st.rounds[0].sites] == []
    events = [(e.event, e.actor) for e in agg.store.audit_entries()]
    assert ("update_accepted", "site-1") not in events and ("update_refused", "site-1") in events
    db.execute("DROP TRIGGER refuse")
    db.close()
    # The refused +1000 is not in the sum: the retry is accepted, and the mean is exactly 0.1.
    assert s1.upload(t1, delta_like(model, 0.1)) == ACK
    assert s2.upload(t2, delta_like(model, 0.1)) == ACK
    st = op.admin.GetJob(admin_pb2.JobRef(job_id=job))
    assert st.rounds[0].aggregated == 2
    new = s1.download(job, st.rounds[0].model_version)
    for (_, w0), (_, w1) in zip(model, new, strict=True):
        np.testing.assert_allclose(w1, w0 + np.float32(0.1), atol=1e-6)
