"""The site's identity in force: reload on SIGHUP, the next connection takes it, an expired
certificate is said once and retried on the backoff."""

from __future__ import annotations

import os
import shutil
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.assembly import reload_identity
from agent.link.identity import IdentityHolder
from agent.link.session import Session
from agent.local.audit import SiteAudit
from agent.local.selfcheck import check_identity
from confide.errors import ConfigError
from confide.pki import (
    CertificateExpired,
    Identity,
    Role,
    load_identity,
    make_key_and_csr,
    renew,
    revoke,
    sign_csr,
)
from confide.v1 import common_pb2, federation_pb2
from confide.wire import Binding, open_envelope
from tests.agent.conftest import FEDERATION, Pki, signed_task
from tests.agent.fakes import FakeAggregator
from tests.support.wait import wait_for

NAME = "site-1"


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


@pytest.fixture
def site(pki: Pki, tmp_path: Path) -> Path:
    """site-1's files copied to a folder of its own (the tests replace them)."""
    d = tmp_path / "site"
    d.mkdir()
    for f in (f"{NAME}.crt", f"{NAME}.key", f"{NAME}.sign.key", "ca.crt", "crl.pem"):
        shutil.copy2(pki.dir / f, d / f)
    return d


def _load(d: Path) -> Identity:
    return load_identity(
        cert=d / f"{NAME}.crt",
        key=d / f"{NAME}.key",
        signing_key=d / f"{NAME}.sign.key",
        ca=d / "ca.crt",
        crl=d / "crl.pem",
    )


def _holder(d: Path, identity: Identity | None = None) -> IdentityHolder:
    return IdentityHolder(
        identity or _load(d),
        load=lambda: _load(d),
        check=lambda new: check_identity(new.info, federation=FEDERATION, site=None),
    )


def _rekey(pki: Pki, d: Path) -> None:
    """New TLS and signing keys for site-1 with a certificate for them, put in place."""
    new = d / "rekey"
    csr = make_key_and_csr(new, NAME, role=Role.SITE)
    cert = sign_csr(pki.dir, csr.read_bytes(), role=Role.SITE)
    for f in (f"{NAME}.key", f"{NAME}.sign.key"):
        _replace(d / f, (new / f).read_bytes())
    _replace(d / f"{NAME}.crt", cert)


def test_reload_puts_a_renewed_certificate_in_force(pki: Pki, site: Path) -> None:
    """A renewed certificate passes the checks and becomes the identity in force."""
    holder = _holder(site)
    before = holder.current().info.serial
    _replace(site / f"{NAME}.crt", renew(pki.dir, (site / f"{NAME}.crt").read_bytes()))
    assert holder.reload().info.serial != before
    assert holder.current().info.serial != before


@pytest.mark.parametrize("what", ["garbage", "another-site", "key-mismatch"])
def test_a_broken_reload_is_refused_and_the_identity_in_force_stays(
    pki: Pki, site: Path, what: str
) -> None:
    """A truncated certificate, another site's identity, or a certificate for other keys is
    refused with a ConfigError naming the file or key; nothing changes."""
    holder = _holder(site)
    before = holder.current()
    if what == "garbage":
        _replace(site / f"{NAME}.crt", b"-----BEGIN CERTIFICATE-----\nMIIB")
    elif what == "another-site":
        for suffix in (".crt", ".key", ".sign.key"):
            _replace(site / f"{NAME}{suffix}", (pki.dir / f"site-2{suffix}").read_bytes())
    else:
        _replace(site / f"{NAME}.crt", (pki.dir / "site-2.crt").read_bytes())
    with pytest.raises(ConfigError) as err:
        holder.reload()
    assert err.value.key in {"tls.cert", str(site / f"{NAME}.crt"), str(site / f"{NAME}.key")}
    assert holder.current() is before


def test_an_older_crl_is_refused(pki: Pki, site: Path, tmp_path: Path) -> None:
    """A CRL older than the one in force would un-revoke: refused, naming tls.crl."""
    ca = tmp_path / "ca-copy"
    shutil.copytree(pki.dir, ca)  # revocations here stay out of the shared CA
    old_crl = (ca / "crl.pem").read_bytes()
    revoke(ca, "site-2", now=datetime.now(UTC) + timedelta(minutes=1))
    _replace(site / "crl.pem", (ca / "crl.pem").read_bytes())
    holder = _holder(site)
    _replace(site / "crl.pem", old_crl)
    with pytest.raises(ConfigError) as err:
        holder.reload()
    assert err.value.key == "tls.crl"
    assert holder.trust()[1] == (ca / "crl.pem").read_bytes()


