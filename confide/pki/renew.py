"""Renewal: a new certificate for an identity's existing keys (the CA holder's side).

A renewed certificate binds the same TLS public key, the same Ed25519 signing key, the same
name, role and subject alternative names as the certificate it replaces, with a new serial
and a new validity. No key is made or moved, so renewing is a file copy at the identity's
machine followed by a reload (SIGHUP), not a re-enrollment.

The source is the old certificate, or a CSR made with the identity's existing keys (its
self-signature proves the requester still holds the TLS key); either way the certificate to
renew must be one this CA issued. A revoked certificate is never renewed: its serial on the
CRL says its keys are not to be trusted any more, and a renewal would trust them again under
a new serial. A revoked identity makes new keys and a new CSR (``confide pki sign``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from confide.errors import ConfigError, Unauthorized
from confide.pki import files
from confide.pki.ca import build_leaf, record_issued
from confide.pki.certinfo import (
    OID_SIGNING_KEY,
    BadCertificate,
    cert_info,
    decode_signing_key,
    load_pem_certificate,
)

__all__ = ["latest_issued", "renew"]

_CSR_MARK = b"-----BEGIN CERTIFICATE REQUEST-----"


def _issued_by(ca_cert: x509.Certificate, cert: x509.Certificate) -> None:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise BadCertificate("certificate was not issued by this CA") from None


def _issued(ca_directory: Path) -> list[x509.Certificate]:
    found = []
    for path in sorted((ca_directory / files.ISSUED).glob("*.crt")):
        try:
            found.append(load_pem_certificate(files.read_bytes(path)))
        except BadCertificate:
            continue
    return found


def _revoked_serials(ca_directory: Path, ca_cert: x509.Certificate) -> set[int]:
    """The serials on the CA's own CRL; a CRL that does not verify is a config error."""
    path = ca_directory / files.CRL
    if not path.exists():
        return set()
    try:
        crl = x509.load_pem_x509_crl(files.read_bytes(path))
    except ValueError:
        raise ConfigError(str(path), "not a PEM certificate revocation list") from None
    key = ca_cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(key):
        raise ConfigError(str(path), "revocation list is not signed by this CA")
    return {entry.serial_number for entry in crl}


def latest_issued(ca_directory: Path, name: str) -> x509.Certificate:
    """The certificate this CA issued to ``name`` that ends last (what ``renew NAME`` renews).

    Raises:
        ConfigError: no certificate was issued to that name (or a bad name).
    """
    files.check_name(name)
    mine = [
        c
        for c in _issued(ca_directory)
        if [a.value for a in c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == [name]
    ]
    if not mine:
        raise ConfigError("name", f"no certificate issued to {name!r} in {ca_directory}")
    return max(mine, key=lambda c: c.not_valid_after_utc)


def _from_csr(ca_directory: Path, csr_pem: bytes) -> x509.Certificate:
    """The issued certificate whose keys the CSR is made with (the CSR proves the TLS key)."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise BadCertificate("not a PEM certificate signing request") from None
    if not csr.is_signature_valid:
        raise BadCertificate("CSR self-signature does not verify")
    wanted = files.spki(csr.public_key())
    same_key = [c for c in _issued(ca_directory) if files.spki(c.public_key()) == wanted]
    if not wanted or not same_key:
        raise BadCertificate(
            "this CA issued no certificate for the CSR's key; a renewal keeps an identity's "
            "keys (new keys: confide pki sign)"
        )
    old = max(same_key, key=lambda c: c.not_valid_after_utc)
    try:
        ext = csr.extensions.get_extension_for_oid(OID_SIGNING_KEY).value
    except x509.ExtensionNotFound:
        raise BadCertificate("CSR has no signing-key extension") from None
    signing = decode_signing_key(ext.value if isinstance(ext, x509.UnrecognizedExtension) else b"")
    if signing != cert_info(old).signing_public_key:
        raise Unauthorized(
            "the CSR carries another signing key than the certificate it would renew; "
            "a renewal keeps both keys (new keys: confide pki sign)"
        )
    names = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [cert_info(old).name]:
        raise Unauthorized("the CSR names another identity than the certificate it would renew")
    return old


def _sans(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    dns = san.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return dns, ips


def renew(
    ca_directory: Path,
    source: bytes,
    *,
    days: int = 365,
    now: datetime | None = None,
) -> bytes:
    """Issue a new certificate for the keys of one this CA issued (same names, new serial).

    Args:
        ca_directory: the CA directory (``ca.crt``, ``ca.key``, ``crl.pem``, ``issued/``).
        source: the certificate to renew (PEM; it may have expired), or a CSR made with its
            keys (PEM), whose certificate is found under ``issued/``.
        days: validity of the new certificate, from ``now``.
        now: issue time; defaults to the current UTC time.

    Returns:
        the new certificate, PEM; a copy is kept under ``issued/``.

    Raises:
        BadCertificate: the source is malformed, not issued by this CA, or a CSR whose key
            this CA never certified.
        Unauthorized: the certificate to renew is revoked, or a CSR's signing key or name
            differs from it.
        ConfigError: no usable CA or CRL, or a bad number of days.
    """
    ca_cert, ca_key = files.load_ca(ca_directory)
    old = _from_csr(ca_directory, source) if _CSR_MARK in source else load_pem_certificate(source)
    _issued_by(ca_cert, old)
    info = cert_info(old)
    if old.serial_number in _revoked_serials(ca_directory, ca_cert):
        raise Unauthorized(
            f"certificate of {info.name!r} (serial {old.serial_number:x}) is revoked; a revoked "
            "certificate is not renewed: make new keys and a CSR, and sign that"
        )
    public_key = old.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise BadCertificate("certificate's TLS key is not an ECDSA key")
    dns, ips = _sans(old)
    cert = build_leaf(
        ca_cert,
        ca_key,
        name=info.name,
        role=info.role,
        tls_public_key=public_key,
        signing_public_key=info.signing_public_key,
        dns=dns,
        ips=ips,
        days=days,
        now=now or datetime.now(UTC),
    )
    record_issued(ca_directory, cert)
    return cert.public_bytes(serialization.Encoding.PEM)
