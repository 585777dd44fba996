"""Refusals at the federation's edge: bad certificates, and what the logs say about them."""

from __future__ import annotations

import json
import signal

import pytest

from confide import pki
from confide.v1 import admin_pb2
from confide_dev.demo import demo_job
from confide_dev.localfed import LocalFederation

from .conftest import site_setup

pytestmark = pytest.mark.e2e


def _events(log_text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]


def test_a_site_with_a_foreign_certificate_is_refused_and_nobody_crashes(tmp_path, bc3):
    """An agent whose certificate comes from another CA is refused; both daemons stay up."""
    fed = LocalFederation(tmp_path / "fed", federation="e2e")
    try:
        fed.make_pki(["site-1"])
        fed.start_aggregator()
        # Replace site-1's identity with one from a foreign CA (same names, other issuer).
        foreign = tmp_path / "foreign"
        pki.init_ca(foreign, federation="e2e")
        pki.issue(foreign, "site-1", role=pki.Role.SITE)
        d = fed.site_dirs["site-1"]
        for suffix in (".crt", ".key", ".sign.key"):
            (d / f"site-1{suffix}").unlink()
            (d / f"site-1{suffix}").write_bytes((foreign / f"site-1{suffix}").read_bytes())
            (d / f"site-1{suffix}").chmod(0o600)
        # The site trusts the CA that issued it (a site from another federation): its
        # identity loads, and the aggregator's handshake refuses it.
        proc = fed.start_agent(site_setup("site-1", bc3, 0), ca=foreign / "ca.crt")

        def refused() -> bool:
            return any(
                e.get("event") == "disconnected" for e in _events(fed.log_tail("site-1", 200))
            )

        fed.wait_for(refused, timeout=60, what="the agent to log its refused connection")
        assert proc.poll() is None
        assert fed.aggregator is not None and fed.aggregator.poll() is None
        sites = fed.admin().ListSites(admin_pb2.ListSitesRequest())
        assert not any(s.connected for s in sites.sites)
        for name in ("site-1", "aggregator"):
            assert "Traceback" not in fed.log_tail(name, 500)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        fed.stop()


def test_daemon_logs_are_json_events_with_job_round_and_site(federation, bc3):
    """Off a TTY the agent logs one JSON object per line, task events carrying job, round, site."""
    federation.make_pki(["site-1"])
    federation.start_aggregator()
    federation.start_agent(site_setup("site-1", bc3, 0))
    federation.wait_for_sites(1)
    spec = demo_job(sites=1, rounds=1, features=bc3.features, secure=False, private=False, seed=0)
    status = federation.wait_job(federation.submit(spec), timeout=300)
    lines = [ln for ln in federation.log_tail("site-1", 1000).splitlines() if ln.strip()]
    events = [json.loads(ln) for ln in lines]  # every line is JSON
    done = [e for e in events if e.get("event") == "task_done"]
    assert done and all({"job", "round", "site"} <= e.keys() for e in done)
    assert done[0]["job"] == status.job_id and done[0]["site"] == "site-1"
    agg = [json.loads(ln) for ln in federation.log_tail("aggregator", 1000).splitlines() if ln]
    assert any(e.get("event") == "aggregator_listening" for e in agg)
