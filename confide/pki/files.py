"""Where PKI material lives on disk, and how it is written and read safely.

Layout of a directory ``D``: ``ca.crt``, ``ca.key`` (CA only), ``crl.pem``, and per identity
``<name>.crt``, ``<name>.key`` (ECDSA P-256 TLS key, PEM PKCS8, unencrypted),
``<name>.sign.key`` (Ed25519 seed, 64 hex characters and a newline), ``<name>.csr``. The CA also
keeps a copy of everything it issued in ``D/issued/<serial hex>.crt`` so ``revoke NAME`` can find
certificates it signed from CSRs.

Private keys are created with ``os.open(O_CREAT | O_EXCL | O_WRONLY, 0o600)``: they are never
readable by others, not even for an instant, and an existing key is never overwritten.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nacl.signing
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from confide.errors import ConfigError
from confide.pki.certinfo import BadCertificate, load_pem_certificate

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "CRL",
    "ISSUED",
    "check_name",
    "identity_paths",
    "load_ca",
    "new_signing_key",
    "new_tls_key",
    "parse_signing_key",
    "read_bytes",
    "refuse_existing",
    "replace_public",
    "signing_key_text",
    "spki",
    "tls_key_pem",
    "write_new",
]

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CRL = "crl.pem"
ISSUED = "issued"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def check_name(name: str) -> str:
    """Return ``name`` if it is a safe identity name (also a file name and a DNS label).

    Raises:
        ConfigError: the name is empty, too long, or has characters other than
            letters, digits, ``.``, ``_`` and ``-`` (or starts with a punctuation mark).
    """
    if not _NAME.match(name) or name in {"ca", "crl"}:
        raise ConfigError(
            "name",
            f"{name!r} is not a valid identity name (letters, digits, '.', '_', '-'; "
            "at most 63 characters; not 'ca' or 'crl')",
        )
    return name


def identity_paths(directory: Path, name: str) -> dict[str, Path]:
    """The files of identity ``name`` in ``directory``: keys ``crt key sign csr``."""
    check_name(name)
    return {
        "crt": directory / f"{name}.crt",
        "key": directory / f"{name}.key",
        "sign": directory / f"{name}.sign.key",
        "csr": directory / f"{name}.csr",
    }


def refuse_existing(*paths: Path) -> None:
    """Refuse to go on if any of ``paths`` exists, before anything is written.

    Raises:
        ConfigError: naming the first path that exists.
    """
    for p in paths:
        if p.exists():
            raise ConfigError(str(p), "already exists; refusing to overwrite it")


def write_new(path: Path, data: bytes, *, mode: int) -> None:
    """Create ``path`` with ``mode`` from the first byte and write ``data``; never overwrite.

    Args:
        path: the file to create; its folder must exist.
        data: the content.
        mode: permission bits, e.g. ``0o600`` for private keys.

    Raises:
        ConfigError: the file already exists or cannot be created.
    """
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    except FileExistsError:
        raise ConfigError(str(path), "already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot create file: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise ConfigError(str(path), f"cannot write file: {exc.strerror}") from exc


def replace_public(path: Path, data: bytes) -> None:
    """Atomically replace a public file (the CRL) so readers never see half of it.

    Raises:
        ConfigError: the file cannot be written.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        write_new(tmp, data, mode=0o644)
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(str(path), f"cannot replace file: {exc.strerror}") from exc


def read_bytes(path: Path) -> bytes:
    """Read a whole file.

    Raises:
        ConfigError: naming ``path`` when it is missing or unreadable.
    """
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(str(path), "file does not exist") from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read file: {exc.strerror}") from exc


def new_tls_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key for TLS (and for the CA)."""
    return ec.generate_private_key(ec.SECP256R1())


def tls_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The key as unencrypted PKCS8 PEM, the form gRPC reads."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def new_signing_key() -> nacl.signing.SigningKey:
    """A fresh Ed25519 key for signing protocol messages."""
    return nacl.signing.SigningKey.generate()


def signing_key_text(key: nacl.signing.SigningKey) -> bytes:
    """The on-disk form of a signing key: its 32-byte seed, hex, and a newline."""
    return bytes(key).hex().encode("ascii") + b"\n"


def parse_signing_key(data: bytes, *, source: str) -> nacl.signing.SigningKey:
    """Parse a signing-key file's content.

    Raises:
        ConfigError: naming ``source`` when the content is not 64 hex characters.
    """
    try:
        seed = bytes.fromhex(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise ConfigError(source, "signing key is not hex text") from None
    if len(seed) != 32:
        raise ConfigError(source, f"signing key must be a 32-byte seed, got {len(seed)} bytes")
    return nacl.signing.SigningKey(seed)


def load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Load the CA certificate and key from ``directory``.

    Raises:
        ConfigError: naming the file that is missing, unreadable or not a matching CA key/cert.
    """
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    try:
        cert = load_pem_certificate(read_bytes(cert_path))
    except BadCertificate as exc:
        raise ConfigError(str(cert_path), str(exc)) from None
    try:
        key = serialization.load_pem_private_key(read_bytes(key_path), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(key_path), f"not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or spki(key.public_key()) != spki(
        cert.public_key()
    ):
        raise ConfigError(str(key_path), f"does not match the CA certificate {cert_path}")
    return cert, key


def spki(public_key: object) -> bytes:
    """DER SubjectPublicKeyInfo of an EC public key (empty for other types), for comparisons."""
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        return b""
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
