"""Manual approval: pending, approved, denied and expired jobs, and the local API that answers."""

from __future__ import annotations

import time

import grpc
import pytest

from agent.admission.approvals import RULE, ApprovalError, Approvals, ApprovalState
from agent.local.api import AgentApi, connect_api
from agent.local.approvals_cli import approve_command, deny_command, jobs_command
from agent.local.audit import SiteAudit
from agent.tasks.runner import TaskOutcome
from confide.v1 import agent_pb2, agent_pb2_grpc, common_pb2
from tests.agent.conftest import job_spec, report_of, signed_task
from tests.agent.fakes import FakeTransport


class _Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def manual(runner, tmp_path):
    """The shared runner under manual approval (requests expire after 60 s) and its clock."""
    clock = _Clock()
    runner.audit = SiteAudit(tmp_path / "audit.db")
    runner.approvals = Approvals(tmp_path / "approvals.db", expires_s=60.0, audit=runner.audit)
    runner._clock = clock
    return runner, clock


def _again(task, task_id):
    """The same signed job's next task (the aggregator resends the operator's envelope)."""
    again = type(task)()
    again.CopyFrom(task)
    again.task_id = task_id
    return again


def _refusal(pki, aggregator, i=-1):
    rep = report_of(pki, aggregator.reports[i])
    assert rep.outcome == common_pb2.OUTCOME_REFUSED
    return rep


def test_first_task_waits_and_is_listed_with_its_facts(pki, manual, aggregator, workers):
    """An unapproved job's task is refused approval_pending, naming the rule, and is filed."""
    runner, clock = manual
    task = signed_task(pki.alice)
    assert runner.run(task, FakeTransport(aggregator)) is TaskOutcome.REFUSED
    rep = _refusal(pki, aggregator)
    assert rep.reason == "approval_pending" and RULE in rep.message
    assert not workers.started and not aggregator.uploads
    [req] = runner.approvals.requests()
    assert (req.job_id, req.signer, req.dataset, req.rounds) == ("job-1", "alice", "tabular", 3)
    assert req.code_sha256 == "builtin:MODEL_KIND_LOGREG"
    assert req.privacy == "no privacy protection"
    assert req.state is ApprovalState.PENDING and req.expires_at == clock.t + 60.0
    end = [e for e in runner.audit.entries() if e.event == "task_ended"][-1]
    assert (end.decision, end.reason, end.rule) == ("refused", "approval_pending", RULE)


def test_approval_lets_that_job_run(pki, manual, aggregator):
    """After approve(job) the job's next task trains and uploads."""
    runner, clock = manual
    first = signed_task(pki.alice)
    runner.run(first, FakeTransport(aggregator))
    runner.approvals.approve("job-1", now=clock.t)
    assert runner.run(_again(first, "t2"), FakeTransport(aggregator)) is (TaskOutcome.OK)
    assert len(aggregator.uploads) == 1
    events = [e.event for e in runner.audit.entries()]
    assert "job_approved" in events
    assert runner.audit.verify() == len(events)


def test_approval_does_not_cover_another_job(pki, manual, aggregator):
    """Approving one job leaves a second, differently signed job pending."""
    runner, clock = manual
    first = signed_task(pki.alice)
    runner.run(first, FakeTransport(aggregator))
    runner.approvals.approve("job-1", now=clock.t)
    spec = job_spec()
    spec.rounds = 4
    other = signed_task(pki.alice, spec=spec, job_id="job-2", task_id="t9")
    assert runner.run(other, FakeTransport(aggregator)) is TaskOutcome.REFUSED
    assert _refusal(pki, aggregator).reason == "approval_pending"


def test_approved_signed_job_under_another_job_id_is_refused(pki, manual, aggregator):
    """The same signed job presented under a second job id does not ride on the approval."""
    runner, clock = manual
    task = signed_task(pki.alice)
    runner.run(task, FakeTransport(aggregator))
    runner.approvals.approve("job-1", now=clock.t)
    task.job_id, task.task_id = "job-evil", "t3"
    runner.job_bindings = None  # the approval check itself must hold, not only the binding
    assert runner.run(task, FakeTransport(aggregator)) is TaskOutcome.REFUSED
    assert _refusal(pki, aggregator).reason == "replayed"


