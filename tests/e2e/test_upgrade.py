"""An upgrade: this release's daemons start on state files the previous release wrote.

``tests/fixtures/prev_release`` holds what release ee36e11 left after a finished private job
(its README says how it was made): the aggregator's store and model blobs, and two sites'
ledgers and audit trails. The state binds no keys, so the federation here has a new identity.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agent.local.api import connect_api
from agent.privacy.ledger import Ledger
from agent.privacy.plan import PrivacyPlan
from aggregator.store import StoreConfig, open_store
from confide.dp.budget import cumulative_epsilon
from confide.v1 import admin_pb2, agent_pb2, agent_pb2_grpc
from confide_dev.demo import demo_job

from .conftest import download_model, site_setup

pytestmark = pytest.mark.e2e

PREV = Path(__file__).resolve().parents[1] / "fixtures" / "prev_release"
SITES = ("site-1", "site-2")


def _budget(federation, site: str) -> float:
    with connect_api(federation.site_dirs[site] / "agent.sock") as ch:
        reply = agent_pb2_grpc.AgentControlStub(ch).Budget(agent_pb2.BudgetRequest(), timeout=30)
    (line,) = [d for d in reply.datasets if d.dataset == "breast_cancer"]
    return line.spent_epsilon


def test_the_previous_releases_state_upgrades_and_the_federation_resumes(federation, bc3, tmp_path):
    """On the previous release's files the old job and its models are intact, each site's
    earlier spend is still counted (a cap it now crosses refuses the new round), a new private
    job runs, and the audit chain the old release began continues unbroken."""
    facts = json.loads((PREV / "facts.json").read_text())
    federation.make_pki(list(SITES))
    shutil.copytree(PREV / "aggregator", federation.aggregator_dir / "state")
    for site in SITES:
        shutil.copytree(PREV / site, federation.site_dirs[site] / "state")

    spec = demo_job(sites=2, rounds=1, features=bc3.features, secure=False, private=True, seed=3)
    spec.min_sites = 1
    # site-1's cap: above what the new round costs on its own, below that round on top of
    # the previous release's charges, computed from the fixture as this release reads it.
    scratch_path = tmp_path / "scratch.db"
    shutil.copyfile(PREV / "site-1" / "ledger.db", scratch_path)
    with Ledger.open(scratch_path) as scratch:
        prior = [e.cost for e in scratch.entries("breast_cancer")]
        num_train = bc3.sizes[0] - round(bc3.sizes[0] * 0.25)
        planner = PrivacyPlan(scratch)
        plan = planner.plan(spec, job_id="x", num_train=num_train, min_update_noise=0.0)
        alone, _ = cumulative_epsilon([plan.cost], delta=scratch.delta)
        on_top, _ = cumulative_epsilon([*prior, plan.cost], delta=scratch.delta)
    assert len(prior) == 2 and alone < on_top
    cap = (alone + on_top) / 2

    federation.start_aggregator()
    federation.start_agent(site_setup("site-1", bc3, 0, max_epsilon=cap))
    federation.start_agent(site_setup("site-2", bc3, 1))
    federation.wait_for_sites(2)

    old = federation.job(facts["job_id"])
    assert old.state == admin_pb2.JOB_STATE_DONE
    assert [r.model_version for r in old.rounds if r.state == "done"] == facts["model_versions"]
    final = download_model(
        federation, facts["job_id"], facts["model_versions"][-1], max_bytes=1 << 20, timeout=30
    )
    assert final  # the blob reassembled, its bytes hashing to the version named
    for site in SITES:
        assert _budget(federation, site) == pytest.approx(facts["spent"][site], rel=1e-9)

    status = federation.wait_job(federation.submit(spec), timeout=300)
    assert status.state == admin_pb2.JOB_STATE_DONE, status.error
    answers = {s.site_id: s for r in status.rounds for s in r.sites}
    assert answers["site-1"].reason == "budget_exceeded"
    assert answers["site-2"].outcome == 1  # OUTCOME_OK
    assert _budget(federation, "site-1") == pytest.approx(facts["spent"]["site-1"], rel=1e-9)
    assert _budget(federation, "site-2") > facts["spent"]["site-2"]
    assert federation.stop() == {"site-1": 0, "site-2": 0, "aggregator": 0}

    store = open_store(StoreConfig(), state_dir=federation.aggregator_dir / "state")
    try:
        entries = store.audit_entries()
        assert store.verify_audit_chain() == len(entries)
        assert {e.job for e in entries} >= {facts["job_id"], status.job_id}
    finally:
        store.close()
