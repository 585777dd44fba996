"""Every refused message gets the right gRPC status, a log event and an audit entry."""

from __future__ import annotations

import threading
from typing import Any

import grpc
import nacl.signing
import numpy as np
import pytest
from structlog.testing import capture_logs

from aggregator import servicer
from confide.v1 import admin_pb2, common_pb2, federation_pb2
from tests.aggregator.fakes import ACK, delta_like, tiny_spec
from tests.support.wait import wait_for


def _start_round(clients: Any, **spec: Any) -> tuple[Any, str, Any, Any, Any, Any, Any]:
    """Submit a job to two connected sites; both hold their round-1 TRAIN task.

    Returns (operator, job id, site 1, site 2, task 1, task 2, the round's model).
    """
    site, operator = clients
    op = operator()
    s1, s2 = site("site-1"), site("site-2")
    s1.connect()
    s2.connect()
    job_id = op.submit(tiny_spec(round_timeout_s=30.0, **spec))
    t1 = s1.next_task(federation_pb2.TASK_KIND_TRAIN)
    t2 = s2.next_task(federation_pb2.TASK_KIND_TRAIN)
    return op, job_id, s1, s2, t1, t2, s1.download(job_id, t1.model_version)


@pytest.fixture
def round1(clients):
    """A job with two connected sites in round 1, and a third connected but unselected site."""
    op, _, s1, s2, t1, t2, model = _start_round(clients)
    return op, s1, s2, t1, t2, model, clients[0]


def _refused(op: Any, call: Any, code: grpc.StatusCode, reason: str, event: str) -> None:
    with capture_logs() as logs, pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == code
    assert err.value.details() == reason
    assert any(e["event"] == event and e["reason"] == reason for e in logs)
    last = op.admin.ListAudit(admin_pb2.AuditRequest()).entries[-1]
    assert (last.event, last.reason) == (event, reason)


def _still_serving(op: Any, s1: Any, s2: Any, t1: Any, t2: Any, model: Any) -> None:
    _finish_round(s1, s2, t1, t2, model)
    s1.next_task(federation_pb2.TASK_KIND_TRAIN)


def test_mis_signed_update(round1):
    """An update signed with a key other than the certificate's is UNAUTHENTICATED."""
    op, s1, s2, t1, t2, model = round1[:6]
    bad = nacl.signing.SigningKey.generate()
    _refused(
        op,
        lambda: s1.upload(t1, delta_like(model, 0.1), signer=bad),
        grpc.StatusCode.UNAUTHENTICATED,
        "bad_signature",
        "update_refused",
    )
    _still_serving(op, s1, s2, t1, t2, model)


