"""One process's own federation identity: certificate, both private keys, CA and CRL.

``load_identity`` checks everything a daemon needs before it opens a socket, so a wrong file
is a one-line ``ConfigError`` naming that file at start-up, not a TLS failure later.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import nacl.signing
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from confide.errors import ConfigError
from confide.pki import files
from confide.pki.certinfo import (
    BadCertificate,
    CertificateExpired,
    CertInfo,
    verify_certificate,
)

__all__ = ["Identity", "load_identity"]


@dataclass(frozen=True)
class Identity:
    """A loaded, cross-checked identity.

    Args:
        info: the verified facts of this identity's certificate.
        cert_pem: the certificate, PEM.
        tls_key_pem: the ECDSA P-256 TLS private key, PKCS8 PEM (for gRPC credentials).
        signing_key: the Ed25519 key that signs protocol messages.
        ca_pem: the federation CA certificate, PEM.
        crl_pem: the CA's revocation list, PEM, or ``None`` when none is configured.
    """

    info: CertInfo
    cert_pem: bytes
    tls_key_pem: bytes
    signing_key: nacl.signing.SigningKey
    ca_pem: bytes
    crl_pem: bytes | None

    def __repr__(self) -> str:
        return f"Identity(name={self.info.name!r}, role={self.info.role.value!r})"


def _read_private(path: Path) -> bytes:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(str(path), "file does not exist") from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read file: {exc.strerror}") from exc
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigError(
            str(path),
            f"private key is readable by group or others (mode {stat.S_IMODE(st.st_mode):o}); "
            "run chmod 600 on it",
        )
    return files.read_bytes(path)


def _check_crl_file(path: Path, crl_pem: bytes, ca_cert: x509.Certificate) -> None:
    try:
        crl = x509.load_pem_x509_crl(crl_pem)
    except ValueError:
        raise ConfigError(str(path), "not a PEM certificate revocation list") from None
    ca_key = ca_cert.public_key()
    if (
        crl.issuer != ca_cert.subject
        or not isinstance(ca_key, ec.EllipticCurvePublicKey)
        or not crl.is_signature_valid(ca_key)
    ):
        raise ConfigError(str(path), "revocation list is not signed by the configured CA")


def load_identity(
    *,
    cert: Path,
    key: Path,
    signing_key: Path,
    ca: Path,
    crl: Path | None = None,
    now: datetime | None = None,
    allow_expired: bool = False,
) -> Identity:
    """Load and cross-check an identity's files.

    Args:
        cert: this identity's certificate.
        key: its TLS private key (must be mode 0600 or stricter).
        signing_key: its Ed25519 signing-key file (must be mode 0600 or stricter).
        ca: the federation CA certificate.
        crl: the CA's revocation list, if any.
        now: when to check validity; defaults to the current UTC time.
        allow_expired: load a certificate whose only fault is that it has expired, checked
            as of the last moment it was valid (a site daemon keeps running with it, says
            so and waits for a renewed one; ``info.not_after`` tells). Off: expired is an
            error like any other.

    Raises:
        ConfigError: naming the file that is missing, unreadable, group/world readable,
            malformed, or inconsistent: a certificate not valid under the CA (expired,
            revoked, foreign), a TLS key that does not match the certificate, or a signing
            key that does not match the certificate's signing-key extension.
    """
    ca_pem = files.read_bytes(ca)
    try:
        ca_cert = x509.load_pem_x509_certificate(ca_pem)
    except ValueError:
        raise ConfigError(str(ca), "not a PEM certificate") from None
    crl_pem = files.read_bytes(crl) if crl is not None else None
    if crl is not None and crl_pem is not None:
        _check_crl_file(crl, crl_pem, ca_cert)
    cert_pem = files.read_bytes(cert)
    try:
        try:
            info = verify_certificate(
                cert_pem, ca_pem=ca_pem, crl_pem=crl_pem, now=now or datetime.now(UTC)
            )
        except CertificateExpired as expired:
            if not allow_expired:
                raise
            info = verify_certificate(
                cert_pem, ca_pem=ca_pem, crl_pem=crl_pem, now=expired.not_after
            )
    except BadCertificate as exc:
        raise ConfigError(str(cert), f"{exc} (CA {ca})") from None
    tls_key_pem = _read_private(key)
    try:
        tls_key = serialization.load_pem_private_key(tls_key_pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(str(key), "not an unencrypted PEM private key") from None
    cert_key = x509.load_pem_x509_certificate(cert_pem).public_key()
    if not isinstance(tls_key, ec.EllipticCurvePrivateKey) or files.spki(
        tls_key.public_key()
    ) != files.spki(cert_key):
        raise ConfigError(str(key), f"TLS key does not match the certificate {cert}")
    sk = files.parse_signing_key(_read_private(signing_key), source=str(signing_key))
    if bytes(sk.verify_key) != info.signing_public_key:
        raise ConfigError(
            str(signing_key), f"signing key does not match the certificate's extension ({cert})"
        )
    return Identity(
        info=info,
        cert_pem=cert_pem,
        tls_key_pem=tls_key_pem,
        signing_key=sk,
        ca_pem=ca_pem,
        crl_pem=crl_pem,
    )
