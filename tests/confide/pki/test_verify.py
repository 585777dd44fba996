"""verify_certificate accepts only live, unrevoked, well-formed certificates from our CA."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import example, given, settings
from hypothesis import strategies as st

from confide import pki
from confide.errors import Reason
from confide.pki import files
from confide.pki.ca import build_leaf
from confide.pki.certinfo import OID_ROLE, OID_SIGNING_KEY, encode_signing_key

from .conftest import Federation


@pytest.fixture(scope="module")
def op_pem(fed: Federation) -> bytes:
    """An operator certificate issued by the federation CA."""
    return pki.issue(fed.ca_dir, "op-v", role=pki.Role.OPERATOR).read_bytes()


def _refused(pem: bytes, fed: Federation, *, now: datetime, crl: bool = True) -> str:
    with pytest.raises(pki.BadCertificate) as err:
        pki.verify_certificate(
            pem, ca_pem=fed.ca_pem, crl_pem=fed.crl_pem if crl else None, now=now
        )
    assert err.value.reason is Reason.BAD_CERTIFICATE
    return str(err.value)


def test_valid_certificate_is_accepted(fed: Federation, op_pem: bytes, now: datetime) -> None:
    """A fresh operator certificate verifies and reports name, role and federation."""
    info = pki.verify_certificate(op_pem, ca_pem=fed.ca_pem, crl_pem=fed.crl_pem, now=now)
    assert (info.name, info.role, info.federation) == ("op-v", pki.Role.OPERATOR, "acme")
    assert len(info.signing_public_key) == 32
    assert info.not_after > now


def test_foreign_ca_certificate_is_refused(
    fed: Federation, foreign: Federation, now: datetime
) -> None:
    """A certificate from another federation's CA is refused."""
    pem = pki.issue(foreign.ca_dir, "op-x", role=pki.Role.OPERATOR).read_bytes()
    assert "not issued by this federation" in _refused(pem, fed, now=now)


def test_same_name_foreign_ca_is_refused(tmp_path: Path, fed: Federation, now: datetime) -> None:
    """A look-alike CA with the same federation name cannot forge certificates."""
    pki.init_ca(tmp_path, federation="acme")
    pem = pki.issue(tmp_path, "op-twin", role=pki.Role.OPERATOR).read_bytes()
    assert "signature" in _refused(pem, fed, now=now)


def test_expired_certificate_is_refused(fed: Federation, op_pem: bytes, now: datetime) -> None:
    """A certificate checked after its notAfter is refused."""
    assert "expired" in _refused(op_pem, fed, now=now + timedelta(days=366))


def test_expiry_boundary(fed: Federation, now: datetime) -> None:
    """A one-day certificate is valid just before notAfter and refused just after it."""
    pem = pki.issue(fed.ca_dir, "op-1d", role=pki.Role.OPERATOR, days=1, now=now).read_bytes()
    end = now + timedelta(days=1)
    info = pki.verify_certificate(pem, ca_pem=fed.ca_pem, now=end - timedelta(seconds=1))
    assert info.name == "op-1d"
    assert "expired" in _refused(pem, fed, now=end + timedelta(seconds=1))


def test_not_yet_valid_certificate_is_refused(fed: Federation, now: datetime) -> None:
    """A certificate checked before its notBefore is refused."""
    pem = pki.issue(
        fed.ca_dir, "op-future", role=pki.Role.OPERATOR, now=now + timedelta(days=2)
    ).read_bytes()
    assert "not valid before" in _refused(pem, fed, now=now)


def test_revoked_certificate_is_refused(fed: Federation, now: datetime) -> None:
    """After revoke(name), the certificate is refused when the CRL is given."""
    pem = pki.issue(fed.ca_dir, "op-rev", role=pki.Role.OPERATOR).read_bytes()
    pki.verify_certificate(pem, ca_pem=fed.ca_pem, crl_pem=fed.crl_pem, now=now)
    pki.revoke(fed.ca_dir, "op-rev")
    assert "revoked" in _refused(pem, fed, now=now)
    pki.revoke(fed.ca_dir, "op-rev")  # idempotent
    assert "revoked" in _refused(pem, fed, now=now)


def test_revoke_by_pem_keeps_earlier_entries(fed: Federation, now: datetime) -> None:
    """Revoking by PEM adds to the CRL without dropping earlier revocations."""
    a = pki.issue(fed.ca_dir, "op-ra", role=pki.Role.OPERATOR).read_bytes()
    b = pki.issue(fed.ca_dir, "op-rb", role=pki.Role.OPERATOR).read_bytes()
    pki.revoke(fed.ca_dir, "op-ra")
    pki.revoke(fed.ca_dir, b)
    assert "revoked" in _refused(a, fed, now=now)
    assert "revoked" in _refused(b, fed, now=now)


def test_crl_from_another_ca_fails_closed(
    fed: Federation, foreign: Federation, op_pem: bytes, now: datetime
) -> None:
    """A revocation list not signed by our CA makes every certificate refused."""
    with pytest.raises(pki.BadCertificate):
        pki.verify_certificate(op_pem, ca_pem=fed.ca_pem, crl_pem=foreign.crl_pem, now=now)


def test_tampered_pem_is_refused(fed: Federation, op_pem: bytes, now: datetime) -> None:
    """Changing one byte of the signed body breaks the CA signature."""
    der = bytearray(x509.load_pem_x509_certificate(op_pem).public_bytes(serialization.Encoding.DER))
    der[der.find(b"op-v")] ^= 0x20  # op-v -> Op-v
    tampered = x509.load_der_x509_certificate(bytes(der)).public_bytes(serialization.Encoding.PEM)
    assert "signature" in _refused(tampered, fed, now=now)


