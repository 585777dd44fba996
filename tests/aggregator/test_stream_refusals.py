"""A response stream that fails after its first message is refused like a call refused at its
start: a gRPC status, the refusal's log event under the caller's bound context, an audit entry.

Both run over real gRPC + mTLS against an in-process aggregator.
"""

from __future__ import annotations

import dataclasses
import queue
from typing import Any

import grpc
import pytest
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from confide.errors import InternalError
from confide.v1 import admin_pb2, common_pb2, federation_pb2
from tests.aggregator.fakes import tiny_spec


def _last_audit(op: Any) -> admin_pb2.AuditEntry:
    entry: admin_pb2.AuditEntry = op.admin.ListAudit(admin_pb2.AuditRequest()).entries[-1]
    return entry


def test_a_download_whose_blob_vanishes_mid_stream_is_refused_logged_and_audited(clients, tmp_path):
    """A model whose bytes go missing after its header was sent ends INTERNAL, not a traceback,
    with download_refused logged under the site and job and written to the audit trail."""
    site, operator = clients
    op, s1, s2 = operator(), site("site-1"), site("site-2")
    s1.connect()
    s2.connect()
    job_id = op.submit(tiny_spec(round_timeout_s=30.0))
    task = s1.next_task(federation_pb2.TASK_KIND_TRAIN)
    [body] = [p for p in (tmp_path / "state").rglob(task.model_version) if p.is_file()]
    body.unlink()  # its header stays: the stream starts, then the bytes cannot be read

    with capture_logs(processors=[merge_contextvars]) as logs:
        parts = s1.fed.Download(
            federation_pb2.DownloadRequest(job_id=job_id, model_version=task.model_version),
            timeout=10,
        )
        assert next(parts).WhichOneof("part") == "header"
        with pytest.raises(grpc.RpcError) as err:
            next(parts)
    assert (err.value.code(), err.value.details()) == (grpc.StatusCode.INTERNAL, "internal")
    [refused] = [e for e in logs if e["event"] == "download_refused"]
    assert (refused["reason"], refused["site"], refused["job"]) == ("internal", "site-1", job_id)
    assert any(e["event"] == "internal_error" and e["site"] == "site-1" for e in logs)
    last = _last_audit(op)
    assert (last.event, last.actor, last.job_id, last.reason) == (
        "download_refused",
        "site-1",
        job_id,
        "internal",
    )


class _BreaksAfterOne:
    """A site's task queue that hands out one task, then fails as a broken store would."""

    def __init__(self, inner: queue.SimpleQueue[Any]) -> None:
        self._inner, self._given = inner, 0

    def get(self) -> Any:
        if self._given:
            raise InternalError("the site's task queue broke")
        self._given += 1
        return self._inner.get()


def test_a_task_stream_that_fails_after_a_task_is_refused_logged_and_audited(
    clients, server, monkeypatch
):
    """An OpenTasks stream failing after its first task ends INTERNAL with open_tasks_refused
    logged under the site's bound context and written to the audit trail."""
    agg, _ = server
    opened = agg.coordinator.open_stream

    def open_breaking(*args: Any, **kw: Any) -> Any:
        conn = opened(*args, **kw)
        return dataclasses.replace(conn, queue=_BreaksAfterOne(conn.queue))

    monkeypatch.setattr(agg.coordinator, "open_stream", open_breaking)
    site, operator = clients
    op, s1 = operator(), site("site-1")
    s1.register()
    with capture_logs(processors=[merge_contextvars]) as logs:
        stream = s1.fed.OpenTasks(s1.seal(common_pb2.STAGE_OPEN_TASKS, b""))
        op.submit(tiny_spec(min_sites=1, round_timeout_s=30.0))
        assert next(stream).kind == federation_pb2.TASK_KIND_TRAIN
        with pytest.raises(grpc.RpcError) as err:
            next(stream)
    assert (err.value.code(), err.value.details()) == (grpc.StatusCode.INTERNAL, "internal")
    [refused] = [e for e in logs if e["event"] == "open_tasks_refused"]
    assert (refused["reason"], refused["site"]) == ("internal", "site-1")
    last = _last_audit(op)
    assert (last.event, last.actor, last.reason) == ("open_tasks_refused", "site-1", "internal")
