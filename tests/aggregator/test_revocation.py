"""Revocations take effect without a restart: the CRL is re-read when it changes."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import grpc
import pytest

from aggregator.server import build
from confide.pki import Role, init_ca, issue, revoke
from confide.v1 import admin_pb2, federation_pb2
from confide_dev.localfed import LocalFederation
from tests.aggregator.conftest import make_config
from tests.aggregator.fakes import FEDERATION, FakeSite, Operator, tiny_spec
from tests.support.wait import wait_for


@pytest.fixture
def pki_crl(tmp_path) -> Path:
    """A CA of its own (revocations here must not leak into other tests' PKI)."""
    d = tmp_path / "pki"
    init_ca(d, federation=FEDERATION)
    issue(d, "aggregator", role=Role.AGGREGATOR, dns=["localhost"], ips=["127.0.0.1"])
    for s in ("site-1", "site-2", "site-3"):
        issue(d, s, role=Role.SITE)
    for o in ("alice", "bob"):
        issue(d, o, role=Role.OPERATOR)
    return d


@pytest.fixture
def fed(pki_crl, tmp_path):
    agg, port = build(make_config(pki_crl, tmp_path / "state", crl=pki_crl / "crl.pem"))
    made: list = []
    yield agg, port, made
    for c in made:
        if isinstance(c, FakeSite):
            c.disconnect()
        c.close()
    agg.stop(grace=0)


def _wait_connected(agg, until, what: str) -> None:
    wait_for(lambda: set(agg.coordinator.connected()), until=until, timeout=30, what=what)


def test_revoked_site_loses_its_task_stream_at_its_next_heartbeat(pki_crl, fed):
    """After revoke, the site's heartbeat is refused and its open task stream is closed."""
    agg, port, made = fed
    s1, s2 = FakeSite(pki_crl, "site-1", port), FakeSite(pki_crl, "site-2", port)
    made += [s1, s2]
    s1.connect()
    s2.connect()
    s1.heartbeat()
    # Task streams and heartbeats run on separate handler pools: wait for both streams.
    _wait_connected(agg, lambda c: c == {"site-1", "site-2"}, "both task streams")
    revoke(pki_crl, "site-1")
    with pytest.raises(grpc.RpcError) as err:
        s1.heartbeat()
    assert err.value.details() == "bad_certificate"
    _wait_connected(agg, lambda c: "site-1" not in c, "site-1's stream to be dropped")
    wait_for(s1._stream.done, timeout=30, what="site-1's task stream to end at the site")
    assert "site-2" in agg.coordinator.connected()
    s2.heartbeat()
    with pytest.raises(grpc.RpcError) as err:
        s1.register()
    assert err.value.details() == "bad_certificate"
    events = [(e.event, e.actor) for e in agg.store.audit_entries()]
    assert ("site_stream_closed", "site-1") in events


def test_revoked_site_gets_no_more_tasks_after_any_call_notices_the_crl(pki_crl, fed):
    """Once any RPC re-reads the changed CRL, a revoked site's stream ends and it gets no task."""
    agg, port, made = fed
    s1, s2, s3 = (FakeSite(pki_crl, n, port) for n in ("site-1", "site-2", "site-3"))
    op = Operator(pki_crl, "alice", port)
    made += [s1, s2, s3, op]
    for s in (s1, s2, s3):
        s.connect()
    revoke(pki_crl, "site-3")
    s1.heartbeat()  # another site's call notices the new CRL
    _wait_connected(agg, lambda c: "site-3" not in c, "site-3's stream to be dropped")
    op.submit(tiny_spec())
    s1.next_task(federation_pb2.TASK_KIND_TRAIN)
    assert s3.tasks.empty()


def test_revoked_operator_is_refused_without_a_restart(pki_crl, fed):
    """An operator revoked while the aggregator runs is refused at its next call."""
    _agg, port, made = fed
    alice, bob = Operator(pki_crl, "alice", port), Operator(pki_crl, "bob", port)
    made += [alice, bob]
    alice.admin.ListJobs(admin_pb2.ListJobsRequest(), timeout=10)
    revoke(pki_crl, "alice")
    with pytest.raises(grpc.RpcError) as err:
        alice.admin.ListJobs(admin_pb2.ListJobsRequest(), timeout=10)
    assert err.value.details() == "bad_certificate"
    bob.admin.ListJobs(admin_pb2.ListJobsRequest(), timeout=10)


def test_the_configs_the_project_writes_refuse_a_revoked_site(tmp_path):
    """With the config `confide demo` writes (a real process), a revoked site cannot register."""
    with LocalFederation(tmp_path, federation=FEDERATION, log_level="warning") as fed:
        fed.make_pki(["site-1", "site-2"])
        revoke(fed.ca_dir, "site-1")
        fed.start_aggregator()
        written = tomllib.loads((fed.aggregator_dir / "aggregator.toml").read_text())
        assert written["tls"]["crl"] == str(fed.ca_dir / "crl.pem")
        port = int(fed.address.rpartition(":")[2])
        sites = []
        for name in ("site-1", "site-2"):
            shutil.copy(fed.ca_dir / "ca.crt", fed.site_dirs[name] / "ca.crt")
            sites.append(FakeSite(fed.site_dirs[name], name, port))
        try:
            with pytest.raises(grpc.RpcError) as err:
                sites[0].register()
            assert (err.value.code(), err.value.details()) == (
                grpc.StatusCode.UNAUTHENTICATED,
                "bad_certificate",
            )
            assert sites[1].register().site_id == "site-2"
        finally:
            for s in sites:
                s.close()
