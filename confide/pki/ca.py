"""The federation's certificate authority: create it and issue identities.

One federation has one CA (ECDSA P-256, self-signed, CN ``"<federation> CA"``, O = federation).
Every certificate it issues is also copied to ``D/issued/<serial hex>.crt``, so a revocation by
name (``confide.pki.crl.revoke``) finds certificates signed from CSRs whose files live elsewhere.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from confide.errors import ConfigError
from confide.pki import files
from confide.pki.certinfo import (
    OID_ROLE,
    Role,
    encode_signing_key,
)
from confide.pki.crl import write_crl

__all__ = ["build_leaf", "init_ca", "issue", "record_issued"]

CA_DAYS = 3650
"""Validity of the CA certificate (10 years)."""

_BACKDATE = timedelta(minutes=5)
"""notBefore is set this far in the past so peers with slightly slow clocks accept it."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _check_federation(federation: str) -> str:
    if not federation.strip() or len(federation) > 61 or not federation.isprintable():
        raise ConfigError("federation", f"{federation!r} must be 1-61 printable characters")
    return federation


def _check_days(days: int) -> int:
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ConfigError("days", f"must be a whole number of days >= 1, got {days!r}")
    return days


def init_ca(directory: Path, *, federation: str, now: datetime | None = None) -> None:
    """Create a federation CA in ``directory``: ``ca.key`` (0600), ``ca.crt`` and an empty CRL.

    Args:
        directory: where to write; created (mode 0700) when missing.
        federation: the federation name, stored as the CA's organization.
        now: creation time; defaults to the current UTC time.

    Raises:
        ConfigError: the federation name is invalid, or a CA already exists there.
    """
    _check_federation(federation)
    now = now or _utcnow()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    files.refuse_existing(directory / files.CA_KEY, directory / files.CA_CERT)
    key = files.new_tls_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{federation} CA"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    files.write_new(directory / files.CA_KEY, files.tls_key_pem(key), mode=0o600)
    files.write_new(
        directory / files.CA_CERT, cert.public_bytes(serialization.Encoding.PEM), mode=0o644
    )
    write_crl(directory, cert, key, revoked=[], now=now)


def _san(
    name: str, role: Role, dns: Sequence[str], ips: Sequence[str]
) -> x509.SubjectAlternativeName:
    if role is Role.AGGREGATOR and not dns and not ips:
        dns, ips = ("localhost",), ("127.0.0.1",)
    names: list[x509.GeneralName] = []
    for d in (*dns, name):
        general: x509.GeneralName = x509.DNSName(d)
        if d and general not in names:
            names.append(general)
    for ip in ips:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise ConfigError("ip", f"{ip!r} is not an IP address") from None
    return x509.SubjectAlternativeName(names)


def build_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    name: str,
    role: Role,
    tls_public_key: ec.EllipticCurvePublicKey,
    signing_public_key: bytes,
    dns: Sequence[str],
    ips: Sequence[str],
    days: int,
    now: datetime,
) -> x509.Certificate:
    """Sign an identity certificate binding name, role, TLS key and Ed25519 signing key.

    Args:
        ca_cert: the federation CA certificate (issuer and federation name).
        ca_key: the CA's private key.
        name: identity name (CN and a DNS SAN).
        role: the role, written to the role extension and the subject OU.
        tls_public_key: the subject public key (ECDSA P-256).
        signing_public_key: 32 raw bytes of the Ed25519 verify key.
        dns: extra DNS SANs (aggregators: default ``localhost``).
        ips: IP SANs (aggregators: default ``127.0.0.1``).
        days: validity in days from ``now``.
        now: issue time.

    Raises:
        ConfigError: a bad name, IP or number of days.
    """
    files.check_name(name)
    _check_days(days)
    federation = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, str(federation)),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    eku = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if role is Role.AGGREGATOR:
        eku.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(tls_public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(_san(name, role, dns, ips), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(tls_public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .add_extension(encode_signing_key(signing_public_key), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(OID_ROLE, role.value.encode("utf-8")), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def record_issued(ca_directory: Path, cert: x509.Certificate) -> None:
    """Keep a copy of an issued certificate under ``issued/`` for later revocation by name."""
    issued = ca_directory / files.ISSUED
    issued.mkdir(mode=0o700, exist_ok=True)
    files.write_new(
        issued / f"{cert.serial_number:x}.crt",
        cert.public_bytes(serialization.Encoding.PEM),
        mode=0o644,
    )


def issue(
    directory: Path,
    name: str,
    *,
    role: Role,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    days: int = 365,
    now: datetime | None = None,
) -> Path:
    """Make both keys and a certificate for ``name`` inside the CA directory.

    Writes ``<name>.key`` and ``<name>.sign.key`` (0600) and ``<name>.crt``. Meant for the
    aggregator and operators; sites should make their own keys (``make_key_and_csr``).

    Args:
        directory: the CA directory (holds ``ca.crt`` and ``ca.key``).
        name: identity name.
        role: the identity's role.
        dns: extra DNS SANs (aggregator).
        ips: IP SANs (aggregator).
        days: validity in days.
        now: issue time; defaults to the current UTC time.

    Returns:
        the path of the new certificate.

    Raises:
        ConfigError: no usable CA in ``directory``, a bad argument, or one of the files exists.
    """
    paths = files.identity_paths(directory, name)
    _check_days(days)
    ca_cert, ca_key = files.load_ca(directory)
    files.refuse_existing(paths["key"], paths["sign"], paths["crt"])
    tls_key = files.new_tls_key()
    signing_key = files.new_signing_key()
    cert = build_leaf(
        ca_cert,
        ca_key,
        name=name,
        role=role,
        tls_public_key=tls_key.public_key(),
        signing_public_key=bytes(signing_key.verify_key),
        dns=dns,
        ips=ips,
        days=days,
        now=now or _utcnow(),
    )
    files.write_new(paths["key"], files.tls_key_pem(tls_key), mode=0o600)
    files.write_new(paths["sign"], files.signing_key_text(signing_key), mode=0o600)
    files.write_new(paths["crt"], cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    record_issued(directory, cert)
    return paths["crt"]
