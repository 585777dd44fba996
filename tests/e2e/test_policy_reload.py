"""SIGHUP reloads a real agent's policy.toml without dropping its connection to the aggregator."""

from __future__ import annotations

import json
import shutil
import signal

import pytest

from confide.v1 import admin_pb2
from confide_dev.demo import demo_job
from confide_dev.localfed.federation import toml_text

from .conftest import site_setup

pytestmark = pytest.mark.e2e


def _events(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_sighup_reloads_policy_on_the_same_connection_and_a_broken_file_keeps_the_old(
    federation, bc3
):
    """After SIGHUP the next job is refused by the new rule on the same connection; a broken
    policy.toml is refused at reload and the previous policy stays in force."""
    federation.make_pki(["site-1"])
    federation.start_aggregator()
    setup = site_setup("site-1", bc3, 0)
    proc = federation.start_agent(setup, policy_file=True)
    federation.wait_for_sites(1)
    policy_path = federation.site_dirs["site-1"] / "policy.toml"
    assert "trusted_signers" in policy_path.read_text()

    def log_events() -> list[dict[str, object]]:
        return _events(federation.log_tail("site-1", 2000))

    def count(event: str) -> int:
        return sum(1 for e in log_events() if e.get("event") == event)

    sessions = count("connected")
    assert sessions == 1
    # The data owner stops trusting the federation's operator and reloads.
    tables = {"datasets": setup.datasets, "policy": {**setup.policy, "trusted_signers": ["x"]}}
    tables["sandbox"] = {"allow_unsandboxed": shutil.which("bwrap") is None}
    policy_path.write_text(toml_text(tables))
    proc.send_signal(signal.SIGHUP)
    federation.wait_for(
        lambda: count("policy_reloaded") == 1, timeout=30, what="the policy to reload"
    )
    spec = demo_job(sites=1, rounds=1, features=bc3.features, secure=False, private=False, seed=0)
    federation.submit(spec)

    def refused() -> list[dict[str, object]]:
        return [
            e
            for e in log_events()
            if e.get("event") == "task_failed" and e.get("reason") == "signer_untrusted"
        ]

    federation.wait_for(lambda: bool(refused()), timeout=120, what="the job to be refused")
    assert "policy.trusted_signers" in str(refused()[0]["error"])
    # A broken file: refused at reload, naming the key; the old policy stays in force.
    policy_path.write_text(toml_text({**tables, "policy": {"trusted_signers": "operator"}}))
    proc.send_signal(signal.SIGHUP)
    federation.wait_for(
        lambda: count("policy_reload_refused") == 1, timeout=30, what="the reload to be refused"
    )
    why = next(e for e in log_events() if e.get("event") == "policy_reload_refused")
    assert why["key"] == "policy.trusted_signers" and why["kept"] == "old policy"
    # Same connection throughout: one registration, no disconnect, still connected.
    assert proc.poll() is None
    assert count("connected") == sessions and count("disconnected") == 0
    sites = federation.admin().ListSites(admin_pb2.ListSitesRequest(), timeout=10)
    assert [s.connected for s in sites.sites] == [True]
    assert "Traceback" not in federation.log_tail("site-1", 2000)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
