"""Reloading the aggregator's TLS material (SIGHUP): new certificate for new connections, open
streams kept, broken files refused with the old material still serving, CRLs applied at once."""

from __future__ import annotations

import os
import socket
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from structlog.testing import capture_logs

from aggregator.server import build
from confide.pki import Role, init_ca, issue, renew, revoke
from confide.pki import files as pki_files
from confide.pki.ca import build_leaf
from confide.pki.certinfo import cert_info
from tests.aggregator.conftest import make_config
from tests.aggregator.fakes import FEDERATION, FakeSite
from tests.support.wait import wait_for


def served_serial(port: int, pki: Path, name: str) -> int:
    """The serial of the certificate the server presents to a new TLS connection now."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki / "ca.crt")
    ctx.load_cert_chain(pki / f"{name}.crt", pki / f"{name}.key")
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def replace_file(path: Path, data: bytes) -> None:
    """Put ``data`` in place of ``path`` atomically, as an operator's ``mv`` would."""
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


@pytest.fixture
def pki(tmp_path) -> Path:
    """A CA of its own: these tests replace its files."""
    d = tmp_path / "pki"
    init_ca(d, federation=FEDERATION)
    issue(d, "aggregator", role=Role.AGGREGATOR, dns=["localhost"], ips=["127.0.0.1"])
    for s in ("site-1", "site-2"):
        issue(d, s, role=Role.SITE)
    return d


@pytest.fixture
def fed(pki, tmp_path):
    agg, port = build(make_config(pki, tmp_path / "state"))
    made: list[FakeSite] = []
    yield agg, port, made
    for c in made:
        c.disconnect()
        c.close()
    agg.stop(grace=0)


def _events(logs: list[dict], event: str) -> list[dict]:
    return [e for e in logs if e["event"] == event]


def test_renewed_certificate_serves_new_connections_and_open_streams_stay(pki, fed):
    """After a reload new handshakes get the renewed certificate; a site's open task stream
    and channel carry on, and a new site connects."""
    agg, port, made = fed
    s1 = FakeSite(pki, "site-1", port)
    made.append(s1)
    s1.connect()
    wait_for(
        agg.coordinator.connected, timeout=10, what="site-1's stream", until=lambda c: "site-1" in c
    )
    old = served_serial(port, pki, "site-2")
    assert old == _serial(pki / "aggregator.crt")
    replace_file(pki / "aggregator.crt", renew(pki, (pki / "aggregator.crt").read_bytes()))
    with capture_logs() as logs:
        assert agg.reload_tls() is True
    [said] = _events(logs, "tls_reloaded")
    assert said["serial"] == f"{_serial(pki / 'aggregator.crt'):x}"
    assert served_serial(port, pki, "site-2") == _serial(pki / "aggregator.crt") != old
    s1.heartbeat()  # the same channel, its connection not dropped
    assert "site-1" in agg.coordinator.connected()
    s2 = FakeSite(pki, "site-2", port)
    made.append(s2)
    s2.connect()
    wait_for(
        agg.coordinator.connected,
        timeout=10,
        what="both sites' streams",
        until=lambda c: set(c) == {"site-1", "site-2"},
    )
    events = [(e.event, e.actor) for e in agg.store.audit_entries()]
    assert ("tls_reloaded", "aggregator") in events
    assert ("site_stream_closed", "site-1") not in events


def _other_key(pki: Path) -> bytes:
    """A valid aggregator certificate of this CA, but for a key the aggregator does not hold."""
    return issue(pki, "agg-other", role=Role.AGGREGATOR).read_bytes()


def _site_role(pki: Path) -> bytes:
    """The aggregator's own key, certified by the CA as a site: a role it must keep."""
    ca_cert, ca_key = pki_files.load_ca(pki)
    own = x509.load_pem_x509_certificate((pki / "aggregator.crt").read_bytes())
    leaf = build_leaf(
        ca_cert,
        ca_key,
        name="aggregator",
        role=Role.SITE,
        tls_public_key=own.public_key(),  # type: ignore[arg-type]
        signing_public_key=cert_info(own).signing_public_key,
        dns=[],
        ips=[],
        days=30,
        now=datetime.now(UTC),
    )
    return leaf.public_bytes(serialization.Encoding.PEM)


