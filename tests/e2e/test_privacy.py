"""Privacy at real sites: budgets are refused before they are overspent, also across kill -9."""

from __future__ import annotations

import signal
import sqlite3

import pytest

from agent.privacy.ledger import Ledger
from agent.privacy.plan import PrivacyPlan
from confide.dp.budget import cumulative_epsilon
from confide.v1 import admin_pb2
from confide_dev.demo import demo_job

from .conftest import site_setup

pytestmark = pytest.mark.e2e


def _ledger_states(path) -> list[tuple[int, str]]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return [(r, s) for r, s in conn.execute("SELECT round, state FROM entries ORDER BY id")]


def test_budget_cap_refuses_the_crossing_round_and_survives_kill_9(federation, bc3, tmp_path):
    """A site whose cap fits one round refuses the next; after kill -9 and restart it still does."""
    spec = demo_job(sites=2, rounds=2, features=bc3.features, secure=False, private=True, seed=0)
    spec.min_sites = 1
    # What one round costs site-1, computed as its daemon will (same spec, same data size).
    num_train = bc3.sizes[0] - round(bc3.sizes[0] * 0.25)
    scratch = Ledger.open(tmp_path / "scratch.db")
    plan = PrivacyPlan(scratch).plan(spec, job_id="x", num_train=num_train, min_update_noise=0.0)
    one, _ = cumulative_epsilon([plan.cost], delta=scratch.delta)
    two, _ = cumulative_epsilon([plan.cost, plan.cost], delta=scratch.delta)
    scratch.close()
    cap = (one + two) / 2  # one round fits, a second would cross
    federation.make_pki(["site-1", "site-2"])
    federation.start_aggregator()
    site1 = site_setup("site-1", bc3, 0, max_epsilon=cap)
    federation.start_agent(site1)
    federation.start_agent(site_setup("site-2", bc3, 1))
    federation.wait_for_sites(2)

    status = federation.wait_job(federation.submit(spec), timeout=300)
    assert status.state == admin_pb2.JOB_STATE_DONE, status.error
    by_round = {r.round: {s.site_id: s for s in r.sites} for r in status.rounds}
    assert by_round[1]["site-1"].outcome == 1  # OUTCOME_OK
    assert by_round[2]["site-1"].reason == "budget_exceeded"
    assert 0 < status.epsilon_by_site["site-1"] <= cap

    ledger_db = federation.site_dirs["site-1"] / "state" / "ledger.db"
    assert _ledger_states(ledger_db) == [(1, "sent")]
    federation.signal_agent("site-1", signal.SIGKILL)
    federation.agents["site-1"].wait(timeout=30)
    federation.start_agent(site1)
    federation.wait_for_sites(2)
    again = demo_job(sites=1, rounds=1, features=bc3.features, secure=False, private=True, seed=1)
    status2 = federation.wait_job(federation.submit(again), timeout=300)
    reasons = {s.site_id: s.reason for r in status2.rounds for s in r.sites}
    assert reasons["site-1"] == "budget_exceeded"
    assert _ledger_states(ledger_db) == [(1, "sent")]
