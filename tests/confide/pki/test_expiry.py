"""Expiry: time left, the 14-day check, the daily reminder, expired identities, fresh CRLs."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from confide import pki
from confide.errors import ConfigError
from confide.pki.crl import check_crl
from confide.pki.expiry import ExpiryReminder, Validity, check_expiry, expiry
from tests.confide.pki.conftest import Federation


@pytest.fixture(scope="module")
def op(fed: Federation) -> x509.Certificate:
    """An operator certificate valid for 365 days from its issue."""
    path = pki.issue(fed.ca_dir, "op-expiry", role=pki.Role.OPERATOR, days=365)
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_seconds_until_expiry_counts_to_not_after_and_goes_negative(
    op: x509.Certificate, fed: Federation
) -> None:
    """The seconds left are not_after - now, the same for a certificate and its CertInfo."""
    end = op.not_valid_after_utc
    for now, left in ((end - timedelta(days=3), 3 * 86400.0), (end + timedelta(seconds=5), -5.0)):
        assert pki.seconds_until_expiry(op, now=now) == left
    info = pki.verify_certificate(
        (fed.ca_dir / "op-expiry.crt").read_bytes(), ca_pem=fed.ca_pem, now=end - timedelta(days=1)
    )
    assert pki.seconds_until_expiry(info, now=end) == 0.0


def test_check_expiry_on_both_sides_of_the_14_day_window_and_of_the_end(
    op: x509.Certificate,
) -> None:
    """14 days left passes; a second less warns; a second past the end is expired."""
    end = op.not_valid_after_utc
    check_expiry(op, now=end - timedelta(days=14))
    with pytest.raises(pki.CertificateExpiresSoon) as soon:
        check_expiry(op, now=end - timedelta(days=14) + timedelta(seconds=1))
    assert soon.value.not_after == end and "confide pki renew" in soon.value.message
    check_expiry(op, now=end - timedelta(days=2), within=timedelta(days=1))
    with pytest.raises(pki.CertificateExpiresSoon):
        check_expiry(op, now=end)  # the last valid instant still "expires soon"
    with pytest.raises(pki.CertificateExpired) as expired:
        check_expiry(op, now=end + timedelta(seconds=1))
    assert expired.value.not_after == end


def test_verify_certificate_says_expired_with_its_date(
    fed: Federation, op: x509.Certificate
) -> None:
    """An expired leaf raises CertificateExpired (a BadCertificate) carrying not_after."""
    end = op.not_valid_after_utc
    with pytest.raises(pki.CertificateExpired) as err:
        pki.verify_certificate(
            (fed.ca_dir / "op-expiry.crt").read_bytes(),
            ca_pem=fed.ca_pem,
            now=end + timedelta(seconds=1),
        )
    assert isinstance(err.value, pki.BadCertificate) and err.value.not_after == end


def test_reminder_says_it_first_then_once_a_day_and_at_once_when_it_expires(
    op: x509.Certificate,
) -> None:
    """Due at the first look within the window, not again within a day, again after one,
    and at once when the certificate turns from expiring to expired."""
    end = op.not_valid_after_utc
    r = ExpiryReminder()
    assert r.due({"certificate": op}, now=end - timedelta(days=30)) == []
    t0 = end - timedelta(days=10)
    [first] = r.due({"certificate": op}, now=t0)
    assert (first.event, first.which, first.name) == (
        "certificate_expiring",
        "certificate",
        "op-expiry",
    )
    assert first.fields()["days_left"] == 10.0 and "confide pki renew" in str(first.fields()["fix"])
    assert r.due({"certificate": op}, now=t0 + timedelta(hours=23, minutes=59)) == []
    assert len(r.due({"certificate": op}, now=t0 + timedelta(days=1))) == 1
    [gone] = r.due({"certificate": op}, now=end + timedelta(seconds=1))
    assert gone.event == "certificate_expired" and gone.expired
    assert r.due({"certificate": op}, now=end + timedelta(hours=1)) == []


def test_reminder_is_quiet_about_a_renewed_certificate(
    fed: Federation, op: x509.Certificate
) -> None:
    """After a renewal (another serial, far from its end) nothing more is said."""
    end = op.not_valid_after_utc
    r = ExpiryReminder()
    assert len(r.due({"certificate": op}, now=end - timedelta(days=5))) == 1
    renewed = x509.load_pem_x509_certificate(
        pki.renew(
            fed.ca_dir, (fed.ca_dir / "op-expiry.crt").read_bytes(), now=end - timedelta(days=5)
        )
    )
    assert r.due({"certificate": renewed}, now=end - timedelta(days=5, hours=-1)) == []


def _load(fed: Federation, d: Path, name: str, **kw: object) -> pki.Identity:
    return pki.load_identity(
        cert=d / f"{name}.crt",
        key=d / f"{name}.key",
        signing_key=d / f"{name}.sign.key",
        ca=fed.ca_dir / "ca.crt",
        crl=fed.ca_dir / "crl.pem",
        **kw,  # type: ignore[arg-type]
    )


def test_an_expired_identity_loads_only_when_allowed_and_never_when_revoked(
    fed: Federation, site_dir: Path, now: datetime
) -> None:
    """allow_expired loads an identity whose only fault is its age; a revoked one still fails."""
    csr = pki.enroll(site_dir, "old-site")
    # It ended two minutes ago (after the CA's start: the check runs as of its last moment).
    issued = now - timedelta(days=1, minutes=2)
    pem = pki.sign_csr(fed.ca_dir, csr.read_bytes(), role=pki.Role.SITE, days=1, now=issued)
    (site_dir / "old-site.crt").write_bytes(pem)
    with pytest.raises(ConfigError) as err:
        _load(fed, site_dir, "old-site")
    assert "expired" in err.value.problem
    identity = _load(fed, site_dir, "old-site", allow_expired=True)
    assert identity.info.not_after < now
    pki.revoke(fed.ca_dir, site_dir / "old-site.crt")
    with pytest.raises(ConfigError) as err:
        _load(fed, site_dir, "old-site", allow_expired=True)
    assert "revoked" in err.value.problem


def test_check_crl_refuses_garbage_foreign_and_older_lists(
    fed: Federation, foreign: Federation, now: datetime
) -> None:
    """A new CRL must be PEM, the CA's, and not older than the one in force."""
    old = fed.crl_pem
    pki.issue(fed.ca_dir, "crl-victim", role=pki.Role.OPERATOR)
    pki.revoke(fed.ca_dir, "crl-victim", now=now + timedelta(minutes=10))
    newer = fed.crl_pem
    check_crl(newer, ca_pem=fed.ca_pem, in_force=old)
    check_crl(newer, ca_pem=fed.ca_pem, in_force=newer)  # the same list again is fine
    with pytest.raises(pki.BadCertificate, match="older"):
        check_crl(old, ca_pem=fed.ca_pem, in_force=newer)  # a rollback un-revokes
    with pytest.raises(pki.BadCertificate):
        check_crl(foreign.crl_pem, ca_pem=fed.ca_pem, in_force=newer)
    with pytest.raises(pki.BadCertificate):
        check_crl(b"-----BEGIN X509 CRL-----\nnope\n", ca_pem=fed.ca_pem)


def test_the_doctor_and_the_daemons_draw_the_same_lines(op: x509.Certificate) -> None:
    """expiry (the doctor's) and check_expiry agree on either side of 14 days and of the end."""
    end = op.not_valid_after_utc
    classes = {
        Validity.VALID: None,
        Validity.EXPIRING: pki.CertificateExpiresSoon,
        Validity.EXPIRED: pki.CertificateExpired,
    }
    for delta in (14 * 86400 + 1, 14 * 86400, 14 * 86400 - 1, 1, 0, -1, -86400):
        now = end - timedelta(seconds=delta)
        verdict = expiry(not_before=op.not_valid_before_utc, not_after=end, now=now).validity
        raised = None
        try:
            check_expiry(op, now=now)
        except (pki.CertificateExpiresSoon, pki.CertificateExpired) as exc:
            raised = type(exc)
        assert raised is classes[verdict], (delta, verdict, raised)