def test_replayed_update(round1):
    """A second update from the same site in the same round is refused as replayed."""
    op, s1, s2, t1, t2, model = round1[:6]
    assert s1.upload(t1, delta_like(model, 0.1)) == ACK
    _refused(
        op,
        lambda: s1.upload(t1, delta_like(model, 0.1)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "replayed",
        "update_refused",
    )
    assert s2.upload(t2, delta_like(model, 0.1)) == ACK


def test_envelope_for_another_round(round1):
    """An update bound to another round is refused as replayed."""
    op, s1, s2, t1, t2, model = round1[:6]
    _refused(
        op,
        lambda: s1.upload(t1, delta_like(model, 0.1), round=5),
        grpc.StatusCode.FAILED_PRECONDITION,
        "replayed",
        "update_refused",
    )
    _still_serving(op, s1, s2, t1, t2, model)


def test_envelope_for_another_stage(round1):
    """An upload header signed for the MASKED_INPUT stage is refused in a plaintext round."""
    op, s1, s2, t1, t2, model = round1[:6]
    _refused(
        op,
        lambda: s1.upload(t1, delta_like(model, 0.1), stage=common_pb2.STAGE_MASKED_INPUT),
        grpc.StatusCode.FAILED_PRECONDITION,
        "replayed",
        "update_refused",
    )
    _still_serving(op, s1, s2, t1, t2, model)


def test_wrong_tensor_shape(round1):
    """An update whose tensors differ in shape from the model's is INVALID_ARGUMENT."""
    op, s1, s2, t1, t2, model = round1[:6]
    wrong = [(n, np.zeros(a.size, dtype=np.float32)) for n, a in model]
    _refused(
        op,
        lambda: s1.upload(t1, wrong),
        grpc.StatusCode.INVALID_ARGUMENT,
        "malformed",
        "update_refused",
    )
    _still_serving(op, s1, s2, t1, t2, model)


def test_nan_values(round1):
    """An update holding NaN is refused as non-finite."""
    op, s1, s2, t1, t2, model = round1[:6]
    bad = delta_like(model, 0.1)
    bad[0][1][0, 0] = np.nan
    _refused(
        op,
        lambda: s1.upload(t1, bad),
        grpc.StatusCode.INVALID_ARGUMENT,
        "non_finite",
        "update_refused",
    )
    _still_serving(op, s1, s2, t1, t2, model)


def test_oversized_blob(round1):
    """A blob declaring one byte more than the model is RESOURCE_EXHAUSTED before data flows."""
    op, s1, s2, t1, t2, model = round1[:6]
    bigger = [*model[:-1], (model[-1][0], np.zeros(model[-1][1].size + 1, dtype=np.float32))]
    _refused(
        op,
        lambda: s1.upload(t1, bigger),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "oversized",
        "update_refused",
    )
    _still_serving(op, s1, s2, t1, t2, model)


def test_chunk_before_header(round1):
    """An upload that starts with a chunk instead of its signed header is malformed."""
    op, s1, s2, t1, t2, model = round1[:6]
    parts = s1.upload_parts(t1, delta_like(model, 0.1))
    _refused(
        op,
        lambda: s1.fed.Upload(iter(parts[1:] + parts[:1]), timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "malformed",
        "update_refused",
    )
    _still_serving(op, s1, s2, t1, t2, model)


def test_site_not_selected(round1):
    """A site that joined after the round started may not upload to it."""
    op, s1, s2, t1, t2, model, site = round1
    s3 = site("site-3")
    s3.connect()
    _refused(
        op,
        lambda: s3.upload(t1, delta_like(model, 0.1)),
        grpc.StatusCode.PERMISSION_DENIED,
        "not_selected",
        "update_refused",
    )
    _still_serving(op, s1, s2, t1, t2, model)


def test_site_calling_admin(round1):
    """A site certificate calling the Admin service gets PERMISSION_DENIED."""
    op, s1 = round1[0], round1[1]
    from confide.v1 import admin_pb2_grpc

    stub = admin_pb2_grpc.AdminStub(s1.channel)
    _refused(
        op,
        lambda: stub.ListJobs(admin_pb2.ListJobsRequest(), timeout=10),
        grpc.StatusCode.PERMISSION_DENIED,
        "unauthorized",
        "admin_refused",
    )


def test_unknown_job_download(round1):
    """Downloading a model of an unknown job is NOT_FOUND."""
    op, s1 = round1[0], round1[1]
    _refused(
        op,
        lambda: s1.download("nope", "00" * 32),
        grpc.StatusCode.NOT_FOUND,
        "unknown_job",
        "download_refused",
    )


def test_invalid_job_refused(clients):
    """A job spec that fails validation is INVALID_ARGUMENT and audited."""
    _, operator = clients
    op = operator()
    _refused(
        op,
        lambda: op.submit(tiny_spec(rounds=0)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid_value",
        "job_refused",
    )


def _finish_round(s1, s2, t1, t2, model):
    assert s1.upload(t1, delta_like(model, 0.1)) == ACK
    assert s2.upload(t2, delta_like(model, 0.1)) == ACK


@pytest.fixture
def last_round(clients):
    """A one-round job with two sites whose round is complete: EVALUATE tasks are out."""
    op, job_id, s1, s2, t1, t2, model = _start_round(clients, rounds=1)
    _finish_round(s1, s2, t1, t2, model)
    e1 = s1.next_task(federation_pb2.TASK_KIND_EVALUATE)
    e2 = s2.next_task(federation_pb2.TASK_KIND_EVALUATE)
    return op, job_id, s1, s2, e1, e2


def test_retried_evaluate_report_is_counted_once(last_round):
    """A second EVALUATE report from the same site is refused and not counted again."""
    op, job_id, s1, s2, e1, e2 = last_round
    s1.report(e1, metrics={"accuracy": 1.0, "loss": 0.0}, num_samples=10)
    _refused(
        op,
        lambda: s1.report(e1, metrics={"accuracy": 1.0, "loss": 0.0}, num_samples=10),
        grpc.StatusCode.FAILED_PRECONDITION,
        "replayed",
        "report_refused",
    )
    s2.report(e2, metrics={"accuracy": 0.0, "loss": 1.0}, num_samples=10)
    st = op.admin.GetJob(admin_pb2.JobRef(job_id=job_id))
    assert st.state == admin_pb2.JOB_STATE_DONE
    assert (st.final_accuracy, st.final_eval_samples) == (0.5, 20)


def test_evaluate_report_during_a_round_is_refused_and_not_counted(round1):
    """An EVALUATE report while the round collects updates is WRONG_STAGE and counts nowhere."""
    op, s1, s2, t1, t2, model = round1[:6]
    _refused(
        op,
        lambda: s1.report(
            t1, kind=federation_pb2.TASK_KIND_EVALUATE, metrics={"accuracy": 1.0}, num_samples=99
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "wrong_stage",
        "report_refused",
    )
    _finish_round(s1, s2, t1, t2, model)
    r1, r2 = (s.next_task(federation_pb2.TASK_KIND_TRAIN) for s in (s1, s2))  # round 2 of 2
    _finish_round(s1, s2, r1, r2, model)
    for s in (s1, s2):
        s.report(s.next_task(federation_pb2.TASK_KIND_EVALUATE), metrics={}, num_samples=10)
    st = op.admin.GetJob(admin_pb2.JobRef(job_id=t1.job_id))
    assert st.state == admin_pb2.JOB_STATE_DONE
    assert (st.final_accuracy, st.final_eval_samples) == (0.0, 20)


def test_late_failure_report_does_not_overwrite_an_accepted_update(round1):
    """A FAILED report after a site's update was accepted is refused; its ok row and ε stay."""
    op, s1, _s2, t1, _t2, model = round1[:6]
    assert s1.upload(t1, delta_like(model, 0.1), epsilon=0.75) == ACK
    _refused(
        op,
        lambda: s1.report(t1, outcome=common_pb2.OUTCOME_FAILED),
        grpc.StatusCode.FAILED_PRECONDITION,
        "replayed",
        "report_refused",
    )
    st = op.admin.GetJob(admin_pb2.JobRef(job_id=t1.job_id))
    row = next(s for s in st.rounds[0].sites if s.site_id == "site-1")
    assert row.outcome == common_pb2.OUTCOME_OK and row.epsilon == 0.75
    assert st.epsilon_by_site["site-1"] == 0.75


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"metrics": {"eval_loss": float("nan")}}, "non_finite"),
        ({"metrics": {"eval_accuracy": float("inf")}}, "non_finite"),
        ({"metrics": {"eval_samples": -4.0}}, "malformed"),
        ({"epsilon": float("nan")}, "non_finite"),
        ({"epsilon": -0.5}, "malformed"),
    ],
)
def test_update_with_bad_metrics_or_epsilon_is_refused(round1, kw, reason):
    """An update header with a non-finite or negative metric or epsilon is refused."""
    op, s1, s2, t1, t2, model = round1[:6]
    _refused(
        op,
        lambda: s1.upload(t1, delta_like(model, 0.1), **kw),
        grpc.StatusCode.INVALID_ARGUMENT,
        reason,
        "update_refused",
    )
    _still_serving(op, s1, s2, t1, t2, model)