def test_corrupted_pem_text_is_refused(fed: Federation, op_pem: bytes, now: datetime) -> None:
    """PEM whose base64 no longer decodes to a certificate is refused."""
    body = op_pem.split(b"\n")
    body[3] = base64.b64encode(b"\xff" * 48)
    _refused(b"\n".join(body), fed, now=now)
    _refused(b"", fed, now=now)


def test_two_certificates_in_one_pem_are_refused(
    fed: Federation, op_pem: bytes, now: datetime
) -> None:
    """Exactly one certificate is accepted, not a bundle."""
    assert "exactly one" in _refused(op_pem + op_pem, fed, now=now)


def test_ca_certificate_is_not_an_identity(fed: Federation, now: datetime) -> None:
    """The CA's own certificate is not accepted as a peer identity."""
    _refused(fed.ca_pem, fed, now=now)


def _leaf(fed: Federation, now: datetime, *, drop: x509.ObjectIdentifier | None) -> bytes:
    """A leaf signed by the real CA key, optionally without one custom extension."""
    ca_cert, ca_key = files.load_ca(fed.ca_dir)
    key = files.new_tls_key()
    exts: list[x509.ExtensionType] = [
        encode_signing_key(bytes(32)),
        x509.UnrecognizedExtension(OID_ROLE, b"site"),
    ]
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "acme"),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "site"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "hand"),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    for ext in exts:
        if ext.oid != drop:
            builder = builder.add_extension(ext, critical=False)
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_handmade_leaf_with_all_extensions_is_accepted(fed: Federation, now: datetime) -> None:
    """The hand-built control certificate verifies, so the next refusals are about one field."""
    assert pki.verify_certificate(_leaf(fed, now, drop=None), ca_pem=fed.ca_pem, now=now).name == (
        "hand"
    )


def test_missing_signing_key_extension_is_refused(fed: Federation, now: datetime) -> None:
    """A CA-signed certificate without the signing-key extension is refused."""
    assert "signing-key" in _refused(_leaf(fed, now, drop=OID_SIGNING_KEY), fed, now=now)


def test_missing_role_extension_is_refused(fed: Federation, now: datetime) -> None:
    """A CA-signed certificate without the role extension is refused."""
    assert "role" in _refused(_leaf(fed, now, drop=OID_ROLE), fed, now=now)


@pytest.mark.parametrize("n", [31, 33])
def test_signing_key_extension_of_wrong_length_is_refused(n: int) -> None:
    """The signing-key extension must hold exactly 32 bytes."""
    from confide.pki.certinfo import decode_signing_key

    with pytest.raises(pki.BadCertificate):
        decode_signing_key(bytes([0x04, n]) + bytes(n))


def test_require_role(fed: Federation, op_pem: bytes, now: datetime) -> None:
    """require_role passes a listed role and raises Unauthorized otherwise."""
    from confide.errors import Unauthorized

    info = pki.verify_certificate(op_pem, ca_pem=fed.ca_pem, now=now)
    pki.require_role(info, pki.Role.OPERATOR, pki.Role.AGGREGATOR)
    with pytest.raises(Unauthorized):
        pki.require_role(info, pki.Role.SITE)


@settings(max_examples=60, deadline=None)
@given(offset=st.integers(min_value=-3 * 86400, max_value=3 * 86400))
@example(offset=-300).via("notBefore: issue time minus the 5-minute backdate")
@example(offset=-301)
@example(offset=86400).via("notAfter")
@example(offset=86401)
def test_validity_window_property(fed: Federation, offset: int) -> None:
    """A 1-day certificate verifies exactly when now lies in [notBefore, notAfter]."""
    issued_at = datetime(2030, 1, 1, tzinfo=UTC)
    pem = _one_day_cert(fed, issued_at)
    cert = x509.load_pem_x509_certificate(pem)
    at = issued_at + timedelta(seconds=offset)
    inside = cert.not_valid_before_utc <= at <= cert.not_valid_after_utc
    try:
        pki.verify_certificate(pem, ca_pem=fed.ca_pem, now=at)
    except pki.BadCertificate:
        assert not inside
    else:
        assert inside


_ONE_DAY: dict[datetime, bytes] = {}


def _one_day_cert(fed: Federation, issued_at: datetime) -> bytes:
    """One cached 1-day certificate issued at ``issued_at`` (inside the CA's 10 years)."""
    if issued_at not in _ONE_DAY:
        ca_cert, ca_key = files.load_ca(fed.ca_dir)
        key = files.new_tls_key()
        cert = build_leaf(
            ca_cert,
            ca_key,
            name="op-window",
            role=pki.Role.OPERATOR,
            tls_public_key=key.public_key(),
            signing_public_key=bytes(32),
            dns=(),
            ips=(),
            days=1,
            now=issued_at,
        )
        _ONE_DAY[issued_at] = cert.public_bytes(serialization.Encoding.PEM)
    return _ONE_DAY[issued_at]


def test_revoke_refuses_foreign_certificate(fed: Federation, foreign: Federation) -> None:
    """The CA refuses to list a certificate it did not issue, and its CRL is unchanged."""
    from confide.errors import ConfigError

    pem = pki.issue(foreign.ca_dir, "op-alien", role=pki.Role.OPERATOR).read_bytes()
    before = fed.crl_pem
    with pytest.raises(ConfigError):
        pki.revoke(fed.ca_dir, pem)
    assert fed.crl_pem == before