def test_reload_identity_logs_and_audits_both_outcomes(pki: Pki, site: Path) -> None:
    """identity_reloaded, or identity_reload_refused naming the key, in the log and the trail."""
    holder = _holder(site)
    audit = SiteAudit(":memory:")
    with capture_logs() as logs:
        assert reload_identity(holder, audit=audit, now=1.0) is not None
        _replace(site / f"{NAME}.crt", b"not a certificate")
        assert reload_identity(holder, audit=audit, now=2.0) is None
    assert [e["event"] for e in logs] == ["identity_reloaded", "identity_reload_refused"]
    assert logs[1]["kept"] == "the identity in force"
    events = [(e.event, e.rule) for e in audit.entries()]
    assert events == [
        ("identity_reloaded", ""),
        ("identity_reload_refused", str(site / f"{NAME}.crt")),
    ]


def test_for_connection_refuses_an_expired_certificate(pki: Pki, site: Path) -> None:
    """An expired certificate is not dialled with: CertificateExpired carries its end."""
    holder = _holder(site)
    end = holder.current().info.not_after
    assert holder.for_connection(now=end) is holder.current()
    with pytest.raises(CertificateExpired) as err:
        holder.for_connection(now=end + timedelta(seconds=1))
    assert err.value.not_after == end and "confide pki renew" in err.value.message


def _session(runner, aggregator: FakeAggregator, holder: IdentityHolder, now, delays: list):
    def connect():
        current = holder.for_connection(now=now())
        runner.use_identity(current)
        return aggregator.connect()

    return Session(
        runner=runner,
        connect=connect,
        datasets=["tabular"],
        device="cpu",
        resources=lambda: federation_pb2.Resources(),
        rng=lambda: 1.0,
        sleep=delays.append,
    )


def test_an_expired_site_keeps_retrying_quietly_and_connects_after_a_reload(
    pki: Pki, site: Path, runner, aggregator: FakeAggregator
) -> None:
    """With an expired certificate nothing is dialled and no disconnected line is logged per
    try; the backoff grows; once a renewed certificate is reloaded the next try connects."""
    holder = _holder(site)
    end = holder.current().info.not_after
    clock = {"now": end + timedelta(days=1)}
    delays: list[float] = []
    session = _session(runner, aggregator, holder, lambda: clock["now"], delays)
    thread = threading.Thread(target=session.run, daemon=True)
    with capture_logs() as logs:
        thread.start()
        wait_for(lambda: len(delays), timeout=10, what="four tries", until=lambda n: n >= 4)
        assert aggregator.connects == 0
        assert delays[:4] == [0.5, 1, 2, 4]
        renewed = renew(pki.dir, (site / f"{NAME}.crt").read_bytes(), days=800)
        _replace(site / f"{NAME}.crt", renewed)
        holder.reload()
        wait_for(lambda: aggregator.streams, timeout=10, what="a connection after the reload")
        session.stop()
        thread.join(timeout=10)
    assert not [
        e for e in logs if e["event"] == "disconnected" and e["reason"] == "bad_certificate"
    ]
    assert any(e["event"] == "connected" for e in logs)


def test_an_open_connection_keeps_its_key_and_the_next_one_signs_with_the_new(
    pki: Pki, site: Path, runner, aggregator: FakeAggregator
) -> None:
    """After a reload with new keys, the task on the open stream is still signed with the
    key its certificate binds; the next connection registers with the new key."""
    holder = _holder(site)
    old_key = holder.current().info.signing_public_key
    session = _session(runner, aggregator, holder, lambda: datetime.now(UTC), [])
    thread = threading.Thread(target=session.run, daemon=True)
    thread.start()
    try:
        aggregator.wait_for(lambda: aggregator.streams)
        _rekey(pki, site)
        new_key = holder.reload().info.signing_public_key
        assert new_key != old_key
        aggregator.stream.push(signed_task(pki.alice))
        aggregator.wait_for(lambda: aggregator.uploads)
        header = aggregator.uploads[0].header
        open_envelope(
            header,
            verify_key=old_key,
            now=time.time(),
            expect=Binding(FEDERATION, NAME, common_pb2.STAGE_UPDATE, "job-1", 1),
        )
        aggregator.stream.end()  # the connection ends: the session reconnects
        aggregator.wait_for(lambda: len(aggregator.registers) == 2)
        open_envelope(
            aggregator.registers[1],
            verify_key=new_key,
            now=time.time(),
            expect=Binding(FEDERATION, NAME, common_pb2.STAGE_REGISTER),
        )
    finally:
        session.stop()
        thread.join(timeout=10)
