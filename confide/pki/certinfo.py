"""What a federation certificate says, and the one check that decides whether to believe it.

A leaf certificate binds four things the protocol relies on:

- the identity name (subject CN, e.g. ``site-1``),
- the federation (subject O, equal to the CA's O),
- the role (custom extension ``1.3.6.1.4.1.57264.7.2`` holding the UTF-8 bytes of the role,
  repeated as the subject OU),
- the Ed25519 signing public key that signs every protocol message (custom extension
  ``1.3.6.1.4.1.57264.7.1`` holding the DER OCTET STRING of the 32 raw key bytes).

The subject public key itself is the ECDSA P-256 TLS key: gRPC's BoringSSL does not negotiate
Ed25519 certificates by default, so TLS and message signing use two different keys.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from confide.errors import PeerError, Reason

__all__ = [
    "OID_ROLE",
    "OID_SIGNING_KEY",
    "BadCertificate",
    "CertInfo",
    "CertificateExpired",
    "Role",
    "cert_info",
    "decode_role",
    "decode_signing_key",
    "encode_signing_key",
    "load_pem_certificate",
    "verify_certificate",
]

OID_SIGNING_KEY = x509.ObjectIdentifier("1.3.6.1.4.1.57264.7.1")
"""Extension carrying the Ed25519 signing public key (DER OCTET STRING of 32 bytes)."""

OID_ROLE = x509.ObjectIdentifier("1.3.6.1.4.1.57264.7.2")
"""Extension carrying the role as raw UTF-8 bytes (``site``, ``aggregator``, ``operator``)."""

_ED25519_KEY_LEN = 32
_OCTET_STRING_HEADER = bytes([0x04, _ED25519_KEY_LEN])


class Role(enum.Enum):
    """What an identity may do in the federation; fixed in its certificate."""

    SITE = "site"
    AGGREGATOR = "aggregator"
    OPERATOR = "operator"


class BadCertificate(PeerError):
    """A certificate is not one this federation's CA issued, or is expired, revoked or malformed."""

    default_reason = Reason.BAD_CERTIFICATE


class CertificateExpired(BadCertificate):
    """A certificate's validity has ended; a renewed one (``confide pki renew``) fixes it.

    Args:
        message: what expired and when.
        not_after: the end of its validity, timezone-aware UTC.
    """

    def __init__(self, message: str, *, not_after: datetime) -> None:
        super().__init__(message)
        self.not_after = not_after


@dataclass(frozen=True)
class CertInfo:
    """The verified facts of one federation certificate.

    Args:
        name: the identity name (subject CN).
        role: the role bound in the certificate.
        federation: the federation name (subject O, equal to the CA's).
        signing_public_key: the 32 raw bytes of the Ed25519 verify key.
        serial: the certificate serial number (what a CRL lists).
        not_after: end of validity, timezone-aware UTC.
        pem: the certificate as PEM.
    """

    name: str
    role: Role
    federation: str
    signing_public_key: bytes
    serial: int
    not_after: datetime
    pem: bytes


def encode_signing_key(public_key: bytes) -> x509.UnrecognizedExtension:
    """Build the signing-key extension for a 32-byte Ed25519 public key.

    Raises:
        ValueError: the key is not 32 bytes.
    """
    if len(public_key) != _ED25519_KEY_LEN:
        raise ValueError(f"Ed25519 public key must be 32 bytes, got {len(public_key)}")
    return x509.UnrecognizedExtension(OID_SIGNING_KEY, _OCTET_STRING_HEADER + public_key)


def decode_signing_key(value: bytes) -> bytes:
    """Return the 32 key bytes from the signing-key extension's DER value.

    Raises:
        BadCertificate: the value is not a DER OCTET STRING of exactly 32 bytes.
    """
    if len(value) != len(_OCTET_STRING_HEADER) + _ED25519_KEY_LEN or not value.startswith(
        _OCTET_STRING_HEADER
    ):
        raise BadCertificate("signing-key extension is not a 32-byte OCTET STRING")
    return value[len(_OCTET_STRING_HEADER) :]


def _extension_value(extensions: x509.Extensions, oid: x509.ObjectIdentifier, what: str) -> bytes:
    try:
        ext = extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        raise BadCertificate(f"certificate has no {what} extension ({oid.dotted_string})") from None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise BadCertificate(f"{what} extension has an unexpected type")
    return value.value