def test_evaluate_report_with_non_finite_metrics_is_refused(last_round):
    """An EVALUATE report carrying NaN is refused and the site may still report properly."""
    op, job_id, s1, s2, e1, e2 = last_round
    _refused(
        op,
        lambda: s1.report(e1, metrics={"accuracy": float("nan")}, num_samples=10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "non_finite",
        "report_refused",
    )
    s1.report(e1, metrics={"accuracy": 1.0, "loss": 0.0}, num_samples=10)
    s2.report(e2, metrics={"accuracy": 1.0, "loss": 0.0}, num_samples=10)
    st = op.admin.GetJob(admin_pb2.JobRef(job_id=job_id))
    assert (st.state, st.final_accuracy) == (admin_pb2.JOB_STATE_DONE, 1.0)


def test_second_concurrent_upload_of_a_site_is_refused(round1, monkeypatch):
    """While a site's upload for a job is in flight, a second one from it is REPLAYED."""
    op, s1, s2, t1, t2, model = round1[:6]
    parts = s1.upload_parts(t1, delta_like(model, 0.1))
    release = threading.Event()
    assembling: list[int] = []  # an upload builds its assembler once it holds its slot
    real = servicer.BlobAssembler

    def counting(*args, **kwargs):
        assembling.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(servicer, "BlobAssembler", counting)

    def stalled():
        yield parts[0]
        release.wait(30)

    first = s1.fed.Upload.future(stalled(), timeout=30)
    try:
        wait_for(lambda: assembling, timeout=30, what="the stalled upload to hold its slot")
        _refused(
            op,
            lambda: s1.upload(t1, delta_like(model, 0.1)),
            grpc.StatusCode.FAILED_PRECONDITION,
            "replayed",
            "update_refused",
        )
    finally:
        with capture_logs() as logs:  # the handler logs the cancel once it freed the slot
            first.cancel()
            release.set()
            ended = {"event": "rpc_cancelled", "rpc_event": "update_refused"}
            wait_for(
                lambda: [e for e in logs if ended.items() <= e.items()],
                timeout=30,
                what="the server to end the cancelled upload",
            )
    _still_serving(op, s1, s2, t1, t2, model)


def test_update_with_an_infinite_epsilon_is_accepted(round1):
    """An epsilon of +inf (no finite DP guarantee) is a valid report, not a refusal."""
    _op, s1, s2, t1, t2, model = round1[:6]
    assert s1.upload(t1, delta_like(model, 0.1), epsilon=float("inf")) == ACK
    assert s2.upload(t2, delta_like(model, 0.1)) == ACK
