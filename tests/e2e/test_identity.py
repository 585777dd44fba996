"""Identity mistakes, said plainly, with real processes: two agents on one site identity."""

from __future__ import annotations

import json

import pytest

from confide_dev.localfed import LocalFederation
from confide_dev.localfed.federation import _AGENT

from .conftest import site_setup

pytestmark = pytest.mark.e2e


def _events(fed: LocalFederation, name: str, log) -> list[dict]:
    text = log.read_text(errors="replace") if log is not None else fed.log_tail(name, 5000)
    return [json.loads(ln) for ln in text.splitlines() if ln.startswith("{")]


def test_two_agents_with_one_identity_do_not_flap_and_both_sides_say_why(federation, bc3):
    """The second agent is refused identity_in_use and says so; the first stays connected."""
    federation.make_pki(["site-1"])
    federation.start_aggregator()
    federation.start_agent(site_setup("site-1", bc3, 0))
    federation.wait_for_sites(1)
    d = federation.site_dirs["site-1"]
    twin = d / "twin"
    twin.mkdir()
    cfg = (d / "agent.toml").read_text()
    cfg = cfg.replace(str(d / "state"), str(twin / "state"))
    cfg = cfg.replace(str(d / "agent.sock"), str(twin / "agent.sock"))
    (twin / "agent.toml").write_text(cfg)
    log = twin / "agent.log"
    proc = federation._spawn(_AGENT, twin / "agent.toml", log)
    try:

        def refused_twice() -> bool:
            return (
                sum(e.get("event") == "identity_in_use" for e in _events(federation, "", log)) >= 2
            )

        federation.wait_for(refused_twice, timeout=60, what="the twin to be refused twice")
        first = _events(federation, "site-1", None)
        assert sum(e.get("event") == "connected" for e in first) == 1, "the first agent flapped"
        assert not any(e.get("event") == "connected" for e in _events(federation, "", log))
        said = next(e for e in _events(federation, "", log) if e.get("event") == "identity_in_use")
        assert "another agent is connected with this site's identity" in said["error"]
        agg = _events(federation, "aggregator", None)
        refusals = [e for e in agg if e.get("reason") == "identity_in_use"]
        assert (
            refusals and "a second agent with the same identity is refused" in refusals[0]["error"]
        )
        assert proc.poll() is None and federation.agents["site-1"].poll() is None
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
