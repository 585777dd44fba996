"""Certificate rotation with real processes over mTLS: SIGHUP reloads certificates, keys and the
CRL without dropping connections that stay valid, and an expired site waits for a renewal."""

from __future__ import annotations

import json
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from confide.pki import renew, revoke
from confide.v1 import admin_pb2
from confide_dev.demo import demo_job
from confide_dev.localfed import LocalFederation
from tests.aggregator.test_tls_reload import replace_file, served_serial

from .conftest import site_setup

pytestmark = pytest.mark.e2e


def _events(fed: LocalFederation, name: str) -> list[dict[str, object]]:
    text = fed.log_tail(name, 5000)
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _count(fed: LocalFederation, name: str, event: str) -> int:
    return sum(1 for e in _events(fed, name) if e.get("event") == event)


def _serial(pem: bytes) -> int:
    return x509.load_pem_x509_certificate(pem).serial_number


def _port(fed: LocalFederation) -> int:
    return int(fed.address.rpartition(":")[2])


def _connected(fed: LocalFederation) -> dict[str, bool]:
    fed.close_admin()  # a fresh channel: a new handshake with the certificate in force now
    sites = fed.admin().ListSites(admin_pb2.ListSitesRequest(), timeout=10)
    return {s.site_id: s.connected for s in sites.sites}


@pytest.mark.slow
def test_rotating_the_aggregator_and_a_site_during_a_job(federation, bc3):
    """Both certificates are renewed and reloaded by SIGHUP mid-job: the job finishes on the
    same connections, new handshakes get the new aggregator certificate, and once the old
    site certificate is revoked the site reconnects with its renewed one. Broken files at a
    later SIGHUP are refused and the certificates in force go on serving."""
    fed = federation
    fed.make_pki(["site-1", "site-2"])
    fed.start_aggregator()
    agents = {n: fed.start_agent(site_setup(n, bc3, i)) for i, n in enumerate(["site-1", "site-2"])}
    fed.wait_for_sites(2)
    ca, site_dir = fed.ca_dir, fed.site_dirs["site-1"]
    agg_crt, site_crt = ca / "aggregator.crt", site_dir / "site-1.crt"
    old_site_pem = site_crt.read_bytes()
    rounds = 16  # enough that a fast machine is still mid-job when both reloads are done
    spec = demo_job(
        sites=2, rounds=rounds, features=bc3.features, secure=False, private=False, seed=0
    )
    job = fed.submit(spec)

    def rounds_done() -> int:
        return sum(1 for r in fed.job(job).rounds if r.state == "done")

    fed.wait_for(lambda: rounds_done() >= 1, timeout=300, what="the first round")
    # The CA holder renews both; each machine puts its file in place and reloads.
    replace_file(agg_crt, renew(ca, agg_crt.read_bytes()))
    replace_file(site_crt, renew(ca, old_site_pem))
    assert fed.aggregator is not None
    fed.aggregator.send_signal(signal.SIGHUP)
    agents["site-1"].send_signal(signal.SIGHUP)
    fed.wait_for(lambda: _count(fed, "aggregator", "tls_reloaded") == 1, timeout=30, what="reload")
    fed.wait_for(lambda: _count(fed, "site-1", "identity_reloaded") == 1, timeout=30, what="reload")
    reloaded_at = rounds_done()
    assert served_serial(_port(fed), ca, "operator") == _serial(agg_crt.read_bytes())
    status = fed.wait_job(job, timeout=300)
    assert status.state == admin_pb2.JOB_STATE_DONE, status.error
    done = [r for r in status.rounds if r.state == "done"]
    assert len(done) == rounds and all(r.aggregated == 2 for r in done)
    assert reloaded_at < rounds, "the job had ended before the reload: nothing was rotated mid-job"
    for name in ("site-1", "site-2"):  # the same connections throughout
        assert _count(fed, name, "connected") == 1 and _count(fed, name, "disconnected") == 0
    # Revoking the old certificate ends site-1's stream, opened with it; the session's next
    # connection presents the renewed one and is let in.
    revoke(ca, old_site_pem)
    fed.aggregator.send_signal(signal.SIGHUP)
    fed.wait_for(lambda: _count(fed, "site-1", "connected") == 2, timeout=120, what="reconnect")
    fed.wait_for(lambda: _connected(fed).get("site-1") is True, timeout=60, what="site-1 back")
    assert _count(fed, "site-2", "disconnected") == 0
    # Broken files at the next SIGHUP: refused, logged, and the material in force serves on.
    good_agg = agg_crt.read_bytes()
    replace_file(agg_crt, good_agg[: len(good_agg) // 2])
    replace_file(site_crt, b"-----BEGIN CERTIFICATE-----\n")
    fed.aggregator.send_signal(signal.SIGHUP)
    agents["site-1"].send_signal(signal.SIGHUP)
    fed.wait_for(lambda: _count(fed, "aggregator", "tls_reload_refused") == 1, timeout=30, what="x")
    fed.wait_for(
        lambda: _count(fed, "site-1", "identity_reload_refused") == 1, timeout=30, what="x"
    )
    assert served_serial(_port(fed), ca, "operator") == _serial(good_agg)
    assert _connected(fed) == {"site-1": True, "site-2": True}
    assert _count(fed, "site-1", "connected") == 2
    for name in ("aggregator", "site-1", "site-2"):
        assert "Traceback" not in fed.log_tail(name, 5000)
    assert fed.stop() == {"site-1": 0, "site-2": 0, "aggregator": 0}


def test_an_expired_site_says_so_once_retries_and_connects_after_a_renewal(
    tmp_path: Path, bc3
) -> None:
    """A site whose certificate expired starts, logs certificate_expired once (date and fix)
    while it keeps trying, and connects after a renewed certificate and SIGHUP."""
    with LocalFederation(tmp_path / "fed", federation="e2e", log_level="debug") as fed:
        fed.make_pki(["site-1"])
        crt = fed.site_dirs["site-1"] / "site-1.crt"
        ended = datetime.now(UTC) - timedelta(days=1, minutes=2)  # ended two minutes ago
        replace_file(crt, renew(fed.ca_dir, crt.read_bytes(), days=1, now=ended))
        fed.start_aggregator()
        proc = fed.start_agent(site_setup("site-1", bc3, 0))

        def tries() -> int:
            return sum(
                1
                for e in _events(fed, "site-1")
                if e.get("event") == "not_connecting" and e.get("reason") == "certificate_expired"
            )

        fed.wait_for(lambda: tries() >= 3, timeout=60, what="three tries")
        [said] = [e for e in _events(fed, "site-1") if e.get("event") == "certificate_expired"]
        assert said["level"] == "error" and said["which"] == "certificate"
        assert str(said["not_after"]).startswith(f"{ended + timedelta(days=1):%Y-%m-%d}")
        assert "confide pki renew" in str(said["fix"])
        assert _count(fed, "site-1", "disconnected") == 0
        assert proc.poll() is None
        replace_file(crt, renew(fed.ca_dir, crt.read_bytes()))
        proc.send_signal(signal.SIGHUP)
        fed.wait_for_sites(1, timeout=90)
        assert _count(fed, "site-1", "certificate_expired") == 1
        assert "Traceback" not in fed.log_tail("site-1", 5000)