def test_denied_job_is_refused_with_denied(pki, manual, aggregator):
    """A denied job's tasks are refused denied, naming the approval rule; the reason is audited."""
    runner, clock = manual
    first = signed_task(pki.alice)
    runner.run(first, FakeTransport(aggregator))
    runner.approvals.deny("job-1", reason="not this quarter", now=clock.t)
    assert runner.run(_again(first, "t2"), FakeTransport(aggregator)) is (TaskOutcome.REFUSED)
    rep = _refusal(pki, aggregator)
    assert rep.reason == "denied" and RULE in rep.message
    denied = [e for e in runner.audit.entries() if e.event == "job_denied"]
    assert denied[0].detail == "not this quarter"


def test_unanswered_request_expires_and_the_aggregator_sees_why(pki, manual, aggregator):
    """Past expires_s with no answer, the job's tasks are refused approval_expired."""
    runner, clock = manual
    first = signed_task(pki.alice)
    runner.run(first, FakeTransport(aggregator))
    clock.t += 59.0
    runner.run(_again(first, "t2"), FakeTransport(aggregator))
    assert _refusal(pki, aggregator).reason == "approval_pending"
    clock.t += 1.0
    runner.run(_again(first, "t3"), FakeTransport(aggregator))
    assert _refusal(pki, aggregator).reason == "approval_expired"
    assert runner.approvals.requests()[0].state is ApprovalState.EXPIRED
    assert any(e.event == "approval_expired" for e in runner.audit.entries())


def test_answers_survive_a_restart(pki, manual, aggregator, tmp_path):
    """An approval is durable: a new Approvals on the same file still approves the job."""
    runner, clock = manual
    first = signed_task(pki.alice)
    runner.run(first, FakeTransport(aggregator))
    runner.approvals.approve("job-1", now=clock.t)
    runner.approvals.close()
    runner.approvals = Approvals(tmp_path / "approvals.db", expires_s=60.0, audit=runner.audit)
    assert runner.run(_again(first, "t2"), FakeTransport(aggregator)) is (TaskOutcome.OK)


def test_unknown_job_cannot_be_decided(tmp_path):
    """Approving a job nobody asked about raises ApprovalError unknown_job."""
    approvals = Approvals(":memory:", audit=SiteAudit(":memory:"))
    with pytest.raises(ApprovalError) as err:
        approvals.approve("nope", now=0.0)
    assert err.value.reason.value == "unknown_job"


def test_untrusted_signer_never_reaches_the_operator(pki, manual, aggregator):
    """A job the policy refuses is never filed for approval."""
    runner, _clock = manual
    runner.run(signed_task(pki.mallory), FakeTransport(aggregator))
    assert _refusal(pki, aggregator).reason == "signer_untrusted"
    assert runner.approvals.requests() == []


@pytest.fixture
def served(pki, manual, aggregator, tmp_path):
    """The manual runner with one pending job, its approvals served on a real unix socket."""
    runner, _ = manual
    first = signed_task(pki.alice)
    runner.run(first, FakeTransport(aggregator))
    sock = tmp_path / "agent.sock"
    api = AgentApi(sock, status=agent_pb2.AgentStatus, approvals=runner.approvals)
    api.start()
    yield runner, sock
    api.stop(grace=0)


def test_cli_lists_approves_and_refuses_a_second_answer(served, capsys):
    """jobs lists the pending job; approve answers it; a second approve or deny exits 1."""
    runner, sock = served
    assert jobs_command(sock, include_decided=False) == 0
    out = capsys.readouterr().out
    assert "job-1  [pending]  signer alice" in out and "dataset tabular  rounds 3" in out
    assert approve_command(sock, "job-1") == 0
    assert runner.approvals.requests(include_decided=True)[0].state is ApprovalState.APPROVED
    assert deny_command(sock, "job-1", reason="late") == 1
    assert "already approved" in capsys.readouterr().err
    assert approve_command(sock, "job-404") == 1


def test_api_deny_needs_a_reason_and_auto_mode_refuses_answers(served, tmp_path):
    """Deny without a reason is INVALID_ARGUMENT; an auto-mode agent refuses approve."""
    _runner, sock = served
    with connect_api(sock) as ch:
        stub = agent_pb2_grpc.AgentControlStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            stub.Deny(agent_pb2.DenyRequest(job_id="job-1", reason=" "), timeout=5)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    auto = AgentApi(tmp_path / "auto.sock", status=agent_pb2.AgentStatus)
    auto.start()
    try:
        with connect_api(tmp_path / "auto.sock") as ch:
            stub = agent_pb2_grpc.AgentControlStub(ch)
            assert stub.Jobs(agent_pb2.JobsRequest(), timeout=5).mode == "auto"
            with pytest.raises(grpc.RpcError) as err:
                stub.Approve(agent_pb2.ApproveRequest(job_id="job-1"), timeout=5)
            assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    finally:
        auto.stop(grace=0)