def decode_role(value: bytes) -> Role:
    """Return the ``Role`` stored in the role extension.

    Raises:
        BadCertificate: the value is not UTF-8 or not a known role.
    """
    try:
        return Role(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BadCertificate(f"role extension holds an unknown role {value!r}") from None


def _single_attribute(name: x509.Name, oid: x509.ObjectIdentifier, what: str) -> str:
    attrs = name.get_attributes_for_oid(oid)
    if len(attrs) != 1:
        raise BadCertificate(f"certificate subject must have exactly one {what}, has {len(attrs)}")
    value = attrs[0].value
    if not isinstance(value, str) or not value:
        raise BadCertificate(f"certificate subject {what} is empty")
    return value


def load_pem_certificate(pem: bytes) -> x509.Certificate:
    """Parse exactly one PEM certificate.

    Raises:
        BadCertificate: the bytes are not a single well-formed PEM certificate.
    """
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise BadCertificate(f"not a PEM certificate: {exc}") from None
    if len(certs) != 1:
        raise BadCertificate(f"expected exactly one certificate, got {len(certs)}")
    return certs[0]


def cert_info(cert: x509.Certificate) -> CertInfo:
    """Read name, role, federation and signing key from a certificate, without trusting it.

    Raises:
        BadCertificate: a required subject attribute or extension is missing or malformed.
    """
    name = _single_attribute(cert.subject, NameOID.COMMON_NAME, "common name")
    federation = _single_attribute(cert.subject, NameOID.ORGANIZATION_NAME, "organization")
    ou = _single_attribute(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME, "organizational unit")
    role = decode_role(_extension_value(cert.extensions, OID_ROLE, "role"))
    if ou != role.value:
        raise BadCertificate(f"subject OU {ou!r} disagrees with role extension {role.value!r}")
    signing = decode_signing_key(_extension_value(cert.extensions, OID_SIGNING_KEY, "signing-key"))
    return CertInfo(
        name=name,
        role=role,
        federation=federation,
        signing_public_key=signing,
        serial=cert.serial_number,
        not_after=cert.not_valid_after_utc,
        pem=cert.public_bytes(serialization.Encoding.PEM),
    )


def _check_leaf_constraints(cert: x509.Certificate, role: Role) -> None:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is not None and bc.ca:
        raise BadCertificate("certificate is a CA certificate, not an identity")
    if not isinstance(cert.public_key(), ec.EllipticCurvePublicKey):
        raise BadCertificate("certificate's TLS key is not an ECDSA key")
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise BadCertificate("certificate has no extended key usage") from None
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise BadCertificate("certificate is not valid for TLS client authentication")
    if role is Role.AGGREGATOR and ExtendedKeyUsageOID.SERVER_AUTH not in eku:
        raise BadCertificate("aggregator certificate is not valid for TLS server authentication")


def _check_crl(
    crl_pem: bytes, ca: x509.Certificate, cert: x509.Certificate, info: CertInfo
) -> None:
    try:
        crl = x509.load_pem_x509_crl(crl_pem)
    except ValueError:
        raise BadCertificate(
            "revocation list is not a PEM CRL; refusing all certificates"
        ) from None
    ca_key = ca.public_key()
    if crl.issuer != ca.subject or not isinstance(ca_key, ec.EllipticCurvePublicKey):
        raise BadCertificate("revocation list was not issued by the federation CA")
    if not crl.is_signature_valid(ca_key):
        raise BadCertificate("revocation list signature does not verify against the CA")
    if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
        raise BadCertificate(
            f"certificate of {info.name!r} (serial {cert.serial_number:x}) is revoked"
        )


def verify_certificate(
    pem: bytes, *, ca_pem: bytes, crl_pem: bytes | None = None, now: datetime
) -> CertInfo:
    """Verify a leaf certificate against the federation CA and return what it binds.

    Checks, in order: PEM shape, CA signature and issuer, validity window of CA and leaf at
    ``now``, federation (leaf O equals CA O), leaf constraints (not a CA, ECDSA key, EKU fits
    the role), the role and signing-key extensions, and revocation in ``crl_pem``.

    Args:
        pem: the certificate to verify, PEM.
        ca_pem: the federation CA certificate, PEM.
        crl_pem: the CA's revocation list, PEM; ``None`` skips the revocation check.
        now: the time to check validity at, timezone-aware.

    Raises:
        CertificateExpired: the leaf's validity ended before ``now`` (raised after the CA
            signature check, before the federation, constraint and revocation checks).
        BadCertificate: any other check fails; the message says which.
    """
    ca = load_pem_certificate(ca_pem)
    cert = load_pem_certificate(pem)
    try:
        cert.verify_directly_issued_by(ca)
    except ValueError:
        raise BadCertificate("certificate was not issued by this federation's CA") from None
    except (InvalidSignature, TypeError):
        raise BadCertificate("certificate signature does not verify against the CA") from None
    for what, c in (("CA certificate", ca), ("certificate", cert)):
        if now < c.not_valid_before_utc:
            raise BadCertificate(f"{what} is not valid before {c.not_valid_before_utc.isoformat()}")
        if now > c.not_valid_after_utc and c is cert:
            raise CertificateExpired(
                f"{what} expired at {c.not_valid_after_utc.isoformat()}",
                not_after=c.not_valid_after_utc,
            )
        if now > c.not_valid_after_utc:
            raise BadCertificate(f"{what} expired at {c.not_valid_after_utc.isoformat()}")
    info = cert_info(cert)
    ca_federation = _single_attribute(ca.subject, NameOID.ORGANIZATION_NAME, "organization")
    if info.federation != ca_federation:
        raise BadCertificate(
            f"certificate belongs to federation {info.federation!r}, not {ca_federation!r}"
        )
    _check_leaf_constraints(cert, info.role)
    if crl_pem is not None:
        _check_crl(crl_pem, ca, cert, info)
    return info
