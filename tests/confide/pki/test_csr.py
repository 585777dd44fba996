"""CSR enrollment: a site's keys stay with it, and it cannot choose its own role."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import nacl.signing
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from confide import pki
from confide.errors import Reason, Unauthorized
from confide.pki import files

from .conftest import Federation


def test_csr_round_trip_binds_site_keys(fed: Federation, site_dir: Path, now: datetime) -> None:
    """A signed CSR yields a site certificate with the site's own TLS and signing keys."""
    cert = fed.enroll_site(site_dir, "site-rt")
    info = pki.verify_certificate(cert.read_bytes(), ca_pem=fed.ca_pem, now=now)
    assert (info.name, info.role, info.federation) == ("site-rt", pki.Role.SITE, "acme")
    seed = bytes.fromhex((site_dir / "site-rt.sign.key").read_text().strip())
    assert info.signing_public_key == bytes(nacl.signing.SigningKey(seed).verify_key)
    identity = fed.identity(site_dir, "site-rt")
    assert identity.info == info


def test_csr_records_issued_copy_for_revocation(fed: Federation, site_dir: Path) -> None:
    """sign_csr keeps a copy of the certificate in the CA's issued/ folder."""
    cert = x509.load_pem_x509_certificate(fed.enroll_site(site_dir, "site-copy").read_bytes())
    assert (fed.ca_dir / "issued" / f"{cert.serial_number:x}.crt").exists()


@pytest.mark.parametrize(
    ("asked", "granted"),
    [(a, g) for a in pki.Role for g in pki.Role if a is not g],
)
def test_role_cannot_differ_from_request(
    fed: Federation, site_dir: Path, asked: pki.Role, granted: pki.Role
) -> None:
    """sign_csr refuses a CSR whose requested role differs from the one granted."""
    csr = pki.make_key_and_csr(site_dir, "esc", role=asked)
    with pytest.raises(Unauthorized) as err:
        pki.sign_csr(fed.ca_dir, csr.read_bytes(), role=granted)
    assert err.value.reason is Reason.UNAUTHORIZED


@pytest.mark.parametrize("role", list(pki.Role))
def test_role_granted_when_it_matches_request(
    fed: Federation, site_dir: Path, now: datetime, role: pki.Role
) -> None:
    """sign_csr grants exactly the requested role when the operator agrees."""
    csr = pki.make_key_and_csr(site_dir, f"who-{role.value}", role=role)
    pem = pki.sign_csr(fed.ca_dir, csr.read_bytes(), role=role)
    assert pki.verify_certificate(pem, ca_pem=fed.ca_pem, now=now).role is role


def _handmade_csr(*, role_ext: bytes | None, ou: str, sign_ext: bool = True) -> bytes:
    key = files.new_tls_key()
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
                x509.NameAttribute(NameOID.COMMON_NAME, "hand"),
            ]
        )
    )
    if sign_ext:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier("1.3.6.1.4.1.57264.7.1"), b"\x04\x20" + bytes(32)
            ),
            critical=False,
        )
    if role_ext is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.57264.7.2"), role_ext),
            critical=False,
        )
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def test_subject_ou_cannot_smuggle_another_role(fed: Federation) -> None:
    """A CSR asking for site in its extension but aggregator in its OU is refused."""
    with pytest.raises(Unauthorized):
        pki.sign_csr(
            fed.ca_dir, _handmade_csr(role_ext=b"site", ou="aggregator"), role=pki.Role.SITE
        )


def test_csr_without_role_is_refused(fed: Federation) -> None:
    """A CSR without the role extension is refused as a bad certificate request."""
    with pytest.raises(pki.BadCertificate):
        pki.sign_csr(fed.ca_dir, _handmade_csr(role_ext=None, ou="site"), role=pki.Role.SITE)


def test_csr_without_signing_key_is_refused(fed: Federation) -> None:
    """A CSR without the signing-key extension is refused."""
    pem = _handmade_csr(role_ext=b"site", ou="site", sign_ext=False)
    with pytest.raises(pki.BadCertificate):
        pki.sign_csr(fed.ca_dir, pem, role=pki.Role.SITE)


def test_tampered_csr_is_refused(fed: Federation, site_dir: Path) -> None:
    """A CSR whose body was changed after signing fails its self-signature check."""
    csr = pki.enroll(site_dir, "site-tamper")
    der = bytearray(
        x509.load_pem_x509_csr(csr.read_bytes()).public_bytes(serialization.Encoding.DER)
    )
    idx = der.find(b"site-tamper")
    der[idx] ^= 0x01
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(pki.BadCertificate):
        pki.sign_csr(fed.ca_dir, tampered, role=pki.Role.SITE)


def test_garbage_csr_is_refused(fed: Federation) -> None:
    """Bytes that are not a PEM CSR are refused."""
    with pytest.raises(pki.BadCertificate):
        pki.sign_csr(fed.ca_dir, b"not a csr", role=pki.Role.SITE)