def _expired(pki: Path) -> bytes:
    """The aggregator's certificate renewed for one day, a day and a minute ago."""
    then = datetime.now(UTC) - timedelta(days=1, minutes=1)
    return renew(pki, (pki / "aggregator.crt").read_bytes(), days=1, now=then)


@pytest.mark.parametrize(
    ("make", "key"),
    [
        (lambda pki: b"-----BEGIN CERTIFICATE-----\ntruncated", "aggregator.crt"),
        (_other_key, "aggregator.key"),
        (_site_role, "tls.cert"),
        (_expired, "aggregator.crt"),
    ],
    ids=["garbage", "another-key", "site-role", "expired"],
)
def test_a_broken_new_certificate_is_refused_and_the_old_keeps_serving(pki, fed, make, key):
    """A bad file at reload is refused naming it (log and audit); the certificate in force
    still serves new connections and open streams."""
    agg, port, made = fed
    s1 = FakeSite(pki, "site-1", port)
    made.append(s1)
    s1.connect()
    before = served_serial(port, pki, "site-2")
    replace_file(pki / "aggregator.crt", make(pki))
    with capture_logs() as logs:
        assert agg.reload_tls() is False
    [said] = _events(logs, "tls_reload_refused")
    assert key in said["key"] and said["kept"] == "the material in force"
    assert served_serial(port, pki, "site-2") == before
    s1.heartbeat()
    s2 = FakeSite(pki, "site-2", port)
    made.append(s2)
    assert s2.register().site_id == "site-2"
    refused = [e for e in agg.store.audit_entries() if e.event == "tls_reload_refused"]
    assert refused and refused[0].actor == "aggregator"


def test_reload_applies_a_new_crl_at_once_ending_a_revoked_sites_stream(pki, fed):
    """With no other call in between, a reload whose CRL lists a site ends its task stream;
    its calls are refused and the other site's go on."""
    agg, port, made = fed
    s1, s2 = FakeSite(pki, "site-1", port), FakeSite(pki, "site-2", port)
    made += [s1, s2]
    s1.connect()
    s2.connect()
    wait_for(
        agg.coordinator.connected,
        timeout=10,
        what="both sites' streams",
        until=lambda c: set(c) == {"site-1", "site-2"},
    )
    revoke(pki, "site-1")
    assert agg.reload_tls() is True
    assert set(agg.coordinator.connected()) == {"site-2"}
    with pytest.raises(grpc.RpcError) as err:
        s1.heartbeat()
    assert err.value.details() == "bad_certificate"
    s2.heartbeat()


def test_an_older_or_broken_crl_never_undoes_a_revocation(pki, fed):
    """Rolling crl.pem back to an older list is refused at reload and when the file is
    re-read; a garbage CRL is refused too, and neither shuts out the sites still valid."""
    agg, port, made = fed
    original = (pki / "crl.pem").read_bytes()
    s1, s2 = FakeSite(pki, "site-1", port), FakeSite(pki, "site-2", port)
    made += [s1, s2]
    s2.connect()
    revoke(pki, "site-1", now=datetime.now(UTC) + timedelta(minutes=1))
    assert agg.reload_tls() is True
    replace_file(pki / "crl.pem", original)
    with capture_logs() as logs:
        assert agg.reload_tls() is False
        s2.heartbeat()  # the file watch re-reads the rolled-back file: refused as well
    assert _events(logs, "tls_reload_refused")[0]["key"] == "tls.crl"
    assert "older" in _events(logs, "crl_reload_refused")[0]["error"]
    with pytest.raises(grpc.RpcError) as err:
        s1.register()
    assert err.value.details() == "bad_certificate"
    replace_file(pki / "crl.pem", b"-----BEGIN X509 CRL-----\ngarbage\n")
    with capture_logs() as logs:
        s2.heartbeat()
    assert _events(logs, "crl_reload_refused")
    with pytest.raises(grpc.RpcError) as err:
        s1.register()
    assert err.value.details() == "bad_certificate"
