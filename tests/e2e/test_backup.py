"""Backups taken from running daemons in the middle of a job, restored, and started from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.local.api import connect_api
from confide.v1 import admin_pb2, agent_pb2, agent_pb2_grpc
from confide_dev.demo import demo_job

from .conftest import download_model, site_setup, start_sites

pytestmark = pytest.mark.e2e

_AGGREGATOR = "import sys; from aggregator.main import main; sys.exit(main(sys.argv[1:]))"
_AGENT = "import sys; from agent.main import main; sys.exit(main(sys.argv[1:]))"


def _command(code: str, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(proc: subprocess.Popen[str]) -> str:
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    return out


def _budget(socket: Path) -> float:
    with connect_api(socket) as ch:
        reply = agent_pb2_grpc.AgentControlStub(ch).Budget(
            agent_pb2.BudgetRequest(), timeout=30, wait_for_ready=True
        )
    return sum(d.spent_epsilon for d in reply.datasets)


def _done(status: admin_pb2.JobStatus) -> dict[int, str]:
    return {r.round: r.model_version for r in status.rounds if r.state == "done"}


@pytest.mark.slow
def test_backups_taken_during_a_job_restore_and_the_daemons_start_from_them(
    federation, bc3, tmp_path
):
    """Backups of the aggregator and of a site, taken by the commands while a private job runs,
    restore over the stopped daemons' state; started from it, the aggregator has the job's
    rounds up to the backup with the same model versions (downloadable, hashes checked), and
    the site's ledger has every charge made before its backup and none made after."""
    start_sites(federation, bc3, 2)
    agg_cfg = federation.aggregator_dir / "aggregator.toml"
    site_cfg = federation.site_dirs["site-1"] / "agent.toml"
    socket = federation.site_dirs["site-1"] / "agent.sock"
    # Enough rounds that the job outlives the two backup commands (interpreter starts included)
    # on a fast machine too; that they were taken mid-job is asserted after the restore.
    spec = demo_job(sites=2, rounds=16, features=bc3.features, secure=False, private=True, seed=0)
    job_id = federation.submit(spec)
    federation.wait_for(
        lambda: len(_done(federation.job(job_id))) >= 1, timeout=300, what="a first round"
    )
    rounds_before = len(_done(federation.job(job_id)))
    spent_before = _budget(socket)
    backups = [
        _command(_AGGREGATOR, "backup", "--to", tmp_path / "agg", "--config", agg_cfg),
        _command(_AGENT, "backup", "--to", tmp_path / "site", "--config", site_cfg),
    ]
    for proc in backups:
        _finish(proc)
    final = federation.wait_job(job_id, timeout=300)
    assert final.state == admin_pb2.JOB_STATE_DONE, final.error
    spent_after = _budget(socket)
    assert spent_after > spent_before
    assert set(federation.stop().values()) == {0}

    agg_backup, site_backup = tmp_path / "agg", tmp_path / "site"
    restores = [
        _command(_AGGREGATOR, "restore", "--force", "--from", agg_backup, "--config", agg_cfg),
        _command(_AGENT, "restore", "--force", "--from", site_backup, "--config", site_cfg),
    ]
    agg_out, site_out = (_finish(proc) for proc in restores)
    assert "earlier contents are in" in agg_out
    assert "warning: the privacy ledger" in site_out

    # The site first, before it can reach the aggregator: its ledger as restored.
    federation.start_agent(site_setup("site-1", bc3, 0))
    restored_spent = _budget(socket)
    assert spent_before <= restored_spent < spent_after
    federation.start_aggregator(listen=federation.address)
    federation.wait_for_sites(1, timeout=90)
    restored = _done(federation.job(job_id))
    assert rounds_before <= len(restored) < len(_done(final))
    assert restored == {r: v for r, v in _done(final).items() if r in restored}
    for version in restored.values():
        assert download_model(federation, job_id, version, max_bytes=1 << 20, timeout=30)
