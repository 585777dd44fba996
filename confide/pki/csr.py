"""Enrollment by certificate signing request: the site makes its keys, the operator signs.

Private keys never travel. The site writes ``<name>.key`` and ``<name>.sign.key`` (0600) and a
CSR that carries the Ed25519 signing public key and the role it asks for, in the same custom
extensions as the certificate. The operator signs it with ``sign_csr`` for the role they chose;
a CSR asking for any other role is refused, so a site cannot escalate to aggregator or operator.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from confide.errors import ConfigError, Unauthorized
from confide.pki import files
from confide.pki.ca import build_leaf, record_issued
from confide.pki.certinfo import (
    OID_ROLE,
    OID_SIGNING_KEY,
    BadCertificate,
    Role,
    decode_role,
    decode_signing_key,
    encode_signing_key,
)

__all__ = ["enroll", "make_key_and_csr", "sign_csr"]


def make_key_and_csr(directory: Path, name: str, *, role: Role) -> Path:
    """Make a TLS key, a signing key and a CSR for ``name`` (the site side of enrollment).

    Args:
        directory: where to write ``<name>.key``, ``<name>.sign.key`` (0600) and ``<name>.csr``;
            created (mode 0700) when missing.
        name: the identity name to request (CN).
        role: the role to request.

    Returns:
        the path of the CSR, to send to the federation operator.

    Raises:
        ConfigError: a bad name, or one of the three files already exists.
    """
    paths = files.identity_paths(directory, name)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    files.refuse_existing(paths["key"], paths["sign"], paths["csr"])
    tls_key = files.new_tls_key()
    signing_key = files.new_signing_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value),
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                ]
            )
        )
        .add_extension(encode_signing_key(bytes(signing_key.verify_key)), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(OID_ROLE, role.value.encode("utf-8")), critical=False
        )
        .sign(tls_key, hashes.SHA256())
    )
    files.write_new(paths["key"], files.tls_key_pem(tls_key), mode=0o600)
    files.write_new(paths["sign"], files.signing_key_text(signing_key), mode=0o600)
    files.write_new(paths["csr"], csr.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return paths["csr"]


def enroll(directory: Path, name: str) -> Path:
    """Make a site's keys and CSR (what ``confide-agent enroll`` runs).

    Args:
        directory: the agent's PKI folder.
        name: the site's identity name.

    Returns:
        the path of the CSR.

    Raises:
        ConfigError: a bad name, or key files already exist.
    """
    return make_key_and_csr(directory, name, role=Role.SITE)


def _csr_extension(csr: x509.CertificateSigningRequest, oid: x509.ObjectIdentifier) -> bytes:
    try:
        value = csr.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        raise BadCertificate(f"CSR has no extension {oid.dotted_string}") from None
    if not isinstance(value, x509.UnrecognizedExtension):
        raise BadCertificate(f"CSR extension {oid.dotted_string} has an unexpected type")
    return value.value


def sign_csr(
    ca_directory: Path,
    csr_pem: bytes,
    *,
    role: Role,
    days: int = 365,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    now: datetime | None = None,
) -> bytes:
    """Issue a certificate for a CSR, for the role the operator chose.

    The CSR's self-signature proves its maker holds the TLS key; its signing-key extension is
    copied into the certificate. The CA keeps a copy under ``issued/``.

    Args:
        ca_directory: the CA directory.
        csr_pem: the CSR, PEM.
        role: the role the operator grants; must equal the role the CSR requests.
        days: validity in days.
        dns: extra DNS SANs (aggregator).
        ips: IP SANs (aggregator).
        now: issue time; defaults to the current UTC time.

    Returns:
        the certificate, PEM.

    Raises:
        BadCertificate: the CSR is malformed, its signature does not verify, or an extension
            is missing or malformed.
        Unauthorized: the CSR requests a role other than ``role``.
        ConfigError: no usable CA, or a bad name, IP or number of days.
    """
    ca_cert, ca_key = files.load_ca(ca_directory)
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise BadCertificate("not a PEM certificate signing request") from None
    if not csr.is_signature_valid:
        raise BadCertificate("CSR self-signature does not verify")
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise BadCertificate("CSR key is not an ECDSA P-256 key")
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        raise BadCertificate("CSR subject must have exactly one common name")
    name = str(cns[0].value)
    try:
        files.check_name(name)
    except ConfigError as exc:
        raise BadCertificate(f"CSR common name: {exc.problem}") from None
    requested = decode_role(_csr_extension(csr, OID_ROLE))
    if requested is not role:
        raise Unauthorized(
            f"CSR for {name!r} requests role {requested.value!r}, operator granted {role.value!r}"
        )
    ous = csr.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if any(ou.value != role.value for ou in ous):
        raise Unauthorized(f"CSR for {name!r} names another role in its subject OU")
    signing = decode_signing_key(_csr_extension(csr, OID_SIGNING_KEY))
    cert = build_leaf(
        ca_cert,
        ca_key,
        name=name,
        role=role,
        tls_public_key=public_key,
        signing_public_key=signing,
        dns=dns,
        ips=ips,
        days=days,
        now=now or datetime.now(UTC),
    )
    record_issued(ca_directory, cert)
    return cert.public_bytes(serialization.Encoding.PEM)
