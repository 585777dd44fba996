"""Fixtures: a federation CA with an aggregator, three sites and an operator; a live server."""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregator.config import AggregatorConfig
from aggregator.server import build
from confide.pki import Role, init_ca, issue
from tests.aggregator.fakes import FEDERATION, FakeSite, Operator


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    init_ca(d, federation=FEDERATION)
    issue(d, "aggregator", role=Role.AGGREGATOR, dns=["localhost"], ips=["127.0.0.1"])
    for s in ("site-1", "site-2", "site-3", "site-4", "site-5"):
        issue(d, s, role=Role.SITE)
    issue(d, "alice", role=Role.OPERATOR)
    return d


def make_config(pki: Path, state: Path, **kw) -> AggregatorConfig:
    kw.setdefault("crl", pki / "crl.pem")
    return AggregatorConfig(
        federation=FEDERATION,
        listen="127.0.0.1:0",
        state_dir=state,
        ca=pki / "ca.crt",
        cert=pki / "aggregator.crt",
        key=pki / "aggregator.key",
        signing_key=pki / "aggregator.sign.key",
        **kw,
    )


@pytest.fixture
def server(pki, tmp_path):
    agg, port = build(make_config(pki, tmp_path / "state"))
    yield agg, port
    agg.stop(grace=0)


@pytest.fixture
def clients(pki, server):
    _, port = server
    made: list = []

    def site(name: str) -> FakeSite:
        made.append(FakeSite(pki, name, port))
        return made[-1]

    def operator(name: str = "alice") -> Operator:
        made.append(Operator(pki, name, port))
        return made[-1]

    yield site, operator
    for c in made:
        if isinstance(c, FakeSite):
            c.disconnect()
        c.close()
