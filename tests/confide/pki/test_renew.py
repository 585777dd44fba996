"""Renewal: a new certificate for an identity's existing keys, never for a revoked one."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from confide import pki
from confide.cli.main import main as confide_main
from confide.errors import Reason, Unauthorized
from confide.pki import files
from confide.pki.certinfo import OID_ROLE, encode_signing_key
from confide.pki.renew import latest_issued
from tests.confide.pki.conftest import Federation


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def _sans(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def _csr(key_pem: bytes, *, name: str, signing: bytes) -> bytes:
    """A CSR made with an existing TLS key (as a site renewing by CSR would)."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "site"),
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                ]
            )
        )
        .add_extension(encode_signing_key(signing), critical=False)
        .add_extension(x509.UnrecognizedExtension(OID_ROLE, b"site"), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def test_renewed_certificate_verifies_with_the_same_keys_and_names(
    fed: Federation, site_dir: Path, now: datetime
) -> None:
    """The renewal verifies, binds the same TLS and signing keys, subject and SANs, and has a
    new serial and a later end."""
    old_pem = fed.enroll_site(site_dir, "renew-a").read_bytes()
    new_pem = pki.renew(fed.ca_dir, old_pem, days=400, now=now)
    old, new = _cert(old_pem), _cert(new_pem)
    info = pki.verify_certificate(
        new_pem, ca_pem=fed.ca_pem, crl_pem=fed.crl_pem, now=now + timedelta(days=380)
    )
    assert files.spki(new.public_key()) == files.spki(old.public_key())
    assert (
        info.signing_public_key
        == pki.verify_certificate(old_pem, ca_pem=fed.ca_pem, now=now).signing_public_key
    )
    assert (new.subject, _sans(new)) == (old.subject, _sans(old))
    assert new.serial_number != old.serial_number
    assert new.not_valid_after_utc > old.not_valid_after_utc
    assert (fed.ca_dir / "issued" / f"{new.serial_number:x}.crt").read_bytes() == new_pem
    # The identity's own key files load against the renewed certificate: no key moved.
    (site_dir / "renew-a.crt").write_bytes(new_pem)
    assert fed.identity(site_dir, "renew-a").info.serial == new.serial_number


def test_an_aggregator_keeps_its_ip_and_dns_names(fed: Federation, now: datetime) -> None:
    """An aggregator's DNS and IP SANs and its server-auth usage survive renewal."""
    path = pki.issue(
        fed.ca_dir, "agg-renew", role=pki.Role.AGGREGATOR, dns=["fl.example"], ips=["10.0.0.7"]
    )
    old = _cert(path.read_bytes())
    new = _cert(pki.renew(fed.ca_dir, path.read_bytes(), now=now))
    assert _sans(new) == _sans(old)
    assert (
        new.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        == old.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )


def test_an_expired_certificate_is_renewed(fed: Federation, site_dir: Path, now: datetime) -> None:
    """Renewal is what fixes an expired certificate, so the source may have expired."""
    csr = pki.enroll(site_dir, "renew-expired")
    old_pem = pki.sign_csr(
        fed.ca_dir, csr.read_bytes(), role=pki.Role.SITE, days=1, now=now - timedelta(days=30)
    )
    with pytest.raises(pki.CertificateExpired):
        pki.verify_certificate(old_pem, ca_pem=fed.ca_pem, now=now)
    new_pem = pki.renew(fed.ca_dir, old_pem, now=now)
    assert pki.verify_certificate(new_pem, ca_pem=fed.ca_pem, crl_pem=fed.crl_pem, now=now)


def test_a_revoked_certificate_is_not_renewed(
    fed: Federation, site_dir: Path, now: datetime
) -> None:
    """A certificate on the CRL is refused: renewing would trust its keys again."""
    cert = fed.enroll_site(site_dir, "renew-revoked")
    pki.revoke(fed.ca_dir, cert)
    with pytest.raises(Unauthorized) as err:
        pki.renew(fed.ca_dir, cert.read_bytes(), now=now)
    assert err.value.reason is Reason.UNAUTHORIZED
    assert "revoked" in err.value.message


def test_a_renewal_does_not_revoke_the_old_certificate(
    fed: Federation, site_dir: Path, now: datetime
) -> None:
    """Both stay valid until the old one ends or is revoked, so rotation has no gap."""
    old_pem = fed.enroll_site(site_dir, "renew-overlap").read_bytes()
    pki.renew(fed.ca_dir, old_pem, now=now)
    pki.verify_certificate(old_pem, ca_pem=fed.ca_pem, crl_pem=fed.crl_pem, now=now)


def test_a_foreign_certificate_is_refused(
    foreign: Federation, fed: Federation, now: datetime
) -> None:
    """A certificate another CA issued is not renewed by this one."""
    path = pki.issue(foreign.ca_dir, "renew-foreign", role=pki.Role.OPERATOR)
    with pytest.raises(pki.BadCertificate):
        pki.renew(fed.ca_dir, path.read_bytes(), now=now)


def test_renewal_from_a_csr_made_with_the_same_keys(
    fed: Federation, site_dir: Path, now: datetime
) -> None:
    """A CSR with the identity's TLS key and signing key renews its latest certificate."""
    old_pem = fed.enroll_site(site_dir, "renew-csr").read_bytes()
    signing = pki.verify_certificate(old_pem, ca_pem=fed.ca_pem, now=now).signing_public_key
    csr = _csr((site_dir / "renew-csr.key").read_bytes(), name="renew-csr", signing=signing)
    new = _cert(pki.renew(fed.ca_dir, csr, now=now))
    assert files.spki(new.public_key()) == files.spki(_cert(old_pem).public_key())
    assert new.subject == _cert(old_pem).subject


def test_a_csr_with_another_signing_key_or_tls_key_is_refused(
    fed: Federation, site_dir: Path, now: datetime
) -> None:
    """A renewal keeps both keys: a CSR that swaps either is refused."""
    fed.enroll_site(site_dir, "renew-swap")
    key = (site_dir / "renew-swap.key").read_bytes()
    with pytest.raises(Unauthorized):
        pki.renew(fed.ca_dir, _csr(key, name="renew-swap", signing=bytes(32)), now=now)
    stranger = files.tls_key_pem(files.new_tls_key())
    with pytest.raises(pki.BadCertificate):
        pki.renew(fed.ca_dir, _csr(stranger, name="renew-swap", signing=bytes(32)), now=now)


def test_a_csr_for_another_name_is_refused(fed: Federation, site_dir: Path, now: datetime) -> None:
    """The CSR must name the identity whose key it carries: no renaming by renewal."""
    old_pem = fed.enroll_site(site_dir, "renew-name").read_bytes()
    signing = pki.verify_certificate(old_pem, ca_pem=fed.ca_pem, now=now).signing_public_key
    csr = _csr((site_dir / "renew-name.key").read_bytes(), name="someone-else", signing=signing)
    with pytest.raises(Unauthorized):
        pki.renew(fed.ca_dir, csr, now=now)


def test_latest_issued_picks_the_certificate_that_ends_last(
    fed: Federation, site_dir: Path, now: datetime
) -> None:
    """Renewal by name starts from the certificate issued to that name that ends last."""
    old_pem = fed.enroll_site(site_dir, "renew-latest").read_bytes()
    newer = pki.renew(fed.ca_dir, old_pem, days=800, now=now)
    assert latest_issued(fed.ca_dir, "renew-latest") == _cert(newer)


def test_cli_renews_by_file_and_by_name_and_refuses_a_revoked_one(
    fed: Federation, site_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`confide pki renew` writes NAME.renewed.crt (or --out), by file or name; exit 1 when
    the certificate is revoked, and it never overwrites a file."""
    cert = fed.enroll_site(site_dir, "renew-cli")
    out = tmp_path / "renewed.crt"
    argv = ["pki", "renew", str(cert), "--dir", str(fed.ca_dir), "--out", str(out)]
    assert confide_main(argv) == 0
    assert "same keys" in capsys.readouterr().out
    renewed = _cert(out.read_bytes())
    assert files.spki(renewed.public_key()) == files.spki(_cert(cert.read_bytes()).public_key())
    assert confide_main(argv) == 2  # --out exists: refused, untouched
    assert _cert(out.read_bytes()) == renewed
    by_name = tmp_path / "by-name.crt"
    assert (
        confide_main(["pki", "renew", "renew-cli", "--dir", str(fed.ca_dir), "--out", str(by_name)])
        == 0
    )
    assert _cert(by_name.read_bytes()).subject == renewed.subject
    pki.revoke(fed.ca_dir, "renew-cli")
    capsys.readouterr()
    again = ["pki", "renew", str(cert), "--dir", str(fed.ca_dir), "--out", str(tmp_path / "x")]
    assert confide_main(again) == 1
    assert "revoked" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_revokes_one_certificate_given_as_a_file_and_keeps_its_renewal(
    fed: Federation, site_dir: Path, tmp_path: Path, now: datetime
) -> None:
    """`confide pki revoke FILE` revokes that certificate only: the renewal stays valid."""
    old = fed.enroll_site(site_dir, "renew-superseded")
    new_pem = pki.renew(fed.ca_dir, old.read_bytes(), now=now)
    assert confide_main(["pki", "revoke", str(old), "--dir", str(fed.ca_dir)]) == 0
    with pytest.raises(pki.BadCertificate, match="revoked"):
        pki.verify_certificate(old.read_bytes(), ca_pem=fed.ca_pem, crl_pem=fed.crl_pem, now=now)
    pki.verify_certificate(new_pem, ca_pem=fed.ca_pem, crl_pem=fed.crl_pem, now=now)
