"""Manual approval between real processes: the operator's approve over the unix socket lets
a waiting job train, and the site's audit trail records it and verifies."""

from __future__ import annotations

import pytest

from agent.local.api import connect_api
from agent.local.approvals_cli import approve_command
from agent.main import main
from confide.v1 import admin_pb2, agent_pb2, agent_pb2_grpc
from confide_dev.demo import demo_job

from .conftest import site_setup

pytestmark = pytest.mark.e2e


def test_manual_approval_holds_a_job_until_the_operator_approves(federation, bc3, capsys):
    """The job waits (approval_pending) until `approve`, then finishes; audit verify passes."""
    federation.make_pki(["site-1"])
    federation.start_aggregator(extra={"rounds": {"retry_backoff_s": 0.2, "max_round_retries": 8}})
    setup = site_setup("site-1", bc3, 0)
    setup.policy["approval"] = "manual"
    federation.start_agent(setup)
    federation.wait_for_sites(1)
    spec = demo_job(sites=1, rounds=1, features=bc3.features, secure=False, private=False, seed=0)
    job_id = federation.submit(spec)
    site = federation.site_dirs["site-1"]
    sock = site / "agent.sock"

    def pending() -> bool:
        with connect_api(sock) as ch:
            reply = agent_pb2_grpc.AgentControlStub(ch).Jobs(agent_pb2.JobsRequest(), timeout=5)
        return any(j.job_id == job_id and j.state == "pending" for j in reply.jobs)

    federation.wait_for(pending, timeout=120, what="the job to wait for approval")
    assert federation.job(job_id).state != admin_pb2.JOB_STATE_DONE
    assert approve_command(sock, job_id) == 0
    status = federation.wait_job(job_id, timeout=300)
    assert status.state == admin_pb2.JOB_STATE_DONE, status.error
    capsys.readouterr()
    assert main(["audit", "show", "--config", str(site / "agent.toml")]) == 0
    out = capsys.readouterr().out
    assert "job_approved" in out and "reason=approval_pending" in out
    assert "decision=approved outcome=ok" in out and "hash chain intact" in out
